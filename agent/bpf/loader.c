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
 * stdout, frames: u32 type, u32 length, payload (host byte order)
 *   READY  text    what is attached (JSON)        ERROR  text, then exit 1
 *   FLOWS  n x (ww_flow_key, ww_flow)              UNIX   n x (ww_unix_key, ww_unix)
 *   LOST   ww_lost summed over CPUs                END    u64 monotonic ns of the flip
 *   OWNER  ww_owner (a process seen for the first time)
 *   DNS    an IP packet carrying a DNS answer
 * A drain answers FLOWS*, UNIX*, LOST, END in that order; OWNER and DNS frames
 * may come at any time between drains.
 */
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
#include <time.h>
#include <unistd.h>
#include <bpf/bpf.h>
#include <bpf/btf.h>
#include <bpf/libbpf.h>
#include <linux/types.h>
#include "ww.h"
#include "weightwarden.skel.h"

/* agent/ebpf_wire.py decodes these byte for byte. */
_Static_assert(sizeof(struct ww_owner) == 80, "ww_owner");
_Static_assert(sizeof(struct ww_flow_key) == 32, "ww_flow_key");
_Static_assert(sizeof(struct ww_flow) == 136, "ww_flow");
_Static_assert(sizeof(struct ww_unix_key) == 24, "ww_unix_key");
_Static_assert(sizeof(struct ww_unix) == 184, "ww_unix");
_Static_assert(sizeof(struct ww_lost) == 32, "ww_lost");

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

/* Read and empty a map nobody writes any more, sending its records as frames of `type`. */
static void dump_map(int fd, __u32 type, size_t ksz, size_t vsz)
{
	static char keys[BATCH * 64], vals[BATCH * 256], rec[BATCH * 320];
	__u64 in = 0, out = 0;
	void *inp = NULL;
	for (;;) {
		__u32 count = BATCH;
		int err = bpf_map_lookup_and_delete_batch(fd, inp, &out, keys, vals, &count, NULL);
		if (err && errno != ENOENT)
			fail("reading a map: %s", strerror(errno));
		for (__u32 i = 0; i < count; i++) {
			memcpy(rec + i * (ksz + vsz), keys + i * ksz, ksz);
			memcpy(rec + i * (ksz + vsz) + ksz, vals + i * vsz, vsz);
		}
		if (count)
			frame(type, rec, count * (__u32)(ksz + vsz));
		if (err)
			break;
		in = out;
		inp = &in;
	}
}

static void drain(struct weightwarden_bpf *skel)
{
	struct timespec ts;
	__u32 old = skel->bss->gen & 1;
	__u32 zero = 0;
	int inner = bpf_map__fd(skel->maps.sync_inner);
	__atomic_store_n(&skel->bss->gen, old ^ 1, __ATOMIC_SEQ_CST);
	/* The fence: returns once no program can still be writing generation `old`. */
	if (bpf_map_update_elem(bpf_map__fd(skel->maps.sync_outer), &zero, &inner, BPF_ANY))
		fail("synchronising: %s", strerror(errno));
	clock_gettime(CLOCK_MONOTONIC, &ts);
	__u64 flip_ns = (__u64)ts.tv_sec * 1000000000ULL + (__u64)ts.tv_nsec;
	dump_map(bpf_map__fd(old ? skel->maps.flows1 : skel->maps.flows0), T_FLOWS, sizeof(struct ww_flow_key),
		 sizeof(struct ww_flow));
	dump_map(bpf_map__fd(old ? skel->maps.unix1 : skel->maps.unix0), T_UNIX, sizeof(struct ww_unix_key),
		 sizeof(struct ww_unix));
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
	skip_missing(skel->progs.ww_send, "sock_send_length",
		     "sockets are credited to the process that created them, unix-socket relays are not seen", vmlinux,
		     notes, sizeof(notes));
	skip_missing(skel->progs.ww_recv, "sock_recv_length", "unix-socket relays are named from /proc only", vmlinux,
		     notes, sizeof(notes));
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

	char line[64];
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
