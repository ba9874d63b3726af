// SPDX-License-Identifier: Apache-2.0
/* weightwarden-bpf: loads the attribution programs and speaks a small binary
 * protocol to the agent on stdin/stdout.
 *
 * Why a separate process rather than ctypes on libbpf.so: the skeleton embeds
 * the object (one file to ship), libbpf's option structs never cross a language
 * boundary, a crash here cannot take the agent down, and when this process ends
 * (agent gone, killed, stdin closed) the kernel drops every link it held: no
 * program outlives its reader.
 *
 *   weightwarden-bpf CGROUP_DIR        attach to CGROUP_DIR (and below)
 *   weightwarden-bpf --probe           load only: exit 0 if this kernel can run us
 *
 * stdin, one command per line:  "drain"  "quit"
 *   "local ADDR..."  this host's own addresses ("local -": not known); see merge_flows
 * stdout, frames: u32 type, u32 length, payload (host byte order)
 *   READY  text    what is attached (JSON)        ERROR  text, then exit 1
 *   FLOWS  n x (ww_flow_key, ww_flow)              UNIX   n x (ww_unix_key, ww_unix)
 *   LOST   ww_lost summed over CPUs                END    u64 monotonic ns of the flip
 *   OWNER  ww_owner (a process seen for the first time)
 *   DNS    an IP packet carrying a DNS answer
 * A drain answers FLOWS*, UNIX*, LOST, END in that order; OWNER and DNS frames
 * may come at any time between drains.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <bpf/bpf.h>
#include <bpf/btf.h>
#include <bpf/libbpf.h>
#include <linux/types.h>
#include "ww.h"
#include "weightwarden.skel.h"

/* weightwarden/agent/attribution/ebpf/wire.py decodes these byte for byte. */
_Static_assert(sizeof(struct ww_owner) == 80, "ww_owner");
_Static_assert(sizeof(struct ww_flow_key) == 32, "ww_flow_key");
_Static_assert(sizeof(struct ww_flow) == 136, "ww_flow");
_Static_assert(sizeof(struct ww_unix_key) == 24, "ww_unix_key");
_Static_assert(sizeof(struct ww_unix) == 184, "ww_unix");
_Static_assert(sizeof(struct ww_lost) == 32, "ww_lost");
_Static_assert(sizeof(struct ww_flow_key) + sizeof(struct ww_flow) == 168, "flow record");
_Static_assert(sizeof(struct ww_local_key) == 20, "ww_local_key");

enum { T_READY = 1, T_ERROR = 2, T_FLOWS = 3, T_UNIX = 4, T_LOST = 5, T_END = 6, T_OWNER = 7, T_DNS = 8 };

#define BATCH 4096

static int out_fd = 1;

static void write_all(const void *buf, size_t len)
{
	const char *p = buf;
	while (len) {
		ssize_t n = write(out_fd, p, len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			exit(0); /* the agent is gone: exit, and the kernel detaches everything */
		p += n;
		len -= (size_t)n;
	}
}

static void frame(__u32 type, const void *payload, __u32 len)
{
	__u32 hdr[2] = { type, len };
	write_all(hdr, sizeof(hdr));
	if (len)
		write_all(payload, len);
}

static void fail(const char *fmt, ...)
{
	char buf[1024];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	frame(T_ERROR, buf, n < 0 ? 0 : (__u32)(n < (int)sizeof(buf) ? n : (int)sizeof(buf) - 1));
	exit(1);
}

static char libbpf_msgs[4096];

static int on_libbpf_log(enum libbpf_print_level level, const char *fmt, va_list ap)
{
	if (level == LIBBPF_DEBUG)
		return 0;
	size_t used = strlen(libbpf_msgs);
	if (used < sizeof(libbpf_msgs) - 1)
		vsnprintf(libbpf_msgs + used, sizeof(libbpf_msgs) - used, fmt, ap);
	return 0;
}

static int on_event(void *ctx, void *data, size_t size)
{
	(void)ctx;
	const struct ww_event_hdr *h = data;
	if (size < sizeof(*h))
		return 0;
	const char *body = (const char *)data + sizeof(*h);
	size_t room = size - sizeof(*h);
	__u32 len = h->len < room ? h->len : (__u32)room;
	if (h->type == WW_EV_OWNER)
		frame(T_OWNER, body, len);
	else if (h->type == WW_EV_DNS)
		frame(T_DNS, body, len);
	return 0;
}

/* Read and empty a map nobody writes any more, handing its records to `emit`. */
static void dump_map(int fd, void (*emit)(const char *keys, const char *vals, __u32 n))
{
	static char keys[BATCH * 64], vals[BATCH * 256];
	__u64 in = 0, out = 0;
	void *inp = NULL;
	for (;;) {
		__u32 count = BATCH;
		int err = bpf_map_lookup_and_delete_batch(fd, inp, &out, keys, vals, &count, NULL);
		if (err && errno != ENOENT)
			fail("reading a map: %s", strerror(errno));
		if (count)
			emit(keys, vals, count);
		if (err)
			break;
		in = out;
		inp = &in;
	}
}

static void emit_unix(const char *keys, const char *vals, __u32 n)
{
	static char rec[BATCH * (sizeof(struct ww_unix_key) + sizeof(struct ww_unix))];
	const size_t ksz = sizeof(struct ww_unix_key), vsz = sizeof(struct ww_unix);
	for (__u32 i = 0; i < n; i++) {
		memcpy(rec + i * (ksz + vsz), keys + i * ksz, ksz);
		memcpy(rec + i * (ksz + vsz) + ksz, vals + i * vsz, vsz);
	}
	frame(T_UNIX, rec, n * (__u32)(ksz + vsz));
}

/* Merging flows. The kernel merges TCP sockets; UDP, ICMP and raw sockets reach here one record
 * each. The agent reports bytes per (process, destination) with a socket count, so the sockets of
 * one process to one destination are merged here, at a small fraction of what decoding each in
 * Python costs. Flows that stay on this host (over loopback, or to one of its own addresses) are
 * kept per socket: their ports name the process at the other end, and relays are found that way.
 * The agent says which addresses are its own (local_addrs); until it has, nothing is merged. */
struct rec {
	struct ww_flow_key k;
	struct ww_flow v;
};

struct addr16 {
	__u8 family;
	__u8 a[16];
};

static struct addr16 *locals;
static size_t nlocals;
static int locals_known;

static int cmp_addr(const void *x, const void *y)
{
	return memcmp(x, y, sizeof(struct addr16));
}

/* The kernel's copy of the host's addresses: new ones added before old ones go, so an address that
 * stays is never missing. Merging is on only while the copy is complete. */
static void sync_local_map(struct weightwarden_bpf *skel)
{
	int fd = bpf_map__fd(skel->maps.local_addrs);
	__u8 one = 1;
	skel->bss->merge_ready = 0;
	if (locals_known && nlocals > WW_LOCAL_MAX)
		locals_known = 0;
	for (size_t i = 0; locals_known && i < nlocals; i++) {
		struct ww_local_key k;
		memset(&k, 0, sizeof(k));
		k.family = locals[i].family;
		memcpy(k.addr, locals[i].a, 16);
		if (bpf_map_update_elem(fd, &k, &one, BPF_ANY))
			locals_known = 0; /* a copy we cannot trust: merge nothing */
	}
	struct ww_local_key key, next, gone[256];
	int have = 0;
	for (;;) {
		size_t ngone = 0;
		while (ngone < sizeof(gone) / sizeof(gone[0])
		       && bpf_map_get_next_key(fd, have ? &key : NULL, &next) == 0) {
			key = next;
			have = 1;
			struct addr16 x;
			memset(&x, 0, sizeof(x));
			x.family = next.family;
			memcpy(x.a, next.addr, 16);
			if (!locals_known || !bsearch(&x, locals, nlocals, sizeof(*locals), cmp_addr))
				gone[ngone++] = next;
		}
		for (size_t i = 0; i < ngone; i++)
			bpf_map_delete_elem(fd, &gone[i]);
		if (ngone < sizeof(gone) / sizeof(gone[0]))
			break;
		have = 0; /* deletions moved the walk: start again (kept ones are skipped quickly) */
	}
	__atomic_add_fetch(&skel->bss->local_epoch, 1, __ATOMIC_SEQ_CST); /* sockets decide again */
	skel->bss->merge_ready = (__u32)locals_known;
}

static void set_locals(struct weightwarden_bpf *skel, char *args)
{
	free(locals);
	locals = NULL;
	nlocals = 0;
	locals_known = 0;
	if (strcmp(args, "-") != 0) {
		size_t cap = 0;
		char *save = NULL;
		for (char *tok = strtok_r(args, " ", &save); tok; tok = strtok_r(NULL, " ", &save)) {
			struct addr16 v;
			memset(&v, 0, sizeof(v));
			if (inet_pton(AF_INET, tok, v.a) == 1)
				v.family = 4;
			else if (inet_pton(AF_INET6, tok, v.a) == 1)
				v.family = 6;
			else
				continue; /* not an address: merging stays as safe, it just names one address fewer */
			if (nlocals == cap) {
				cap = cap ? cap * 2 : 16;
				struct addr16 *grown = realloc(locals, cap * sizeof(*locals));
				if (!grown)
					fail("out of memory");
				locals = grown;
			}
			locals[nlocals++] = v;
		}
		qsort(locals, nlocals, sizeof(*locals), cmp_addr);
		locals_known = 1;
	}
	sync_local_map(skel);
}

/* Kept one record per socket: flows on this host, and any made before the kernel knew the host's
 * addresses (it decides each entry once it does, with the agent's own rule). */
static int kept_per_socket(const struct rec *r)
{
	return (r->v.flags & (WW_F_DECIDED | WW_F_ONHOST | WW_F_LOCAL)) != WW_F_DECIDED;
}

static struct rec *flows;
static size_t nflows, capflows;

static void collect_flows(const char *keys, const char *vals, __u32 n)
{
	if (nflows + n > capflows) {
		size_t cap = capflows ? capflows : BATCH;
		while (cap < nflows + n)
			cap *= 2;
		struct rec *grown = realloc(flows, cap * sizeof(*flows));
		if (!grown)
			fail("out of memory");
		flows = grown;
		capflows = cap;
	}
	for (__u32 i = 0; i < n; i++) {
		memcpy(&flows[nflows].k, keys + i * sizeof(struct ww_flow_key), sizeof(struct ww_flow_key));
		memcpy(&flows[nflows].v, vals + i * sizeof(struct ww_flow), sizeof(struct ww_flow));
		if (!flows[nflows].v.sockets)
			flows[nflows].v.sockets = 1;
		nflows++;
	}
}

/* Same process (tgid and start), same accepted flag, same destination and protocol. */
static int same_sender_and_destination(const struct rec *a, const struct rec *b)
{
	return a->v.owner.tgid == b->v.owner.tgid && a->v.owner.start_ns == b->v.owner.start_ns
	       && (a->v.owner.flags & (WW_OWNED | WW_ACCEPTED)) == (b->v.owner.flags & (WW_OWNED | WW_ACCEPTED))
	       && a->v.flags == b->v.flags && a->k.family == b->k.family && a->k.proto == b->k.proto
	       && a->k.dport == b->k.dport && memcmp(a->k.daddr, b->k.daddr, 16) == 0;
}

static __u64 mix(__u64 h, __u64 v)
{
	h ^= v + 0x9e3779b97f4a7c15ULL + (h << 6) + (h >> 2);
	return h;
}

static __u64 sender_destination_hash(const struct rec *r)
{
	__u64 h = mix(0, r->v.owner.tgid);
	h = mix(h, r->v.owner.start_ns);
	h = mix(h, (__u64)(r->v.owner.flags & (WW_OWNED | WW_ACCEPTED)) << 32 | r->v.flags);
	h = mix(h, (__u64)r->k.family << 24 | (__u64)r->k.proto << 16 | r->k.dport);
	__u64 a, b;
	memcpy(&a, r->k.daddr, 8);
	memcpy(&b, r->k.daddr + 8, 8);
	return mix(mix(h, a), b);
}

static void merge_into(struct rec *into, const struct rec *r)
{
	into->v.bytes += r->v.bytes;
	into->v.packets += r->v.packets;
	into->v.sockets += r->v.sockets;
	if (r->v.first_ns && (!into->v.first_ns || r->v.first_ns < into->v.first_ns))
		into->v.first_ns = r->v.first_ns;
	if (r->v.last_ns >= into->v.last_ns) {
		/* the latest socket speaks for the owner (a process may change cgroup or name) */
		into->v.last_ns = r->v.last_ns;
		into->v.owner = r->v.owner;
		into->k.cookie = r->k.cookie;
		memcpy(into->v.saddr, r->v.saddr, sizeof(r->v.saddr));
		into->v.sport = r->v.sport;
	}
}

/* Merges flows[] in place (kept records first, in arrival order) and returns how many remain. */
static size_t merge_flows(void)
{
	if (nflows < 2)
		return nflows;
	size_t slots = 1;
	while (slots < nflows * 2)
		slots <<= 1;
	__u32 *table = malloc(slots * sizeof(*table)); /* index + 1 into flows[]; 0 is empty */
	if (!table)
		return nflows; /* merging is a saving, never a need */
	memset(table, 0, slots * sizeof(*table));
	size_t kept = 0;
	for (size_t i = 0; i < nflows; i++) {
		struct rec *r = &flows[i];
		if (!kept_per_socket(r)) {
			size_t at = sender_destination_hash(r) & (slots - 1);
			for (; table[at]; at = (at + 1) & (slots - 1)) {
				struct rec *other = &flows[table[at] - 1];
				if (same_sender_and_destination(other, r))
					break;
			}
			if (table[at]) {
				merge_into(&flows[table[at] - 1], r);
				continue;
			}
			table[at] = (__u32)kept + 1;
		}
		if (kept != i)
			flows[kept] = *r;
		kept++;
	}
	free(table);
	return kept;
}

static void send_flows(void)
{
	size_t n = merge_flows();
	for (size_t at = 0; at < n; at += BATCH) {
		size_t count = n - at < BATCH ? n - at : BATCH;
		frame(T_FLOWS, &flows[at], (__u32)(count * sizeof(*flows)));
	}
	nflows = 0;
	if (capflows > 4 * BATCH) { /* a burst's buffer is given back */
		free(flows);
		flows = NULL;
		capflows = 0;
	}
}

static void drain(struct weightwarden_bpf *skel)
{
	struct timespec ts;
	__u32 was = skel->bss->gen, old = was & 1;
	__u32 zero = 0;
	int inner = bpf_map__fd(skel->maps.sync_inner);
	/* Counted up, never just flipped: a socket's merged flow knows whether it counted it this time. */
	__atomic_store_n(&skel->bss->gen, was + 1, __ATOMIC_SEQ_CST);
	/* The fence: returns once no program can still be writing generation `old`. */
	if (bpf_map_update_elem(bpf_map__fd(skel->maps.sync_outer), &zero, &inner, BPF_ANY))
		fail("synchronising: %s", strerror(errno));
	clock_gettime(CLOCK_MONOTONIC, &ts);
	__u64 flip_ns = (__u64)ts.tv_sec * 1000000000ULL + (__u64)ts.tv_nsec;
	dump_map(bpf_map__fd(old ? skel->maps.flows1 : skel->maps.flows0), collect_flows);
	send_flows();
	dump_map(bpf_map__fd(old ? skel->maps.unix1 : skel->maps.unix0), emit_unix);
	int ncpu = libbpf_num_possible_cpus();
	struct ww_lost per[ncpu > 0 ? ncpu : 1], sum = { 0 };
	memset(per, 0, sizeof(per));
	if (ncpu > 0 && bpf_map_lookup_elem(bpf_map__fd(skel->maps.lost), &old, per) == 0) {
		for (int i = 0; i < ncpu; i++) {
			sum.bytes += per[i].bytes;
			sum.packets += per[i].packets;
			sum.events += per[i].events;
			sum.dns_limited += per[i].dns_limited;
		}
		memset(per, 0, sizeof(per));
		bpf_map_update_elem(bpf_map__fd(skel->maps.lost), &old, per, BPF_ANY);
	}
	frame(T_LOST, &sum, sizeof(sum));
	frame(T_END, &flip_ns, sizeof(flip_ns));
}

/* A tracepoint this kernel does not have is left out, and said so. */
static int skip_missing(struct bpf_program *prog, const char *tp, const char *why, struct btf *vmlinux, char *notes,
			size_t room)
{
	char name[128];
	snprintf(name, sizeof(name), "btf_trace_%s", tp);
	if (btf__find_by_name_kind(vmlinux, name, BTF_KIND_TYPEDEF) >= 0)
		return 0;
	bpf_program__set_autoload(prog, false);
	size_t used = strlen(notes);
	snprintf(notes + used, room - used, "%s\"no %s tracepoint in this kernel: %s\"", used ? "," : "", tp, why);
	return 1;
}

/* Whether programs of a type may call a helper: a three-instruction program that calls it is refused
 * with one of these words when they may not (later arguments errors mean they may). libbpf 1.1's
 * libbpf_probe_bpf_helper() knows only the first two and says yes on 6.12, which refuses. */
static int helper_allowed(enum bpf_prog_type type, enum bpf_func_id id)
{
	struct bpf_insn insns[] = {
		{ .code = BPF_JMP | BPF_CALL, .imm = id },
		{ .code = BPF_ALU64 | BPF_MOV | BPF_K, .dst_reg = BPF_REG_0, .imm = 1 },
		{ .code = BPF_JMP | BPF_EXIT },
	};
	char log[4096] = "";
	LIBBPF_OPTS(bpf_prog_load_opts, opts, .log_buf = log, .log_size = sizeof(log), .log_level = 1);
	int fd = bpf_prog_load(type, NULL, "GPL", insns, sizeof(insns) / sizeof(insns[0]), &opts);
	if (fd >= 0) {
		close(fd);
		return 1;
	}
	return !strstr(log, "unknown func ") && !strstr(log, "invalid func ") && !strstr(log, "cannot use helper ");
}

int main(int argc, char **argv)
{
	if (argc != 2) {
		fprintf(stderr, "usage: weightwarden-bpf CGROUP_DIR | --probe\n");
		return 2;
	}
	int probe = strcmp(argv[1], "--probe") == 0;
	prctl(PR_SET_PDEATHSIG, SIGTERM);
	signal(SIGPIPE, SIG_IGN);
	libbpf_set_print(on_libbpf_log);
	struct rlimit unlimited = { RLIM_INFINITY, RLIM_INFINITY };
	setrlimit(RLIMIT_MEMLOCK, &unlimited); /* kernels before 5.11 charge maps to memlock */

	struct btf *vmlinux = btf__load_vmlinux_btf();
	if (!vmlinux)
		fail("no kernel BTF (/sys/kernel/btf/vmlinux): %s", strerror(errno));
	struct weightwarden_bpf *skel = weightwarden_bpf__open();
	if (!skel)
		fail("opening the BPF object: %s %s", strerror(errno), libbpf_msgs);
	char notes[1024] = "";
	if (!probe) {
		/* cgroup v2's root directory is inode 1: every task is under it, so the tracepoints need not ask */
		struct stat st;
		if (stat(argv[1], &st) == 0 && st.st_ino == 1)
			skel->rodata->scope_is_root = 1;
	}
	skip_missing(skel->progs.ww_send, "sock_send_length",
		     "sockets are credited to the process that created them, unix-socket relays are not seen", vmlinux,
		     notes, sizeof(notes));
	skip_missing(skel->progs.ww_recv, "sock_recv_length", "unix-socket relays are named from /proc only", vmlinux,
		     notes, sizeof(notes));
	skel->rodata->sock_create_task_storage = helper_allowed(BPF_PROG_TYPE_CGROUP_SOCK, BPF_FUNC_task_storage_get);
	if (weightwarden_bpf__load(skel))
		fail("loading the BPF programs: %s %s", strerror(errno), libbpf_msgs);
	if (probe) {
		frame(T_READY, "{\"probe\":true}", 14);
		return 0;
	}
	int cg = open(argv[1], O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (cg < 0)
		fail("opening cgroup %s: %s", argv[1], strerror(errno));
	__u32 zero = 0;
	if (bpf_map_update_elem(bpf_map__fd(skel->maps.scope), &zero, &cg, BPF_ANY))
		fail("setting the scope cgroup: %s", strerror(errno));
	struct bpf_link *links[8];
	int nlinks = 0;
	struct bpf_program *on_cgroup[] = { skel->progs.ww_egress, skel->progs.ww_ingress, skel->progs.ww_sock_create,
					    skel->progs.ww_sockops };
	for (size_t i = 0; i < sizeof(on_cgroup) / sizeof(on_cgroup[0]); i++)
		links[nlinks++] = bpf_program__attach_cgroup(on_cgroup[i], cg);
	if (bpf_program__autoload(skel->progs.ww_send))
		links[nlinks++] = bpf_program__attach(skel->progs.ww_send);
	if (bpf_program__autoload(skel->progs.ww_recv))
		links[nlinks++] = bpf_program__attach(skel->progs.ww_recv);
	for (int i = 0; i < nlinks; i++)
		if (!links[i])
			fail("attaching program %d: %s %s", i, strerror(errno), libbpf_msgs);
	struct ring_buffer *rb = ring_buffer__new(bpf_map__fd(skel->maps.events), on_event, NULL, NULL);
	if (!rb)
		fail("ring buffer: %s", strerror(errno));
	char ready[1400];
	int n = snprintf(ready, sizeof(ready), "{\"cgroup\":\"%s\",\"programs\":%d,\"notes\":[%s]}", argv[1], nlinks,
			 notes);
	frame(T_READY, ready, (__u32)n);

	static char line[65536]; /* "local" names every address of the host */
	size_t have = 0;
	struct pollfd fds[2] = { { .fd = 0, .events = POLLIN }, { .fd = ring_buffer__epoll_fd(rb), .events = POLLIN } };
	for (;;) {
		int r = poll(fds, 2, 1000);
		if (r < 0 && errno != EINTR)
			fail("poll: %s", strerror(errno));
		if (fds[1].revents & POLLIN)
			ring_buffer__consume(rb);
		if (fds[0].revents & (POLLIN | POLLHUP | POLLERR)) {
			ssize_t got = read(0, line + have, sizeof(line) - 1 - have);
			if (got <= 0)
				break; /* stdin closed: the agent is gone or done */
			have += (size_t)got;
			line[have] = 0;
			char *nl;
			while ((nl = memchr(line, '\n', have))) {
				*nl = 0;
				if (strcmp(line, "drain") == 0) {
					ring_buffer__consume(rb); /* owners before the flows that name them */
					drain(skel);
				} else if (strncmp(line, "local ", 6) == 0) {
					set_locals(skel, line + 6);
				} else if (strcmp(line, "quit") == 0) {
					goto out;
				}
				size_t used = (size_t)(nl - line) + 1;
				memmove(line, nl + 1, have - used);
				have -= used;
			}
			if (have >= sizeof(line) - 1)
				have = 0; /* garbage: drop it */
		}
	}
out:
	ring_buffer__free(rb);
	for (int i = 0; i < nlinks; i++)
		bpf_link__destroy(links[i]);
	weightwarden_bpf__destroy(skel);
	btf__free(vmlinux);
	return 0;
}
