// SPDX-License-Identifier: Apache-2.0
/* weightwarden-files-bpf: loads the file-read programs (files.bpf.c) and speaks a small binary
 * protocol to the agent on stdin/stdout, as the attribution loader does and for the same reasons:
 * the skeleton embeds the object, a crash here cannot take the agent down, and when this process
 * ends (agent gone, killed, stdin closed) the kernel detaches every program it attached.
 *
 * It keeps running while the agent is stopped (SIGSTOP, a debugger, swap): the programs keep
 * counting into their maps, nobody waits, and the agent reads what they counted when it is back.
 *
 *   weightwarden-files-bpf            load, attach, then serve stdin
 *   weightwarden-files-bpf --probe    load only: exit 0 if this kernel runs the read programs
 *
 * stdin, one command per line:
 *   add ID DEV INO FLAGS [ID DEV INO FLAGS]...   weights the kernel should know (DEV: the kernel's dev_t)
 *   del DEV INO [DEV INO]...                     weights it should forget
 *   read                                         answered READERS*, PENDING, LOST, END
 *   take TGID ID START INO [TGID ID START INO]...  final counts of processes that are gone, removed:
 *                                                answered TAKEN*, END
 *   seen TGID                                    whether that process has read a weight: answered SEEN
 *                                                (u64: its start, boot ns; 0 if not), END
 *   quit
 * stdout, frames: u32 type, u32 length, payload (host byte order)
 *   READY  JSON: each program, attached or why not   ERROR  text, then exit 1
 *   READERS / TAKEN  n x (wf_reader_key, wf_reader)   LOST  wf_lost summed over CPUs
 *   PENDING  n x wf_pending: counted on a CPU, not yet in READERS (add them)
 *   END    u64 CLOCK_MONOTONIC ns when the read began  RELINK  wf_relink, whenever one happens
 *   OPENER wf_opener: a process's first read of any weight (who it is), whenever one happens
 */
#include <errno.h>
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
#include "loader_common.h"
#include "wf.h"
#include "files.skel.h"

/* weightwarden/agent/files/ebpf/wire.py decodes these byte for byte. */
_Static_assert(sizeof(struct wf_key) == 16, "wf_key");
_Static_assert(sizeof(struct wf_weight) == 8, "wf_weight");
_Static_assert(sizeof(struct wf_reader_key) == 24, "wf_reader_key");
_Static_assert(sizeof(struct wf_reader) == 64, "wf_reader");
_Static_assert(sizeof(struct wf_lost) == 32, "wf_lost");
_Static_assert(sizeof(struct wf_slot) == 104, "wf_slot");
_Static_assert(sizeof(struct wf_pending) == 40, "wf_pending");
_Static_assert(sizeof(struct wf_relink) == 4440, "wf_relink");
_Static_assert(sizeof(struct wf_opener) == 4656, "wf_opener");

enum { T_READERS = 3, T_TAKEN = 4, T_LOST = 5, T_END = 6, T_RELINK = 7, T_PENDING = 8,
       T_OPENER = 9, T_SEEN = 10 };

#define BATCH 1024
#define REC (sizeof(struct wf_reader_key) + sizeof(struct wf_reader))

static int on_event(void *ctx, void *data, size_t size)
{
	(void)ctx;
	const struct wf_event_hdr *h = data;
	const char *body = (const char *)data + sizeof(*h);
	if (size < sizeof(*h))
		return 0;
	if (h->type == WF_EV_RELINK && size >= sizeof(*h) + sizeof(struct wf_relink))
		frame(T_RELINK, body, sizeof(struct wf_relink));
	else if (h->type == WF_EV_OPENER && size >= sizeof(*h) + sizeof(struct wf_opener))
		frame(T_OPENER, body, sizeof(struct wf_opener));
	return 0;
}

/* Each program, the tracepoint it needs and what the agent loses without it. */
struct prog_info {
	const char *name;
	const char *tp;
	const char *loses;
	char status[512]; /* "" while attached; else why not */
};

static struct prog_info progs[] = {
	{ "wf_get_pages", "mm_filemap_get_pages", "reads are measured from /proc (rchar) instead", "" },
	{ "wf_exit", "sched_process_exit", "reads are measured from /proc (rchar) instead", "" },
	{ "wf_map_pages", "mm_filemap_map_pages", "mapped reads are seen from /proc/PID/smaps only", "" },
	{ "wf_fault", "mm_filemap_fault", "mapped reads are seen from /proc/PID/smaps only", "" },
	{ "wf_ctime_xchg", "ctime_ns_xchg", "new names are seen through fanotify only", "" },
	{ "wf_ctime_skip", "ctime_xchg_skip", "new names are seen through fanotify only", "" },
	{ "wf_ctime_set", "inode_set_ctime_to_ts", "new names are seen through fanotify only", "" },
};
#define NPROGS (sizeof(progs) / sizeof(progs[0]))

static struct bpf_program *prog_of(struct files_bpf *skel, size_t i)
{
	return bpf_object__find_program_by_name(skel->obj, progs[i].name);
}

/* A one-line reason from libbpf's messages: the verifier's last word before its statistics. */
static void reason(char *dst, size_t room, const char *what)
{
	const char *msg = libbpf_msgs, *end = strstr(msg, "\nprocessed ");
	if (!end) {
		end = msg + strlen(msg);
		while (end > msg && (end[-1] == '\n' || end[-1] == ' '))
			end--;
	}
	const char *start = end;
	while (start > msg && start[-1] != '\n')
		start--;
	snprintf(dst, room, "%s: %.*s", what, (int)(end - start), start);
	for (char *p = dst; *p; p++)
		if (*p == '"' || *p == '\\' || (unsigned char)*p < 0x20)
			*p = ' ';
}

/* Open and load, leaving out what this kernel cannot run: a missing tracepoint up front, a
 * program the verifier refuses on a retry without it. */
static struct files_bpf *load(struct btf *vmlinux)
{
	int off[NPROGS] = { 0 };
	for (size_t i = 0; i < NPROGS; i++) {
		char name[128];
		snprintf(name, sizeof(name), "btf_trace_%s", progs[i].tp);
		if (btf__find_by_name_kind(vmlinux, name, BTF_KIND_TYPEDEF) < 0) {
			off[i] = 1;
			snprintf(progs[i].status, sizeof(progs[i].status), "no %s tracepoint in this kernel: %s",
				 progs[i].tp, progs[i].loses);
		}
	}
	long page = sysconf(_SC_PAGESIZE);
	__u32 shift = 12;
	while (page > 0 && (1L << shift) < page)
		shift++;
	for (int attempt = 0; attempt <= (int)NPROGS; attempt++) {
		struct files_bpf *skel = files_bpf__open();
		if (!skel)
			fail("opening the BPF object: %s %s", strerror(errno), libbpf_msgs);
		skel->rodata->page_shift = shift;
		skel->rodata->nr_cpus = (__u32)libbpf_num_possible_cpus();
		int any = 0;
		for (size_t i = 0; i < NPROGS; i++) {
			bpf_program__set_autoload(prog_of(skel, i), !off[i]);
			any |= !off[i];
		}
		if (!any) {
			files_bpf__destroy(skel);
			return NULL;
		}
		libbpf_msgs[0] = 0;
		if (files_bpf__load(skel) == 0)
			return skel;
		int err = errno;
		size_t culprit = NPROGS;
		for (size_t i = 0; i < NPROGS; i++) {
			char tag[160];
			snprintf(tag, sizeof(tag), "prog '%s'", progs[i].name);
			if (!off[i] && strstr(libbpf_msgs, tag))
				culprit = i;
		}
		files_bpf__destroy(skel);
		if (culprit == NPROGS)
			fail("loading the BPF programs: %s %s", strerror(err), libbpf_msgs);
		off[culprit] = 1;
		char why[400];
		snprintf(why, sizeof(why), "refused (%s)", strerror(err));
		reason(progs[culprit].status, sizeof(progs[culprit].status), why);
	}
	return NULL;
}

static __u64 now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (__u64)ts.tv_sec * 1000000000ULL + (__u64)ts.tv_nsec;
}

static void send_lost(struct files_bpf *skel)
{
	int ncpu = libbpf_num_possible_cpus();
	struct wf_lost per[ncpu > 0 ? ncpu : 1], sum = { 0 };
	__u32 zero = 0;
	if (ncpu > 0 && bpf_map_lookup_elem(bpf_map__fd(skel->maps.lost), &zero, per) == 0) {
		for (int i = 0; i < ncpu; i++) {
			sum.readers += per[i].readers;
			sum.events += per[i].events;
			sum.storage += per[i].storage;
		}
	}
	frame(T_LOST, &sum, sizeof(sum)); /* cumulative: the agent reports what is new */
}

/* Every counter, as it is now (they only grow; the agent takes differences). */
static void read_readers(struct files_bpf *skel)
{
	static struct wf_reader_key keys[BATCH];
	static struct wf_reader vals[BATCH];
	static char rec[BATCH * REC];
	int fd = bpf_map__fd(skel->maps.readers);
	__u64 began = now_ns();
	__u32 in = 0, out = 0;
	int first = 1;
	for (;;) {
		__u32 count = BATCH;
		int err = bpf_map_lookup_batch(fd, first ? NULL : &in, &out, keys, vals, &count, NULL);
		if (err && errno != ENOENT)
			fail("reading the counters: %s", strerror(errno));
		for (__u32 i = 0; i < count; i++) {
			memcpy(rec + i * REC, &keys[i], sizeof(keys[i]));
			memcpy(rec + i * REC + sizeof(keys[i]), &vals[i], sizeof(vals[i]));
		}
		if (count)
			frame(T_READERS, rec, (__u32)(count * REC));
		if (err)
			break;
		in = out;
		first = 0;
	}
	/* After the map: a slot emptied into it meanwhile is missed this time, never counted twice. */
	int ncpu = libbpf_num_possible_cpus();
	struct wf_slot per[ncpu > 0 ? ncpu : 1];
	struct wf_pending pending[ncpu > 0 ? ncpu : 1];
	__u32 zero = 0, n = 0;
	if (ncpu > 0 && bpf_map_lookup_elem(bpf_map__fd(skel->maps.slots), &zero, per) == 0) {
		for (int i = 0; i < ncpu; i++) {
			if (!per[i].bytes && !per[i].calls)
				continue;
			pending[n].key.tgid = per[i].tgid;
			pending[n].key.id = per[i].id;
			pending[n].key.start_ns = per[i].start_ns;
			pending[n].key.ino = per[i].ino;
			pending[n].bytes = per[i].bytes; /* its request in flight counted at its pages */
			pending[n].calls = per[i].calls;
			n++;
		}
	}
	frame(T_PENDING, pending, n * (__u32)sizeof(pending[0]));
	send_lost(skel);
	frame(T_END, &began, sizeof(began));
}

static void take(struct files_bpf *skel, char *args)
{
	int fd = bpf_map__fd(skel->maps.readers);
	static char rec[BATCH * REC];
	__u32 n = 0;
	char *save = NULL;
	for (;;) {
		char *a = strtok_r(args, " ", &save), *b = strtok_r(NULL, " ", &save), *c = strtok_r(NULL, " ", &save),
		     *d = strtok_r(NULL, " ", &save);
		args = NULL;
		if (!a || !b || !c || !d)
			break;
		struct wf_reader_key k = { .tgid = (__u32)strtoul(a, NULL, 10), .id = (__u32)strtoul(b, NULL, 10),
					   .start_ns = strtoull(c, NULL, 10), .ino = strtoull(d, NULL, 10) };
		struct wf_reader v;
		/* The process is gone: nothing writes this entry any more, so what is read is final. */
		if (bpf_map_lookup_elem(fd, &k, &v) != 0)
			continue;
		bpf_map_delete_elem(fd, &k);
		memcpy(rec + n * REC, &k, sizeof(k));
		memcpy(rec + n * REC + sizeof(k), &v, sizeof(v));
		if (++n == BATCH) {
			frame(T_TAKEN, rec, n * (__u32)REC);
			n = 0;
		}
	}
	if (n)
		frame(T_TAKEN, rec, n * (__u32)REC);
	__u64 t = now_ns();
	frame(T_END, &t, sizeof(t));
}

static __u64 mix(__u64 ino)
{
	return ino * 0x9E3779B97F4A7C15ULL;
}

static void add(struct files_bpf *skel, char *args)
{
	int wfd = bpf_map__fd(skel->maps.weights), bfd = bpf_map__fd(skel->maps.weight_bits);
	char *save = NULL;
	for (;;) {
		char *id = strtok_r(args, " ", &save), *dev = strtok_r(NULL, " ", &save),
		     *ino = strtok_r(NULL, " ", &save), *flags = strtok_r(NULL, " ", &save);
		args = NULL;
		if (!id || !dev || !ino || !flags)
			break;
		struct wf_key k = { .ino = strtoull(ino, NULL, 10), .dev = (__u32)strtoul(dev, NULL, 10) };
		struct wf_weight w = { .id = (__u32)strtoul(id, NULL, 10), .flags = (__u32)strtoul(flags, NULL, 10) };
		if (bpf_map_update_elem(wfd, &k, &w, BPF_ANY))
			continue; /* full: the agent sees the kernel map's size in READY and counts what it sent */
		if (w.flags & WF_K_FS) {
			__atomic_add_fetch(&skel->bss->whole_fs, 1, __ATOMIC_SEQ_CST);
			continue; /* no prefilter bit: a filesystem's files are looked up by device */
		}
		__u64 h = mix(k.ino);
		__u32 word = (__u32)(h >> 40) & (WF_BITS_WORDS - 1);
		__u64 bits = 0;
		bpf_map_lookup_elem(bfd, &word, &bits);
		bits |= 1ULL << (h >> 58);
		bpf_map_update_elem(bfd, &word, &bits, BPF_ANY);
	}
}

static void del(struct files_bpf *skel, char *args)
{
	int wfd = bpf_map__fd(skel->maps.weights);
	char *save = NULL;
	for (;;) {
		char *dev = strtok_r(args, " ", &save), *ino = strtok_r(NULL, " ", &save);
		args = NULL;
		if (!dev || !ino)
			break;
		struct wf_key k = { .ino = strtoull(ino, NULL, 10), .dev = (__u32)strtoul(dev, NULL, 10) };
		struct wf_weight w;
		if (bpf_map_lookup_elem(wfd, &k, &w) == 0 && (w.flags & WF_K_FS))
			__atomic_sub_fetch(&skel->bss->whole_fs, 1, __ATOMIC_SEQ_CST);
		bpf_map_delete_elem(wfd, &k); /* its prefilter bit stays: a false positive costs one lookup */
	}
}

static void json_status(char *out, size_t room, int probe)
{
	size_t used = (size_t)snprintf(out, room, "{\"probe\":%s,\"weights_max\":%d,\"readers_max\":%d,\"programs\":{",
				       probe ? "true" : "false", WF_WEIGHTS_MAX, WF_READERS_MAX);
	for (size_t i = 0; i < NPROGS && used < room; i++)
		used += (size_t)snprintf(out + used, room - used, "%s\"%s\":\"%s\"", i ? "," : "", progs[i].name,
					 progs[i].status);
	if (used < room)
		snprintf(out + used, room - used, "}}");
}

int main(int argc, char **argv)
{
	int probe = argc == 2 && strcmp(argv[1], "--probe") == 0;
	if (argc > 2 || (argc == 2 && !probe)) {
		fprintf(stderr, "usage: weightwarden-files-bpf [--probe]\n");
		return 2;
	}
	prctl(PR_SET_PDEATHSIG, SIGTERM);
	signal(SIGPIPE, SIG_IGN);
	libbpf_set_print(on_libbpf_log);
	struct rlimit unlimited = { RLIM_INFINITY, RLIM_INFINITY };
	setrlimit(RLIMIT_MEMLOCK, &unlimited); /* kernels before 5.11 charge maps to memlock */

	struct btf *vmlinux = btf__load_vmlinux_btf();
	if (!vmlinux)
		fail("no kernel BTF (/sys/kernel/btf/vmlinux): %s", strerror(errno));
	struct files_bpf *skel = load(vmlinux);
	static char ready[8192];
	if (!skel) {
		json_status(ready, sizeof(ready), probe);
		fail("no file-read program can run on this kernel: %s", ready);
	}
	if (!probe) {
		for (size_t i = 0; i < NPROGS; i++) {
			struct bpf_program *p = prog_of(skel, i);
			if (!bpf_program__autoload(p))
				continue;
			libbpf_msgs[0] = 0;
			if (!bpf_program__attach(p)) {
				char why[128];
				snprintf(why, sizeof(why), "not attached (%s)", strerror(errno));
				reason(progs[i].status, sizeof(progs[i].status), why);
			}
		}
	}
	json_status(ready, sizeof(ready), probe);
	if (probe) {
		frame(T_READY, ready, (__u32)strlen(ready));
		return 0;
	}
	struct ring_buffer *rb = ring_buffer__new(bpf_map__fd(skel->maps.events), on_event, NULL, NULL);
	if (!rb)
		fail("ring buffer: %s", strerror(errno));
	frame(T_READY, ready, (__u32)strlen(ready));

	static char line[1 << 20]; /* an "add" of thousands of weights at once */
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
				if (strncmp(line, "add ", 4) == 0) {
					add(skel, line + 4);
				} else if (strncmp(line, "del ", 4) == 0) {
					del(skel, line + 4);
				} else if (strcmp(line, "read") == 0) {
					ring_buffer__consume(rb); /* new names before the reads that follow them */
					read_readers(skel);
				} else if (strncmp(line, "take ", 5) == 0) {
					take(skel, line + 5);
				} else if (strncmp(line, "seen ", 5) == 0) {
					__u32 tgid = (__u32)strtoul(line + 5, NULL, 10);
					__u64 start = 0, t = now_ns();
					bpf_map_lookup_elem(bpf_map__fd(skel->maps.announced), &tgid, &start);
					frame(T_SEEN, &start, sizeof(start));
					frame(T_END, &t, sizeof(t));
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
	files_bpf__destroy(skel);
	btf__free(vmlinux);
	return 0;
}
