// SPDX-License-Identifier: Apache-2.0
/* weightwarden-bpf: loads the attribution programs and speaks a small binary
 * protocol to the agent on stdin/stdout.
 *
 * Why a separate process rather than ctypes on libbpf.so: the skeleton embeds
 * the object (one file to ship), libbpf's option structs never cross a language
 * boundary, and a crash here cannot take the agent down.
 *
 *   weightwarden-bpf [--pin DIR] CGROUP_DIR   attach to CGROUP_DIR (and below)
 *   weightwarden-bpf --probe                  load only: which programs this kernel accepts (JSON), exit 0
 *                                             if the essential ones load
 *   weightwarden-bpf --unpin DIR              remove what --pin DIR left (the programs detach)
 *
 * One feature at a time: only ww_egress and ww_sock_create are essential. Every other program is
 * loaded if the verifier accepts it; one it refuses is left out (autoload off, the object opened
 * again) and named with the verifier's own words, shortened. WEIGHTWARDEN_BPF_REFUSE=ww_x,ww_y makes
 * the verifier refuse those programs (a test hook: see `refuse` in weightwarden.bpf.c).
 *
 * Without --pin, the kernel drops every link when this process ends: no program outlives its
 * reader. With --pin DIR (a bpf filesystem), the state maps and the links are pinned there, so the
 * programs keep counting while the agent restarts or is upgraded; the next loader reuses the maps,
 * swaps its programs into the cgroup links (one atomic update each), attaches its tracepoint
 * programs beside the old ones and switches over with one store (`active`): nothing counted twice,
 * nothing missed.
 *
 * Tamper checks, every half second: each link still attached to its cgroup and running our program
 * (a link detached or a program replaced is attached again or swapped back), each pin in place,
 * the loader's own settings in .bss, local_addrs and raw_allow as the loader wrote them; and at each
 * drain, the entries read must add up to what the programs counted (a map rewritten does not).
 * Whatever was found is one TAMPER frame.
 *
 * stdin, one command per line:  "drain"  "quit"
 *   "local ADDR..."  this host's own addresses ("local -": not known); see merge_flows
 *   "raw alert|kill DEV:INO..."  raw_sockets policy: the action, and the allowlisted executables
 * stdout, frames: u32 type, u32 length, payload (host byte order)
 *   READY  text    what is attached (JSON)        ERROR  text, then exit 1
 *   FLOWS  n x (ww_flow_key, ww_flow)              UNIX   n x (ww_unix_key, ww_unix)
 *   RAW    n x (ww_raw_key, ww_raw)                LOST   ww_lost summed over CPUs
 *   TOTALS ww_totals summed over CPUs              END    u64 monotonic ns of the flip
 *   OWNER  ww_owner (a process seen for the first time)
 *   DNS    an IP packet carrying a DNS answer      TAMPER text (JSON): what was changed, what was put back
 * A drain answers FLOWS*, UNIX*, RAW*, LOST, TOTALS, END in that order; OWNER, DNS and TAMPER
 * frames may come at any time between drains.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <dirent.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <time.h>
#include <unistd.h>
#include <linux/magic.h>
#include <bpf/bpf.h>
#include <bpf/btf.h>
#include <bpf/libbpf.h>
#include <linux/types.h>
#include "loader_common.h"
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
_Static_assert(sizeof(struct ww_raw_key) == 16, "ww_raw_key");
_Static_assert(sizeof(struct ww_raw) == 136, "ww_raw");
_Static_assert(sizeof(struct ww_totals) == 32, "ww_totals");
_Static_assert(sizeof(struct ww_exe_key) == 16, "ww_exe_key");

enum {
	T_FLOWS = 3, T_UNIX = 4, T_LOST = 5, T_END = 6, T_OWNER = 7, T_DNS = 8,
	T_RAW = 9, T_TAMPER = 10, T_TOTALS = 11,
};

#define BATCH 4096
#define CHECK_EVERY_NS 500000000ULL /* tamper checks: every half second */
#define SETTLE_DRAINS 2             /* drains after a start whose sums may hold a predecessor's leftovers */

static __u64 mono_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (__u64)ts.tv_sec * 1000000000ULL + (__u64)ts.tv_nsec;
}

/* -- JSON text (READY, TAMPER) ------------------------------------------------------------------- */

struct text {
	char buf[16384];
	size_t len;
};

static void put(struct text *t, const char *fmt, ...)
{
	if (t->len >= sizeof(t->buf) - 1)
		return;
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(t->buf + t->len, sizeof(t->buf) - t->len, fmt, ap);
	va_end(ap);
	if (n > 0)
		t->len = t->len + (size_t)n < sizeof(t->buf) ? t->len + (size_t)n : sizeof(t->buf) - 1;
}

static void put_str(struct text *t, const char *s)
{
	put(t, "\"");
	for (; s && *s; s++) {
		unsigned char c = (unsigned char)*s;
		if (c == '"' || c == '\\')
			put(t, "\\%c", c);
		else if (c < 0x20)
			put(t, "\\u%04x", c);
		else
			put(t, "%c", c);
	}
	put(t, "\"");
}

/* -- the verifier's words for a program it refused (libbpf's messages: loader_common.h) ---------- */

struct prog_def {
	const char *name;
	int essential;
	int cgroup;                   /* attached to the scope cgroup (else: a tracing program) */
	enum bpf_attach_type type;    /* for cgroup programs */
	const char *tp;               /* a tracepoint the kernel must have (checked in its BTF), or NULL */
};

static const struct prog_def PROGS[WW_P_COUNT] = {
	[WW_P_EGRESS] = { "ww_egress", 1, 1, BPF_CGROUP_INET_EGRESS, NULL },
	[WW_P_SOCK_CREATE] = { "ww_sock_create", 1, 1, BPF_CGROUP_INET_SOCK_CREATE, NULL },
	[WW_P_SOCKOPS] = { "ww_sockops", 0, 1, BPF_CGROUP_SOCK_OPS, NULL },
	[WW_P_INGRESS] = { "ww_ingress", 0, 1, BPF_CGROUP_INET_INGRESS, NULL },
	[WW_P_SEND] = { "ww_send", 0, 0, 0, "sock_send_length" },
	[WW_P_RECV] = { "ww_recv", 0, 0, 0, "sock_recv_length" },
	[WW_P_PACKET] = { "ww_packet", 0, 0, 0, "sock_send_length" },
	[WW_P_XDP] = { "ww_xdp", 0, 0, 0, NULL },
	[WW_P_LSM] = { "ww_lsm", 0, 0, 0, NULL },
};

struct prog_state {
	int off;                      /* left out: refused, missing, or failed to attach */
	char reason[400];
	struct bpf_link *link;
	__u32 prog_id;
	__u32 link_id;
};

static struct prog_state st[WW_P_COUNT];

static int prog_index(const char *name, size_t len)
{
	for (int i = 0; i < WW_P_COUNT; i++)
		if (strlen(PROGS[i].name) == len && strncmp(PROGS[i].name, name, len) == 0)
			return i;
	return -1;
}

/* The program libbpf last complained about (loading stops at the first failure). */
static int failing_prog(void)
{
	int found = -1;
	for (const char *p = libbpf_msgs; (p = strstr(p, "prog '")); p++) {
		const char *name = p + 6, *end = strchr(name, '\'');
		if (!end)
			break;
		int i = prog_index(name, (size_t)(end - name));
		if (i >= 0 && !st[i].off)
			found = i;
	}
	return found;
}

static void trim(char *s)
{
	size_t n = strlen(s);
	while (n && (s[n - 1] == '\n' || s[n - 1] == ' ' || s[n - 1] == '\r'))
		s[--n] = 0;
}

/* The verifier's own words for `name`: its last line before the statistics, with the source line it
 * stopped at; or libbpf's line when there is no verifier log (EPERM, a missing attach target). */
static void refusal(const char *name, char *out, size_t room)
{
	char begin[128];
	snprintf(begin, sizeof(begin), "prog '%s': -- BEGIN PROG LOAD LOG --", name);
	const char *log = NULL;
	for (const char *p = libbpf_msgs; (p = strstr(p, begin)); p++)
		log = p + strlen(begin);
	if (log) {
		const char *end = strstr(log, "-- END PROG LOAD LOG --");
		size_t n = end ? (size_t)(end - log) : strlen(log);
		char *copy = malloc(n + 1);
		if (copy) {
			memcpy(copy, log, n);
			copy[n] = 0;
			char *error = NULL, *source = NULL, *save = NULL;
			for (char *line = strtok_r(copy, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
				if (!*line || strncmp(line, "processed ", 10) == 0 || strncmp(line, "verification time", 17) == 0
				    || strncmp(line, "stack depth", 11) == 0 || strncmp(line, "Validating ", 11) == 0)
					continue;
				if (line[0] == ';')
					source = line;
				else
					error = line;
			}
			if (error) {
				if (source && source < error)
					snprintf(out, room, "%s (at %s)", error, source + 2);
				else
					snprintf(out, room, "%s", error);
				free(copy);
				trim(out);
				return;
			}
			free(copy);
		}
	}
	char prefix[128];
	snprintf(prefix, sizeof(prefix), "prog '%s': ", name);
	const char *last = NULL;
	for (const char *p = libbpf_msgs; (p = strstr(p, prefix)); p++) {
		const char *rest = p + strlen(prefix);
		if (strncmp(rest, "-- BEGIN", 8) != 0 && strncmp(rest, "failed to load", 14) != 0)
			last = rest;
	}
	if (last) {
		const char *nl = strchr(last, '\n');
		snprintf(out, room, "%.*s", (int)(nl ? nl - last : (long)strlen(last)), last);
	} else {
		snprintf(out, room, "refused (no message from libbpf)");
	}
	trim(out);
}

/* -- pinning -------------------------------------------------------------------------------------- */

static char pin_dir[256];      /* "" : nothing pinned */
static char pin_off[400];      /* why pinning is off, if it was asked for */
static int pin_reused;         /* maps from a previous loader were picked up */
static int pin_lock = -1;

/* Maps that carry state across a restart; the rest (the fence, the scope, read-only data, the DNS
 * rate window) are made afresh by each loader. */
static int pinned_map(const struct bpf_map *m)
{
	const char *n = bpf_map__name(m);
	return strcmp(n, "sync_inner") && strcmp(n, "sync_outer") && strcmp(n, "scope") && strcmp(n, "dns_rate")
	       && !strstr(n, ".rodata") && !strstr(n, ".kconfig");
}

static void map_pin_path(const struct bpf_map *m, char *out, size_t room)
{
	const char *n = bpf_map__name(m);
	const char *dot = strchr(n, '.');
	snprintf(out, room, "%s/maps/%s", pin_dir, dot ? dot + 1 : n); /* "weightwa.bss" -> "bss" */
}

static void link_pin_path(int p, char *out, size_t room)
{
	snprintf(out, room, "%s/links/%s", pin_dir, PROGS[p].name);
}

static int on_bpffs(const char *path)
{
	struct statfs fs;
	return statfs(path, &fs) == 0 && (unsigned long)fs.f_type == (unsigned long)BPF_FS_MAGIC;
}

static int mkdirs(const char *path)
{
	char tmp[256];
	snprintf(tmp, sizeof(tmp), "%s", path);
	for (char *p = tmp + 1; *p; p++) {
		if (*p != '/')
			continue;
		*p = 0;
		if (mkdir(tmp, 0700) && errno != EEXIST)
			return -1;
		*p = '/';
	}
	return mkdir(tmp, 0700) && errno != EEXIST ? -1 : 0;
}

/* DIR must be on a bpf filesystem. Where the usual one is missing (no systemd), it is mounted at
 * /sys/fs/bpf as systemd would; anywhere else that is the caller's job. */
static int pin_setup(const char *dir, int exclusive)
{
	if (strlen(dir) >= sizeof(pin_dir) - 32 || dir[0] != '/') {
		snprintf(pin_off, sizeof(pin_off), "pin directory %s: not an absolute path of reasonable length", dir);
		return -1;
	}
	if (strncmp(dir, "/sys/fs/bpf/", 12) == 0 && !on_bpffs("/sys/fs/bpf")
	    && mount("bpf", "/sys/fs/bpf", "bpf", 0, "mode=0700") != 0) {
		snprintf(pin_off, sizeof(pin_off), "cannot mount a bpf filesystem at /sys/fs/bpf: %s", strerror(errno));
		return -1;
	}
	char sub[300];
	snprintf(sub, sizeof(sub), "%s/maps", dir);
	if (mkdirs(sub) == 0) {
		snprintf(sub, sizeof(sub), "%s/links", dir);
		mkdirs(sub);
	}
	if (!on_bpffs(dir)) {
		snprintf(pin_off, sizeof(pin_off), "%s is not on a bpf filesystem (mount -t bpf bpf DIR)", dir);
		return -1;
	}
	pin_lock = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (pin_lock < 0 || flock(pin_lock, (exclusive ? LOCK_EX : LOCK_SH) | LOCK_NB) != 0) {
		snprintf(pin_off, sizeof(pin_off), "%s is in use by another weightwarden-bpf (%s)", dir,
			 strerror(errno));
		if (pin_lock >= 0)
			close(pin_lock);
		pin_lock = -1;
		return -2;
	}
	snprintf(pin_dir, sizeof(pin_dir), "%s", dir);
	return 0;
}

static int remove_entries(const char *dir)
{
	DIR *d = opendir(dir);
	int n = 0;
	if (!d)
		return 0;
	struct dirent *e;
	while ((e = readdir(d))) {
		if (e->d_name[0] == '.')
			continue;
		char path[600];
		snprintf(path, sizeof(path), "%s/%s", dir, e->d_name);
		if (unlink(path) == 0)
			n++;
	}
	closedir(d);
	return n;
}

static int unpin_maps(void)
{
	char sub[300];
	snprintf(sub, sizeof(sub), "%s/maps", pin_dir);
	return remove_entries(sub);
}

/* --unpin DIR: the links go (their programs detach as their last reference does), then the maps. */
static int unpin_all(const char *dir)
{
	if (!on_bpffs(dir)) {
		printf("{\"removed\":0,\"note\":\"nothing pinned at %s\"}\n", dir);
		return 0;
	}
	int r = pin_setup(dir, 1);
	if (r == -2) {
		fprintf(stderr, "weightwarden-bpf: %s: stop the agent first\n", pin_off);
		return 1;
	}
	char sub[300];
	snprintf(sub, sizeof(sub), "%s/links", dir);
	int n = remove_entries(sub);
	rmdir(sub);
	snprintf(sub, sizeof(sub), "%s/maps", dir);
	n += remove_entries(sub);
	rmdir(sub);
	close(pin_lock);
	rmdir(dir);
	printf("{\"removed\":%d}\n", n);
	return 0;
}

/* The epoch of the programs that count now, from a pinned .bss, so a new load can take over. */
static __u32 pinned_active(void)
{
	char path[300];
	snprintf(path, sizeof(path), "%s/maps/bss", pin_dir);
	int fd = bpf_obj_get(path);
	if (fd < 0)
		return 0;
	struct bpf_map_info info;
	__u32 len = sizeof(info);
	memset(&info, 0, sizeof(info));
	__u32 active = 0, zero = 0;
	if (bpf_obj_get_info_by_fd(fd, &info, &len) == 0 && info.value_size >= sizeof(struct weightwarden_bpf__bss)
	    && info.value_size < 65536) {
		char *v = calloc(1, info.value_size);
		if (v && bpf_map_lookup_elem(fd, &zero, v) == 0)
			memcpy(&active, v + offsetof(struct weightwarden_bpf__bss, active), sizeof(active));
		free(v);
	}
	close(fd);
	return active;
}

/* -- loading, one feature at a time --------------------------------------------------------------- */

static struct bpf_program *prog_of(struct weightwarden_bpf *skel, int p)
{
	return bpf_object__find_program_by_name(skel->obj, PROGS[p].name);
}

/* A tracepoint this kernel does not have is left out, and said so. */
static void skip_missing(struct btf *vmlinux)
{
	for (int p = 0; p < WW_P_COUNT; p++) {
		if (!PROGS[p].tp)
			continue;
		char name[128];
		snprintf(name, sizeof(name), "btf_trace_%s", PROGS[p].tp);
		if (btf__find_by_name_kind(vmlinux, name, BTF_KIND_TYPEDEF) < 0) {
			st[p].off = 1;
			snprintf(st[p].reason, sizeof(st[p].reason), "no %s tracepoint in this kernel", PROGS[p].tp);
		}
	}
}

static __u32 refuse_mask(void)
{
	const char *env = getenv("WEIGHTWARDEN_BPF_REFUSE");
	__u32 mask = 0;
	if (!env)
		return 0;
	char copy[512], *save = NULL;
	snprintf(copy, sizeof(copy), "%s", env);
	for (char *tok = strtok_r(copy, ", ", &save); tok; tok = strtok_r(NULL, ", ", &save)) {
		int p = prog_index(tok, strlen(tok));
		if (p >= 0)
			mask |= 1u << p;
	}
	return mask;
}

/* packet_direct_xmit's address, for kernels whose packet sockets say qdisc bypass with po->xmit. */
static __u64 direct_xmit_address(void)
{
	FILE *f = fopen("/proc/kallsyms", "r");
	char line[512];
	__u64 addr = 0;
	if (!f)
		return 0;
	while (fgets(line, sizeof(line), f)) {
		unsigned long long a;
		char type, name[256];
		if (sscanf(line, "%llx %c %255s", &a, &type, name) == 3 && strcmp(name, "packet_direct_xmit") == 0) {
			addr = a;
			break;
		}
	}
	fclose(f);
	return addr;
}

static char notes[2048];

static void note(const char *fmt, ...)
{
	size_t used = strlen(notes);
	if (used >= sizeof(notes) - 2)
		return;
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(notes + used, sizeof(notes) - used, fmt, ap);
	va_end(ap);
	used = strlen(notes);
	if (used < sizeof(notes) - 1) {
		notes[used] = '\n';
		notes[used + 1] = 0;
	}
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

static struct weightwarden_bpf *load(int scope_root, __u32 epoch)
{
	__u32 mask = refuse_mask();
	__u64 direct = direct_xmit_address();
	__u32 task_storage = (__u32)helper_allowed(BPF_PROG_TYPE_CGROUP_SOCK, BPF_FUNC_task_storage_get);
	int reset = 0;
	for (int attempt = 0; attempt <= WW_P_COUNT + 1; attempt++) {
		struct weightwarden_bpf *skel = weightwarden_bpf__open();
		if (!skel)
			fail("opening the BPF object: %s %s", strerror(errno), libbpf_msgs);
		skel->rodata->scope_is_root = (__u32)scope_root;
		skel->rodata->my_epoch = epoch;
		skel->rodata->refuse = mask;
		skel->rodata->direct_xmit_addr = direct;
		skel->rodata->sock_create_task_storage = task_storage;
		for (int p = 0; p < WW_P_COUNT; p++)
			bpf_program__set_autoload(prog_of(skel, p), !st[p].off);
		if (pin_dir[0]) {
			struct bpf_map *m;
			bpf_object__for_each_map(m, skel->obj) {
				if (!pinned_map(m))
					continue;
				char path[300];
				map_pin_path(m, path, sizeof(path));
				bpf_map__set_pin_path(m, path);
			}
		}
		libbpf_msgs[0] = 0;
		if (weightwarden_bpf__load(skel) == 0)
			return skel;
		weightwarden_bpf__destroy(skel);
		if (pin_dir[0] && !reset && strstr(libbpf_msgs, "reuse pinned map")) {
			/* Pinned by a version with other map layouts: its state cannot be read, start afresh. */
			int n = unpin_maps();
			note("the %d maps pinned in %s were made by another version (other layouts): what they held "
			     "since its last drain is lost; starting afresh", n, pin_dir);
			pin_reused = 0;
			reset = 1;
			continue;
		}
		int p = failing_prog();
		if (p < 0)
			fail("loading the BPF programs: %s", libbpf_msgs);
		char why[400];
		refusal(PROGS[p].name, why, sizeof(why));
		if (PROGS[p].essential)
			fail("the kernel refused %s, which attribution cannot do without: %s", PROGS[p].name, why);
		st[p].off = 1;
		snprintf(st[p].reason, sizeof(st[p].reason), "%s", why);
	}
	fail("loading the BPF programs: too many refusals: %s", libbpf_msgs);
	return NULL;
}

/* -- attaching, and taking over from a previous loader's pinned links ------------------------------- */

static int cg_fd = -1;
static __u64 cg_id;
static struct weightwarden_bpf *skel;

struct change {
	const char *kind;
	char name[64];
	char detail[400];
};

static struct change changes[64];
static int nchanges, reattach_failed;

static void changed(const char *kind, const char *name, const char *fmt, ...)
{
	if (nchanges >= (int)(sizeof(changes) / sizeof(changes[0])))
		return;
	struct change *c = &changes[nchanges++];
	c->kind = kind;
	snprintf(c->name, sizeof(c->name), "%s", name);
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(c->detail, sizeof(c->detail), fmt, ap);
	va_end(ap);
}

static int link_info(int fd, struct bpf_link_info *info)
{
	__u32 len = sizeof(*info);
	memset(info, 0, sizeof(*info));
	return bpf_obj_get_info_by_fd(fd, info, &len);
}

static __u32 prog_id_of(struct bpf_program *prog)
{
	struct bpf_prog_info info;
	__u32 len = sizeof(info);
	memset(&info, 0, sizeof(info));
	return bpf_obj_get_info_by_fd(bpf_program__fd(prog), &info, &len) == 0 ? info.id : 0;
}

static void pin_link(int p)
{
	if (!pin_dir[0] || !st[p].link)
		return;
	char path[300];
	link_pin_path(p, path, sizeof(path));
	unlink(path);
	if (bpf_obj_pin(bpf_link__fd(st[p].link), path))
		note("cannot pin %s: %s", path, strerror(errno));
}

static struct bpf_link *attach_one(int p)
{
	struct bpf_program *prog = prog_of(skel, p);
	return PROGS[p].cgroup ? bpf_program__attach_cgroup(prog, cg_fd) : bpf_program__attach(prog);
}

static void remember(int p)
{
	struct bpf_link_info info;
	st[p].prog_id = prog_id_of(prog_of(skel, p));
	st[p].link_id = link_info(bpf_link__fd(st[p].link), &info) == 0 ? info.id : 0;
}

/* Attach every loaded program. A pinned cgroup link on our cgroup gets our program (one atomic
 * update); a pinned tracing link is retired after `active` switches (old and new run side by side
 * until then, and only one of them counts). */
static void attach_all(void)
{
	struct bpf_link *retire[WW_P_COUNT] = { 0 };
	for (int p = 0; p < WW_P_COUNT; p++) {
		if (st[p].off)
			continue;
		struct bpf_link *old = NULL;
		if (pin_dir[0]) {
			char path[300];
			link_pin_path(p, path, sizeof(path));
			if (access(path, F_OK) == 0)
				old = bpf_link__open(path);
		}
		if (old && PROGS[p].cgroup) {
			struct bpf_link_info info;
			int ok = link_info(bpf_link__fd(old), &info) == 0;
			if (ok && info.cgroup.cgroup_id == cg_id && info.cgroup.attach_type == PROGS[p].type
			    && bpf_link__update_program(old, prog_of(skel, p)) == 0) {
				st[p].link = old;
				remember(p);
				continue;
			}
			if (ok && info.cgroup.cgroup_id == 0)
				changed("link_detached", PROGS[p].name,
					"its pinned link was found detached when the loader started: attached again");
			/* Another cgroup, or defunct: let it go before ours attaches (a gap rather than a count twice). */
			bpf_link__unpin(old);
			bpf_link__destroy(old);
			old = NULL;
		}
		st[p].link = attach_one(p);
		if (!st[p].link) {
			char why[400];
			snprintf(why, sizeof(why), "attaching: %s", strerror(errno));
			if (PROGS[p].essential)
				fail("attaching %s: %s %s", PROGS[p].name, strerror(errno), libbpf_msgs);
			st[p].off = 1;
			snprintf(st[p].reason, sizeof(st[p].reason), "%s", why);
			if (old)
				retire[p] = old;
			continue;
		}
		remember(p);
		retire[p] = old;
	}
	/* From this store on, the tracing programs of this load count and those of the last one do not. */
	__atomic_store_n(&skel->bss->active, skel->rodata->my_epoch, __ATOMIC_SEQ_CST);
	for (int p = 0; p < WW_P_COUNT; p++) {
		if (retire[p]) {
			bpf_link__unpin(retire[p]);
			bpf_link__destroy(retire[p]);
		}
		pin_link(p);
	}
	/* Links pinned by a version whose programs this kernel now refuses would go on running: retire them. */
	for (int p = 0; pin_dir[0] && p < WW_P_COUNT; p++) {
		if (!st[p].off)
			continue;
		char path[300];
		link_pin_path(p, path, sizeof(path));
		unlink(path);
	}
}

/* -- the host's own addresses ---------------------------------------------------------------------- */

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
static int locals_known, locals_sent;

/* What the loader last wrote to .bss: a different value there was written by someone else. */
static struct {
	__u32 gen, merge_ready, local_epoch, raw_action;
} shadow;

static int cmp_addr(const void *x, const void *y)
{
	return memcmp(x, y, sizeof(struct addr16));
}

/* The kernel's copy of the host's addresses: new ones added before old ones go, so an address that
 * stays is never missing. Merging is on only while the copy is complete. */
static void sync_local_map(void)
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
	shadow.local_epoch = __atomic_add_fetch(&skel->bss->local_epoch, 1, __ATOMIC_SEQ_CST); /* sockets decide again */
	skel->bss->merge_ready = (__u32)locals_known;
	shadow.merge_ready = (__u32)locals_known;
	locals_sent = 1;
}

static void set_locals(char *args)
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
	sync_local_map();
}

/* Whether local_addrs holds exactly what the loader wrote. */
static int locals_intact(char *why, size_t room)
{
	int fd = bpf_map__fd(skel->maps.local_addrs);
	struct ww_local_key key, next;
	size_t seen = 0;
	int have = 0;
	while (bpf_map_get_next_key(fd, have ? &key : NULL, &next) == 0) {
		key = next;
		have = 1;
		struct addr16 x;
		memset(&x, 0, sizeof(x));
		x.family = next.family;
		memcpy(x.a, next.addr, 16);
		if (!locals_known || !bsearch(&x, locals, nlocals, sizeof(*locals), cmp_addr)) {
			char text[64] = "?";
			inet_ntop(next.family == 4 ? AF_INET : AF_INET6, next.addr, text, sizeof(text));
			snprintf(why, room, "%s was added to the host's own addresses: flows to it would pass as local", text);
			return 0;
		}
		if (++seen > WW_LOCAL_MAX)
			break;
	}
	if (locals_known && seen != nlocals) {
		snprintf(why, room, "%zu of the host's %zu addresses were removed", nlocals - seen, nlocals);
		return 0;
	}
	return 1;
}

/* -- raw_sockets policy ------------------------------------------------------------------------------- */

static struct ww_exe_key *allowed;
static size_t nallowed;

static int cmp_exe(const void *x, const void *y)
{
	return memcmp(x, y, sizeof(struct ww_exe_key));
}

static void sync_allow_map(void)
{
	int fd = bpf_map__fd(skel->maps.raw_allow);
	__u8 one = 1;
	for (size_t i = 0; i < nallowed; i++)
		bpf_map_update_elem(fd, &allowed[i], &one, BPF_ANY);
	struct ww_exe_key key, next, gone[256];
	size_t ngone = 0;
	int have = 0;
	while (ngone < sizeof(gone) / sizeof(gone[0]) && bpf_map_get_next_key(fd, have ? &key : NULL, &next) == 0) {
		key = next;
		have = 1;
		if (!bsearch(&next, allowed, nallowed, sizeof(*allowed), cmp_exe))
			gone[ngone++] = next;
	}
	for (size_t i = 0; i < ngone; i++)
		bpf_map_delete_elem(fd, &gone[i]);
	skel->bss->raw_action = shadow.raw_action;
}

/* "raw alert|kill DEV:INO ...": allowlisted executables by the kernel's dev_t and inode. */
static void set_raw(char *args)
{
	char *save = NULL;
	char *action = strtok_r(args, " ", &save);
	shadow.raw_action = action && strcmp(action, "kill") == 0 ? WW_RAW_KILL : WW_RAW_ALERT;
	free(allowed);
	allowed = NULL;
	nallowed = 0;
	size_t cap = 0;
	for (char *tok = strtok_r(NULL, " ", &save); tok; tok = strtok_r(NULL, " ", &save)) {
		unsigned long long dev, ino;
		if (sscanf(tok, "%llu:%llu", &dev, &ino) != 2)
			continue;
		if (nallowed == cap) {
			cap = cap ? cap * 2 : 16;
			struct ww_exe_key *grown = realloc(allowed, cap * sizeof(*allowed));
			if (!grown)
				fail("out of memory");
			allowed = grown;
		}
		memset(&allowed[nallowed], 0, sizeof(*allowed));
		allowed[nallowed].dev = (__u32)dev;
		allowed[nallowed].ino = ino;
		nallowed++;
	}
	if (nallowed)
		qsort(allowed, nallowed, sizeof(*allowed), cmp_exe);
	sync_allow_map();
}

static int allow_intact(char *why, size_t room)
{
	int fd = bpf_map__fd(skel->maps.raw_allow);
	struct ww_exe_key key, next;
	size_t seen = 0;
	int have = 0;
	while (bpf_map_get_next_key(fd, have ? &key : NULL, &next) == 0) {
		key = next;
		have = 1;
		if (!bsearch(&next, allowed, nallowed, sizeof(*allowed), cmp_exe)) {
			snprintf(why, room, "executable %u:%llu was added to the packet-socket allowlist", next.dev,
				 (unsigned long long)next.ino);
			return 0;
		}
		if (++seen > 1024)
			break;
	}
	if (seen != nallowed) {
		snprintf(why, room, "%zu allowlisted executables were removed", nallowed - seen);
		return 0;
	}
	return 1;
}

/* -- drains --------------------------------------------------------------------------------------- */

static __u64 drained_bytes; /* what the entries of this drain held, summed as they are read */

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
		drained_bytes += ((const struct ww_unix *)(vals + i * vsz))->bytes;
	}
	frame(T_UNIX, rec, n * (__u32)(ksz + vsz));
}

static void emit_raw(const char *keys, const char *vals, __u32 n)
{
	static char rec[BATCH * (sizeof(struct ww_raw_key) + sizeof(struct ww_raw))];
	const size_t ksz = sizeof(struct ww_raw_key), vsz = sizeof(struct ww_raw);
	for (__u32 i = 0; i < n; i++) {
		memcpy(rec + i * (ksz + vsz), keys + i * ksz, ksz);
		memcpy(rec + i * (ksz + vsz) + ksz, vals + i * vsz, vsz);
		drained_bytes += ((const struct ww_raw *)(vals + i * vsz))->bytes;
	}
	frame(T_RAW, rec, n * (__u32)(ksz + vsz));
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
		drained_bytes += flows[nflows].v.bytes;
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

static int drains;

static void send_tamper(__u64 last_ok_ns);

static void drain(void)
{
	__u32 was = skel->bss->gen, old = was & 1;
	__u32 zero = 0;
	int inner = bpf_map__fd(skel->maps.sync_inner);
	/* Counted up, never just flipped: a socket's merged flow knows whether it counted it this time. */
	shadow.gen = was + 1;
	__atomic_store_n(&skel->bss->gen, was + 1, __ATOMIC_SEQ_CST);
	/* The fence: returns once no program can still be writing generation `old`. */
	if (bpf_map_update_elem(bpf_map__fd(skel->maps.sync_outer), &zero, &inner, BPF_ANY))
		fail("synchronising: %s", strerror(errno));
	__u64 flip_ns = mono_ns();
	drained_bytes = 0;
	dump_map(bpf_map__fd(old ? skel->maps.flows1 : skel->maps.flows0), collect_flows);
	send_flows();
	dump_map(bpf_map__fd(old ? skel->maps.unix1 : skel->maps.unix0), emit_unix);
	dump_map(bpf_map__fd(old ? skel->maps.raw1 : skel->maps.raw0), emit_raw);
	int ncpu = libbpf_num_possible_cpus();
	if (ncpu < 1)
		ncpu = 1;
	struct ww_lost per[ncpu], sum = { 0 };
	memset(per, 0, sizeof(per));
	if (bpf_map_lookup_elem(bpf_map__fd(skel->maps.lost), &old, per) == 0) {
		for (int i = 0; i < ncpu; i++) {
			sum.bytes += per[i].bytes;
			sum.packets += per[i].packets;
			sum.events += per[i].events;
			sum.dns_limited += per[i].dns_limited;
		}
		memset(per, 0, sizeof(per));
		bpf_map_update_elem(bpf_map__fd(skel->maps.lost), &old, per, BPF_ANY);
	}
	struct ww_totals tper[ncpu], tsum = { 0 };
	memset(tper, 0, sizeof(tper));
	if (bpf_map_lookup_elem(bpf_map__fd(skel->maps.totals), &old, tper) == 0) {
		for (int i = 0; i < ncpu; i++) {
			tsum.counted += tper[i].counted;
			tsum.hdr_bytes += tper[i].hdr_bytes;
			tsum.hdr_packets += tper[i].hdr_packets;
		}
		memset(tper, 0, sizeof(tper));
		bpf_map_update_elem(bpf_map__fd(skel->maps.totals), &old, tper, BPF_ANY);
	}
	frame(T_LOST, &sum, sizeof(sum));
	frame(T_TOTALS, &tsum, sizeof(tsum));
	frame(T_END, &flip_ns, sizeof(flip_ns));
	/* The programs counted `counted`; the entries read back must hold exactly that. */
	if (++drains > SETTLE_DRAINS && drained_bytes + sum.bytes != tsum.counted) {
		long long diff = (long long)(drained_bytes + sum.bytes) - (long long)tsum.counted;
		changed("map_rewritten", old ? "flows1" : "flows0",
			"the entries of generation %u hold %lld bytes %s than the programs counted: entries were "
			"deleted or rewritten from user space", was, diff < 0 ? -diff : diff, diff < 0 ? "fewer" : "more");
		send_tamper(0);
	}
}

/* -- tamper checks ---------------------------------------------------------------------------------- */

static const char *attach_name(int p)
{
	switch (PROGS[p].type) {
	case BPF_CGROUP_INET_EGRESS: return "cgroup_skb/egress";
	case BPF_CGROUP_INET_INGRESS: return "cgroup_skb/ingress";
	case BPF_CGROUP_INET_SOCK_CREATE: return "cgroup/sock_create";
	case BPF_CGROUP_SOCK_OPS: return "sockops";
	default: return "?";
	}
}

static char cg_path[256];
static __u64 last_ok_ns;

/* Whether our program is among those attached to the cgroup for its hook. */
static int attached_to_cgroup(int p)
{
	__u32 ids[64], cnt = 64, flags = 0;
	if (bpf_prog_query(cg_fd, PROGS[p].type, 0, &flags, ids, &cnt) != 0)
		return errno == ENOSPC; /* more than 64 programs: assume ours is one, the link check still holds */
	for (__u32 i = 0; i < cnt; i++)
		if (ids[i] == st[p].prog_id)
			return 1;
	return 0;
}

static void reattach(int p)
{
	if (pin_dir[0])
		bpf_link__unpin(st[p].link);
	bpf_link__destroy(st[p].link);
	st[p].link = attach_one(p);
	if (!st[p].link) {
		reattach_failed = 1;
		st[p].off = 1;
		snprintf(st[p].reason, sizeof(st[p].reason), "detached by someone else, and attaching again failed: %s",
			 strerror(errno));
		return;
	}
	remember(p);
	pin_link(p);
}

static void check_links(void)
{
	for (int p = 0; p < WW_P_COUNT; p++) {
		if (st[p].off || !st[p].link)
			continue;
		struct bpf_link_info info;
		if (link_info(bpf_link__fd(st[p].link), &info) != 0)
			continue;
		if (info.prog_id != st[p].prog_id) {
			changed("program_replaced", PROGS[p].name, "link %u ran program %u instead of ours (%u): swapped back",
				st[p].link_id, info.prog_id, st[p].prog_id);
			if (bpf_link__update_program(st[p].link, prog_of(skel, p)) != 0)
				reattach(p);
			continue;
		}
		if (PROGS[p].cgroup && info.cgroup.cgroup_id == 0) {
			changed("link_detached", PROGS[p].name, "%s on %s: link %u detached (bpftool link detach): "
				"attached again", attach_name(p), cg_path, st[p].link_id);
			reattach(p);
			continue;
		}
		if (PROGS[p].cgroup && !attached_to_cgroup(p)) {
			changed("program_detached", PROGS[p].name, "%s on %s: not attached: attached again", attach_name(p),
				cg_path);
			reattach(p);
			continue;
		}
		if (pin_dir[0]) {
			char path[300];
			link_pin_path(p, path, sizeof(path));
			int fd = bpf_obj_get(path);
			struct bpf_link_info pinned;
			int same = fd >= 0 && link_info(fd, &pinned) == 0 && pinned.id == st[p].link_id;
			if (fd >= 0)
				close(fd);
			if (!same) {
				changed("other", PROGS[p].name, "its pin %s was removed or replaced: pinned again (without it "
					"the program would detach when the loader stops)", path);
				pin_link(p);
			}
		}
	}
}

static void check_bss(void)
{
	struct { const char *name; __u32 *at; __u32 want; } vals[] = {
		{ "gen", &skel->bss->gen, shadow.gen },
		{ "merge_ready", &skel->bss->merge_ready, shadow.merge_ready },
		{ "local_epoch", &skel->bss->local_epoch, shadow.local_epoch },
		{ "active", &skel->bss->active, skel->rodata->my_epoch },
		{ "raw_action", &skel->bss->raw_action, shadow.raw_action },
	};
	for (size_t i = 0; i < sizeof(vals) / sizeof(vals[0]); i++) {
		__u32 now = __atomic_load_n(vals[i].at, __ATOMIC_SEQ_CST);
		if (now == vals[i].want)
			continue;
		changed("map_rewritten", ".bss", "%s was %u, the loader wrote %u: put back", vals[i].name, now, vals[i].want);
		__atomic_store_n(vals[i].at, vals[i].want, __ATOMIC_SEQ_CST);
	}
}

static void check_maps(void)
{
	char why[300];
	if (locals_sent && !locals_intact(why, sizeof(why))) {
		changed("map_rewritten", "local_addrs", "%s: put back", why);
		sync_local_map();
	}
	if (!allow_intact(why, sizeof(why))) {
		changed("map_rewritten", "raw_allow", "%s: put back", why);
		sync_allow_map();
	}
	if (!pin_dir[0])
		return;
	struct bpf_map *m;
	bpf_object__for_each_map(m, skel->obj) {
		if (!pinned_map(m))
			continue;
		char path[300];
		map_pin_path(m, path, sizeof(path));
		int fd = bpf_obj_get(path);
		struct bpf_map_info a, b;
		__u32 la = sizeof(a), lb = sizeof(b);
		memset(&a, 0, sizeof(a));
		memset(&b, 0, sizeof(b));
		int same = fd >= 0 && bpf_obj_get_info_by_fd(fd, &a, &la) == 0
			   && bpf_obj_get_info_by_fd(bpf_map__fd(m), &b, &lb) == 0 && a.id == b.id;
		if (fd >= 0)
			close(fd);
		if (!same) {
			changed("other", bpf_map__name(m), "its pin %s was removed or replaced: pinned again", path);
			unlink(path);
			bpf_obj_pin(bpf_map__fd(m), path);
		}
	}
}

static void send_tamper(__u64 ok_ns)
{
	if (!nchanges)
		return;
	static struct text t;
	t.len = 0;
	put(&t, "{\"changes\":[");
	for (int i = 0; i < nchanges; i++) {
		put(&t, "%s{\"kind\":", i ? "," : "");
		put_str(&t, changes[i].kind);
		put(&t, ",\"name\":");
		put_str(&t, changes[i].name);
		put(&t, ",\"detail\":");
		put_str(&t, changes[i].detail);
		put(&t, "}");
	}
	put(&t, "],\"reattached\":%s,\"detected_ns\":%llu,\"ok_ns\":%llu}", reattach_failed ? "false" : "true",
	    (unsigned long long)mono_ns(), (unsigned long long)ok_ns);
	frame(T_TAMPER, t.buf, (__u32)t.len);
	nchanges = 0;
	reattach_failed = 0;
}

static void check(void)
{
	check_links();
	check_bss();
	check_maps();
	__u64 now = mono_ns();
	if (nchanges)
		send_tamper(last_ok_ns);
	last_ok_ns = now;
}

/* -- READY ---------------------------------------------------------------------------------------- */

static void ready(const char *cgroup, int probe)
{
	static struct text t;
	t.len = 0;
	put(&t, "{");
	if (probe) {
		put(&t, "\"probe\":true,");
	} else {
		put(&t, "\"cgroup\":");
		put_str(&t, cgroup);
		put(&t, ",\"epoch\":%u,", skel->rodata->my_epoch);
	}
	put(&t, "\"programs\":{");
	for (int p = 0; p < WW_P_COUNT; p++) {
		put(&t, "%s", p ? "," : "");
		put_str(&t, PROGS[p].name);
		put(&t, ":{\"on\":%s", st[p].off ? "false" : "true");
		if (st[p].off) {
			put(&t, ",\"reason\":");
			put_str(&t, st[p].reason);
		}
		put(&t, "}");
	}
	put(&t, "},\"pin\":{\"on\":%s", pin_dir[0] ? "true" : "false");
	if (pin_dir[0]) {
		put(&t, ",\"dir\":");
		put_str(&t, pin_dir);
		put(&t, ",\"reused\":%s", pin_reused ? "true" : "false");
	} else if (pin_off[0]) {
		put(&t, ",\"reason\":");
		put_str(&t, pin_off);
	}
	put(&t, "},\"notes\":[");
	int first = 1;
	char *save = NULL;
	for (char *line = strtok_r(notes, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
		put(&t, "%s", first ? "" : ",");
		put_str(&t, line);
		first = 0;
	}
	put(&t, "]}");
	frame(T_READY, t.buf, (__u32)t.len);
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

int main(int argc, char **argv)
{
	const char *pin_arg = NULL;
	int args = 1;
	if (argc == 3 && strcmp(argv[1], "--unpin") == 0)
		return unpin_all(argv[2]);
	if (argc == 4 && strcmp(argv[1], "--pin") == 0) {
		pin_arg = argv[2];
		args = 3;
	}
	if (argc != args + 1) {
		fprintf(stderr, "usage: weightwarden-bpf [--pin DIR] CGROUP_DIR | --probe | --unpin DIR\n");
		return 2;
	}
	const char *cgroup = argv[args];
	int probe = strcmp(cgroup, "--probe") == 0;
	prctl(PR_SET_PDEATHSIG, SIGTERM);
	signal(SIGPIPE, SIG_IGN);
	libbpf_set_print(on_libbpf_log);
	struct rlimit unlimited = { RLIM_INFINITY, RLIM_INFINITY };
	setrlimit(RLIMIT_MEMLOCK, &unlimited); /* kernels before 5.11 charge maps to memlock */

	struct btf *vmlinux = btf__load_vmlinux_btf();
	if (!vmlinux)
		fail("no kernel BTF (/sys/kernel/btf/vmlinux): %s", strerror(errno));
	skip_missing(vmlinux);
	int scope_root = 0;
	if (!probe) {
		/* cgroup v2's root directory is inode 1: every task is under it, so the tracepoints need not ask */
		struct stat sb;
		if (stat(cgroup, &sb) != 0)
			fail("cgroup %s: %s", cgroup, strerror(errno));
		scope_root = sb.st_ino == 1;
		cg_id = sb.st_ino; /* a cgroup v2 directory's inode is its id */
		snprintf(cg_path, sizeof(cg_path), "%s", cgroup);
		cg_fd = open(cgroup, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
		if (cg_fd < 0)
			fail("opening cgroup %s: %s", cgroup, strerror(errno));
		if (pin_arg) {
			/* Another agent's pins (locked) are left alone: this one runs unpinned, and says so. */
			int r = pin_setup(pin_arg, 1);
			if (r == 0) {
				char probe_path[320];
				snprintf(probe_path, sizeof(probe_path), "%s/maps/flows0", pin_dir);
				pin_reused = access(probe_path, F_OK) == 0;
			}
		}
	}
	__u32 epoch = 1;
	if (pin_dir[0] && pin_reused) {
		__u32 before = pinned_active();
		epoch = before + 1 ? before + 1 : 1;
	}
	skel = load(scope_root, epoch);
	if (probe) {
		ready(NULL, 1);
		return 0;
	}
	__u32 zero = 0;
	if (bpf_map_update_elem(bpf_map__fd(skel->maps.scope), &zero, &cg_fd, BPF_ANY))
		fail("setting the scope cgroup: %s", strerror(errno));
	/* Frozen: the scope can no longer be pointed elsewhere from user space (a blinding rewrite). */
	if (bpf_map_freeze(bpf_map__fd(skel->maps.scope)))
		note("cannot freeze the scope map: %s", strerror(errno));
	shadow.gen = skel->bss->gen;
	shadow.merge_ready = skel->bss->merge_ready;
	shadow.local_epoch = skel->bss->local_epoch;
	shadow.raw_action = skel->bss->raw_action;
	if (pin_reused) {
		/* The allowlist the last loader left, as our reference until the agent sends its own. */
		int fd = bpf_map__fd(skel->maps.raw_allow);
		struct ww_exe_key key, next;
		int have = 0;
		char cmd[8192] = "";
		size_t used = 0;
		while (bpf_map_get_next_key(fd, have ? &key : NULL, &next) == 0 && used < sizeof(cmd) - 64) {
			key = next;
			have = 1;
			used += (size_t)snprintf(cmd + used, sizeof(cmd) - used, " %u:%llu", next.dev,
						 (unsigned long long)next.ino);
		}
		char line[8300];
		snprintf(line, sizeof(line), "%s%s", shadow.raw_action == WW_RAW_KILL ? "kill" : "alert", cmd);
		set_raw(line);
	}
	attach_all();
	struct ring_buffer *rb = ring_buffer__new(bpf_map__fd(skel->maps.events), on_event, NULL, NULL);
	if (!rb)
		fail("ring buffer: %s", strerror(errno));
	ready(cgroup, 0);
	last_ok_ns = mono_ns();
	send_tamper(0);

	static char line[65536]; /* "local" names every address of the host */
	size_t have = 0;
	struct pollfd fds[2] = { { .fd = 0, .events = POLLIN }, { .fd = ring_buffer__epoll_fd(rb), .events = POLLIN } };
	__u64 next_check = mono_ns() + CHECK_EVERY_NS;
	for (;;) {
		int r = poll(fds, 2, 250);
		if (r < 0 && errno != EINTR)
			fail("poll: %s", strerror(errno));
		if (fds[1].revents & POLLIN)
			ring_buffer__consume(rb);
		if (mono_ns() >= next_check) {
			check();
			next_check = mono_ns() + CHECK_EVERY_NS;
		}
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
					drain();
				} else if (strncmp(line, "local ", 6) == 0) {
					set_locals(line + 6);
				} else if (strncmp(line, "raw ", 4) == 0) {
					set_raw(line + 4);
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
	/* Closing a link's last fd detaches it; a pinned link is held by its pin and keeps counting. */
	for (int p = 0; p < WW_P_COUNT; p++)
		if (st[p].link)
			bpf_link__destroy(st[p].link);
	weightwarden_bpf__destroy(skel);
	btf__free(vmlinux);
	return 0;
}
