// SPDX-License-Identifier: (BSD-2-Clause OR GPL-2.0-only)
/* Reads of the weight files counted in the kernel, and new names given to them, for every
 * process on the host, without making any of them wait for user space.
 *
 * The agent fills `weights` with the (device, inode) of every weight file and directory. The
 * page cache tells who reads them, whatever name, mount or namespace the file was reached by:
 *
 *   mm_filemap_get_pages   a read from the page cache (read, pread, readv, sendfile, splice,
 *                          copy_file_range, io_uring; an overlay's reads reach its real file)
 *   mm_filemap_map_pages   pages mapped in at a fault (mmap), and mm_filemap_fault
 *
 * Each read request is counted as the pages it asked for, clipped at the file's end: exact for
 * a whole file read in any block size; a read that starts mid-page counts from the page start.
 * A request larger than one batch of folios shows up again for the rest of its range with the
 * same last page, and is not counted twice. Nothing is sent per read: counts are kept per CPU
 * (`slots`) and per (process, file) (`readers`), and the loader reads them when asked.
 *
 * New names: a hard link or a rename changes the ctime of the inode it names (ctime_ns_xchg,
 * ctime_xchg_skip, inode_set_ctime_to_ts), in the context of the process's syscall, so the
 * syscall's own arguments say what the new name is. Only inodes in `weights` get this far, and
 * only link and rename syscalls make an event (a ring buffer record, never a wait).
 *
 * Every program is optional: the loader leaves out those this kernel lacks and says why.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include "wf.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

#define AT_FDCWD -100
#define NONE (~0ULL)

volatile const __u32 page_shift = 12;   /* set by the loader from the page size */
volatile const __u32 nr_cpus = 1;       /* possible CPUs, set by the loader */
__u32 whole_fs = 0;                     /* filesystems whose every file is a weight (set by the loader) */

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, WF_WEIGHTS_MAX);
	__type(key, struct wf_key);
	__type(value, struct wf_weight);
} weights SEC(".maps");

/* One bit per hash of a weight's inode number: a read of any other file stops at an array
 * lookup the verifier inlines, before any hash map is touched. Bits are only ever set. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, WF_BITS_WORDS);
	__type(key, __u32);
	__type(value, __u64);
} weight_bits SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, WF_READERS_MAX);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct wf_reader_key);
	__type(value, struct wf_reader);
} readers SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct wf_lost);
} lost SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 20);
} events SEC(".maps");

/* The reads each CPU is counting now: one (process, file) at a time. A read by the same thread
 * of the same file as the CPU's previous one (a loop of reads) costs two atomic adds on this
 * CPU's own line; another reader takes the slot over, moving what it held into `readers`. The
 * loader adds what the slots hold to what `readers` holds when it reads, and a process's slots
 * are emptied into `readers` when it exits. Adds and takes are atomic: an exit on another CPU
 * may empty a slot while this CPU adds to it. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct wf_slot);
} slots SEC(".maps");

struct scratch {
	char buf[WF_PATH_MAX + WF_NAME_MAX];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct scratch);
} scratch SEC(".maps");

static __always_inline __u64 mix(__u64 ino)
{
	return ino * 0x9E3779B97F4A7C15ULL;
}

/* Whether an inode may be a weight: false for almost every file that is not. */
static __always_inline int maybe_weight(__u64 ino)
{
	__u64 h = mix(ino);
	__u32 word = (__u32)(h >> 40) & (WF_BITS_WORDS - 1);
	__u64 *bits = bpf_map_lookup_elem(&weight_bits, &word);
	return bits && (*bits & (1ULL << (h >> 58)));
}

static __always_inline struct wf_lost *lost_slot(void)
{
	__u32 zero = 0;
	return bpf_map_lookup_elem(&lost, &zero);
}

struct relink_event {
	struct wf_event_hdr hdr;
	struct wf_relink r;
};

struct opener_event {
	struct wf_event_hdr hdr;
	struct wf_opener o;
};

/* Processes already described to the agent (tgid -> start): once per process, not per file. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u32);
	__type(value, __u64);
} announced SEC(".maps");

static __always_inline __u32 dir_path(struct task_struct *t, struct dentry *d, struct vfsmount *vm, char *buf);

/* A process's first read of a weight: who it is, from the kernel, so that one that exits before
 * the agent looks (a `cat`) is still named with its executable. */
static __always_inline void announce(struct task_struct *t, __u64 start_ns)
{
	__u32 tgid = t->tgid;
	__u64 *seen = bpf_map_lookup_elem(&announced, &tgid);
	if (seen && *seen == start_ns)
		return;
	bpf_map_update_elem(&announced, &tgid, &start_ns, BPF_ANY);
	struct opener_event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		struct wf_lost *l = lost_slot();
		if (l)
			__sync_fetch_and_add(&l->events, 1);
		return;
	}
	e->hdr.type = WF_EV_OPENER;
	e->o.tgid = tgid;
	e->o.uid = (__u32)bpf_get_current_uid_gid();
	e->o.start_ns = start_ns;
	e->o.cgroup_id = bpf_get_current_cgroup_id();
	e->o.ppid = BPF_CORE_READ(t, real_parent, tgid);
	e->o.mnt_ns = BPF_CORE_READ(t, nsproxy, mnt_ns, ns.inum);
	bpf_probe_read_kernel_str(e->o.comm, sizeof(e->o.comm), &t->group_leader->comm);
	/* Its own memory, read in its own context without faulting anything in: a page of argv that is
	 * not there (swapped, or on a stalled FUSE file) leaves the command line empty, never waits. */
	__u64 arg_start = BPF_CORE_READ(t, mm, arg_start), arg_end = BPF_CORE_READ(t, mm, arg_end);
	__u64 len = arg_end > arg_start ? arg_end - arg_start : 0;
	if (len > WF_ARGS_MAX)
		len = WF_ARGS_MAX;
	e->o.args[0] = 0;
	if (len && bpf_probe_read_user(e->o.args, len & (WF_ARGS_MAX - 1) ? len & (WF_ARGS_MAX - 1) : WF_ARGS_MAX,
				       (const void *)arg_start))
		e->o.args[0] = 0;
	e->o.exe[0] = 0;
	__u32 zero = 0;
	struct scratch *s = bpf_map_lookup_elem(&scratch, &zero);
	struct file *exe = BPF_CORE_READ(t, mm, exe_file);
	if (s && exe) {
		__u32 off = dir_path(t, BPF_CORE_READ(exe, f_path.dentry), BPF_CORE_READ(exe, f_path.mnt), s->buf);
		bpf_probe_read_kernel_str(e->o.exe, sizeof(e->o.exe), s->buf + (off & (WF_PATH_MAX - 1)));
	}
	bpf_ringbuf_submit(e, 0);
}

/* The weight an inode is: its own entry, or its filesystem's when a root is a whole filesystem. */
static __always_inline struct wf_weight *weight_of(__u64 ino, __u32 dev, int passed_prefilter)
{
	struct wf_key k = { .ino = ino, .dev = dev };
	struct wf_weight *w = passed_prefilter ? bpf_map_lookup_elem(&weights, &k) : NULL;
	if (w || !whole_fs)
		return w;
	k.ino = 0;
	w = bpf_map_lookup_elem(&weights, &k);
	return w && (w->flags & WF_K_FS) ? w : NULL;
}

/* The process's entry, made at its first read so that the agent hears of it at once. */
static __always_inline struct wf_reader *reader_of(struct task_struct *t, __u32 id, __u64 start_ns, __u64 ino)
{
	struct wf_reader_key k = { .tgid = t->tgid, .id = id, .start_ns = start_ns, .ino = ino };
	struct wf_reader *r = bpf_map_lookup_elem(&readers, &k);
	if (r)
		return r;
	struct wf_reader fresh = {};
	fresh.first_ns = bpf_ktime_get_ns();
	fresh.cgroup_id = bpf_get_current_cgroup_id();
	fresh.uid = (__u32)bpf_get_current_uid_gid();
	fresh.ppid = BPF_CORE_READ(t, real_parent, tgid);
	bpf_probe_read_kernel_str(fresh.comm, sizeof(fresh.comm), &t->group_leader->comm);
	if (bpf_map_update_elem(&readers, &k, &fresh, BPF_NOEXIST) && !bpf_map_lookup_elem(&readers, &k)) {
		struct wf_lost *l = lost_slot();
		if (l)
			__sync_fetch_and_add(&l->readers, 1);
		return NULL;
	}
	announce(t, start_ns);
	return bpf_map_lookup_elem(&readers, &k);
}

/* Move what a slot holds into its owner's entry (its request in flight counted at its pages). The
 * exchanges are atomic: the exit of the slot's process on another CPU may empty it meanwhile. */
static __always_inline void flush(struct wf_slot *s)
{
	__u64 n = __sync_lock_test_and_set(&s->bytes, 0), c = __sync_lock_test_and_set(&s->calls, 0);
	if (!n && !c)
		return;
	struct wf_reader_key k = { .tgid = s->tgid, .id = s->id, .start_ns = s->start_ns, .ino = s->ino };
	struct wf_reader *r = bpf_map_lookup_elem(&readers, &k);
	if (r) {
		__sync_fetch_and_add(&r->bytes, n);
		__sync_fetch_and_add(&r->calls, c);
	} else {
		struct wf_lost *l = lost_slot();
		if (l)
			__sync_fetch_and_add(&l->readers, 1);
	}
}

/* Bytes of pages [from, last] of a file of `size` bytes. */
static __always_inline __u64 page_bytes(__u64 from, __u64 last, __s64 size)
{
	__u64 start = from << page_shift, end = (last + 1) << page_shift;
	if (size < 0)
		return 0;
	if (end > (__u64)size)
		end = (__u64)size;
	return end > start ? end - start : 0;
}

#if defined(__TARGET_ARCH_x86)
/* read, pread64, readv, preadv, preadv2, sendfile: the syscalls that add what they read to rchar */
#define COUNTS_RCHAR(nr) ((nr) == 0 || (nr) == 17 || (nr) == 19 || (nr) == 295 || (nr) == 327 || (nr) == 40)
#define SYSCALL_NR(r) ((r)->orig_ax) /* a trusted pointer: a plain load */
#elif defined(__TARGET_ARCH_arm64)
#define COUNTS_RCHAR(nr) ((nr) == 63 || (nr) == 67 || (nr) == 65 || (nr) == 69 || (nr) == 286 || (nr) == 71)
#define SYSCALL_NR(r) ((r)->syscallno)
#else
#define COUNTS_RCHAR(nr) 0
#define SYSCALL_NR(r) (-1L)
#endif

/* The thread's rchar (a plain load: `t` is the trusted current task); 0 without task I/O accounting. */
static __always_inline __u64 rchar_of(struct task_struct *t)
{
	if (bpf_core_field_exists(t->ioac))
		return t->ioac.rchar;
	return 0;
}

/* Whether the current syscall adds what it reads to rchar. Asked only when it matters: a syscall's
 * rchar corrects its count only when it read less than its pages, and finding the syscall costs
 * about as much as the rest of a read of a weight together (a helper call, the task's stack, its
 * pt_regs), so a thread reading whole pages in a loop is not asked again. A request is exact
 * (its count may go down to what rchar says) only when asked: the first request of a thread on
 * this CPU, and any request after one that read less than its pages; any other one that reads
 * less than its pages stays counted at its pages (never less than was read), and the next
 * request is asked. So a run of whole-page reads costs nothing here, a run of unaligned or short
 * reads is exact, and a syscall that does not count rchar (splice, io_uring) is never taken for
 * one that does: no mix of syscalls makes a count smaller than what was read. */
static __always_inline __u32 counts_rchar(struct task_struct *t)
{
	long nr = SYSCALL_NR((struct pt_regs *)bpf_task_pt_regs(t));
	return COUNTS_RCHAR(nr);
}

/* The slot's thread has moved on (another reader takes the slot, or another thread of its process):
 * its last request is settled now if its rchar says what it returned, else it stays counted at its
 * pages. rchar grew since the request began only once its syscall returned, and if the thread has
 * read more since, the difference is larger than the request's pages: never less than it read. The
 * task is the slot's, read under RCU (this program's): a thread that exits clears itself from every
 * slot first, and its task is freed a grace period later. */
static __always_inline void settle(struct wf_slot *s)
{
	struct task_struct *o = (struct task_struct *)s->task;
	if (!s->exact || !o || !s->pend)
		return;
	__u64 rchar = 0;
	if (bpf_core_field_exists(o->ioac))
		rchar = BPF_CORE_READ(o, ioac.rchar);
	__u64 done = rchar - s->rchar0;
	if (rchar != s->rchar0 && done < s->pend)
		__sync_fetch_and_sub(&s->bytes, s->pend - done);
	s->pend = 0;
}

/* The slot is this CPU's from here on: `t`'s process reading the weight `id`. What it held is
 * moved into its owner's entry first. Returns 0 if the process's entry cannot be made. */
static __always_inline int take_slot(struct wf_slot *s, struct task_struct *t, __u64 ino, __u32 dev, __u32 id,
				     __u64 start_ns)
{
	settle(s);
	flush(s);
	if (!reader_of(t, id, start_ns, ino))
		return 0;
	s->ino = ino;
	s->dev = dev;
	s->id = id;
	s->tgid = t->tgid;
	s->start_ns = start_ns;
	s->tid = 0;
	return 1;
}

/* Read requests are grouped by syscall: the thread's rchar grows when a read syscall returns, so
 * while it stays the same the requests belong to one syscall (the rest of a request larger than
 * one batch of folios, with the same last page; the chunks of a sendfile). A syscall counts as the
 * pages it asked for, clipped at the end of the file, until the thread's next one: then rchar says
 * what it really returned, and read, pread, readv and sendfile are counted exactly (a loop of
 * small reads, or of the same page again, counts what each read returned). Splice,
 * copy_file_range and io_uring do not add to rchar: they count each page once in a row of
 * requests (exact for a whole file; a small read elsewhere counts its page).
 *
 * This runs for every read from the page cache on the host, so the common cases are short: a file
 * that is not a weight stops at the prefilter (one array word); a thread reading on from the file
 * it read last on this CPU is recognised by the slot's `task` and `inode` (pointers it already has,
 * no task field, no superblock, no hash lookup) and costs plain adds on this CPU's own slot. Only
 * this CPU writes a slot's counts, but for the exit of its process's last thread elsewhere: then no
 * thread of that process can be adding to it. */
static __always_inline void count_read(struct address_space *mapping, __u64 a, __u64 b)
{
	struct inode *inode = mapping->host;
	if (!inode)
		return;
	__u64 ino = inode->i_ino;
	int maybe = maybe_weight(ino);
	if (!maybe && !whole_fs)
		return;
	__u32 zero = 0;
	struct wf_slot *s = bpf_map_lookup_elem(&slots, &zero);
	if (!s)
		return;
	struct task_struct *t = bpf_get_current_task_btf();
	__u64 rchar = rchar_of(t);
	if (s->task != (__u64)t || s->inode != (__u64)inode || s->ino != ino) {
		__u32 dev = inode->i_sb->s_dev;
		__u64 start_ns = t->group_leader->start_boottime;
		if (s->ino != ino || s->dev != dev || s->tgid != t->tgid || s->start_ns != start_ns) {
			struct wf_weight *w = weight_of(ino, dev, maybe);
			if (!w || !(w->flags & WF_K_FILE))
				return; /* not a weight: the prefilter's rare false positive, or another filesystem */
			if (!take_slot(s, t, ino, dev, w->id, start_ns))
				return;
		}
		if (s->tid != (__u32)t->pid) {
			/* another thread of the process */
			settle(s);
			s->tid = t->pid;
			s->a = s->b = NONE;
			s->pend = 0;
			s->exact = 0;
			s->ask = 1;
		}
		s->task = (__u64)t;
		s->inode = (__u64)inode;
	}
	if (rchar == s->rchar0 && s->a != NONE) {
		/* the same syscall, or a run of syscalls that do not count rchar */
		__u64 from = a;
		if (a >= s->a && a <= s->b)
			from = s->b + 1; /* pages counted already: the rest of a request, or the same page */
		if (b > s->b || a < s->a)
			s->b = b;
		s->a = a;
		if (from <= b) {
			/* an exact request's rchar may only ever correct its own syscall's pages: a read
			 * that failed (rchar unchanged) followed by a splice is not one syscall */
			if (s->exact)
				s->exact = counts_rchar(t);
			__u64 more = page_bytes(from, b, inode->i_size);
			s->pend += more;
			s->bytes += more;
		}
		return;
	}
	/* the thread's previous syscall has returned: what it read is known */
	__u32 ask = 0;
	if (rchar - s->rchar0 < s->pend) {
		if (s->exact)
			s->bytes -= s->pend - (rchar - s->rchar0);
		ask = 1;
	}
	__u64 pages = page_bytes(a, b, inode->i_size);
	s->a = a;
	s->b = b;
	s->rchar0 = rchar;
	s->exact = ask || s->ask ? counts_rchar(t) : 0;
	s->ask = ask;
	s->pend = pages;
	s->bytes += pages;
	s->calls++;
}

/* Pages mapped in at a fault, straight into the entry (faults are far rarer than reads). A large
 * folio mapped whole by a PMD shows no tracepoint, so this is a lower bound: that a process maps
 * a weight file, not how much of it (the agent reads /proc/PID/smaps for that). */
static __always_inline void count_mapped(struct address_space *mapping, __u64 a, __u64 b)
{
	struct inode *inode = mapping->host;
	if (!inode)
		return;
	__u64 ino = inode->i_ino;
	int maybe = maybe_weight(ino);
	if (!maybe && !whole_fs)
		return;
	struct wf_weight *w = weight_of(ino, inode->i_sb->s_dev, maybe);
	if (!w || !(w->flags & WF_K_FILE))
		return;
	struct task_struct *t = bpf_get_current_task_btf();
	struct wf_reader *r = reader_of(t, w->id, t->group_leader->start_boottime, ino);
	if (r)
		__sync_fetch_and_add(&r->mapped, page_bytes(a, b, inode->i_size));
}

SEC("tp_btf/mm_filemap_get_pages")
int BPF_PROG(wf_get_pages, struct address_space *mapping, unsigned long index, unsigned long last)
{
	count_read(mapping, index, last);
	return 0;
}

SEC("tp_btf/mm_filemap_map_pages")
int BPF_PROG(wf_map_pages, struct address_space *mapping, unsigned long start, unsigned long last)
{
	count_mapped(mapping, start, last);
	return 0;
}

SEC("tp_btf/mm_filemap_fault")
int BPF_PROG(wf_fault, struct address_space *mapping, unsigned long index)
{
	count_mapped(mapping, index, index);
	return 0;
}

/* A thread that exits settles its last request (its rchar is final) and is forgotten by every
 * CPU's slot (its task may be reused); a process that is gone leaves nothing behind in any slot. */
SEC("tp_btf/sched_process_exit")
int BPF_PROG(wf_exit, struct task_struct *task)
{
	__u32 tgid = task->tgid, tid = task->pid, zero = 0;
	__u64 start_ns = task->group_leader->start_boottime;
	int group_dead = BPF_CORE_READ(task, signal, live.counter) == 0;
	__u64 rchar = rchar_of(task);
	for (__u32 cpu = 0; cpu < 1024 && cpu < nr_cpus; cpu++) {
		struct wf_slot *s = bpf_map_lookup_percpu_elem(&slots, &zero, cpu);
		if (!s)
			continue;
		__sync_val_compare_and_swap(&s->task, (__u64)task, 0);
		if (s->tgid != tgid || s->start_ns != start_ns)
			continue;
		__u64 pend = s->pend;
		if (s->tid == tid && s->exact && rchar - s->rchar0 < pend &&
		    __sync_val_compare_and_swap(&s->pend, pend, 0) == pend)
			__sync_fetch_and_sub(&s->bytes, pend - (rchar - s->rchar0));
		if (group_dead)
			flush(s);
	}
	return 0;
}

/* -- new names ---------------------------------------------------------------------------- */

#if defined(__TARGET_ARCH_x86)
#define NR_LINK 86
#define NR_RENAME 82
#define NR_LINKAT 265
#define NR_RENAMEAT 264
#define NR_RENAMEAT2 316
#define SYSCALL_ARG2(r) BPF_CORE_READ(r, si)
#define SYSCALL_ARG3(r) BPF_CORE_READ(r, dx)
#define SYSCALL_ARG4(r) BPF_CORE_READ(r, r10)
#elif defined(__TARGET_ARCH_arm64)
#define NR_LINK -1
#define NR_RENAME -1
#define NR_LINKAT 37
#define NR_RENAMEAT 38
#define NR_RENAMEAT2 276
#define SYSCALL_ARG2(r) BPF_CORE_READ(r, regs[1])
#define SYSCALL_ARG3(r) BPF_CORE_READ(r, regs[2])
#define SYSCALL_ARG4(r) BPF_CORE_READ(r, regs[3])
#else
#define NR_LINK -1
#define NR_RENAME -1
#define NR_LINKAT -1
#define NR_RENAMEAT -1
#define NR_RENAMEAT2 -1
#define SYSCALL_ARG2(r) 0
#define SYSCALL_ARG3(r) 0
#define SYSCALL_ARG4(r) 0
#endif

static __always_inline struct file *fd_file(struct task_struct *t, int fd)
{
	struct fdtable *fdt = BPF_CORE_READ(t, files, fdt);
	if (fd < 0 || !fdt || (unsigned int)fd >= BPF_CORE_READ(fdt, max_fds))
		return NULL;
	struct file **fds = BPF_CORE_READ(fdt, fd);
	struct file *f = NULL;
	bpf_probe_read_kernel(&f, sizeof(f), &fds[fd & 0xFFFFF]);
	return f;
}

/* A directory's path as the process sees it (up to its root, across mounts), written at the
 * end of `buf`; returns where it starts. The walk stops after 48 names: a deeper path keeps
 * its last 48 names, which is as much as the event has room for anyway. */
static __always_inline __u32 dir_path(struct task_struct *t, struct dentry *d, struct vfsmount *vm, char *buf)
{
	__u64 mnt_off = bpf_core_field_offset(struct mount, mnt);
	struct mount *m = (struct mount *)((char *)vm - mnt_off);
	struct dentry *root_d = BPF_CORE_READ(t, fs, root.dentry);
	struct vfsmount *root_vm = BPF_CORE_READ(t, fs, root.mnt);
	__u32 off = WF_PATH_MAX;
	buf[WF_PATH_MAX] = 0;
	for (int i = 0; i < 48; i++) {
		if (d == root_d && vm == root_vm)
			break;
		struct dentry *mnt_root = BPF_CORE_READ(vm, mnt_root);
		struct dentry *parent = BPF_CORE_READ(d, d_parent);
		if (d == mnt_root || d == parent) {
			struct mount *up = BPF_CORE_READ(m, mnt_parent);
			if (up == m || d != mnt_root)
				break; /* the namespace's root, or a tree no longer attached */
			d = BPF_CORE_READ(m, mnt_mountpoint);
			m = up;
			vm = (struct vfsmount *)((char *)up + mnt_off);
			continue;
		}
		struct qstr q = {};
		BPF_CORE_READ_INTO(&q, d, d_name);
		__u32 len = q.len & (WF_NAME_MAX - 1);
		if (off <= len + 1)
			break;
		off = (off - len - 1) & (WF_PATH_MAX - 1);
		/* Bounded again at the call: clang may pass a copy of len made before the mask, and 6.12's
		 * verifier then sees an unbounded size ("R2 unbounded memory access"). */
		__u64 n = len;
		asm volatile("%[n] &= 255" : [n] "+r"(n));
		bpf_probe_read_kernel(buf + off + 1, n, q.name);
		buf[off] = '/';
		d = parent;
	}
	if (off == WF_PATH_MAX) {
		off = WF_PATH_MAX - 1;
		buf[off] = '/';
	}
	return off;
}

static __always_inline void relinked(struct inode *inode)
{
	__u64 ino = inode->i_ino;
	if (!maybe_weight(ino))
		return;
	struct wf_key k = { .ino = ino, .dev = inode->i_sb->s_dev };
	struct wf_weight *w = bpf_map_lookup_elem(&weights, &k);
	if (!w)
		return;
	struct task_struct *t = bpf_get_current_task_btf();
	struct pt_regs *regs = (struct pt_regs *)bpf_task_pt_regs(t);
	__s64 nr = SYSCALL_NR(regs);
	__u64 start_ns = t->group_leader->start_boottime;
	__u32 kind;
	const char *name;
	int dirfd = AT_FDCWD;
	if (nr == NR_LINK || nr == NR_RENAME) {
		kind = nr == NR_LINK ? WF_RL_LINK : WF_RL_RENAME;
		name = (const char *)SYSCALL_ARG2(regs);
	} else if (nr == NR_LINKAT || nr == NR_RENAMEAT || nr == NR_RENAMEAT2) {
		kind = nr == NR_LINKAT ? WF_RL_LINK : WF_RL_RENAME;
		name = (const char *)SYSCALL_ARG4(regs);
		dirfd = (int)SYSCALL_ARG3(regs);
	} else if (t->flags & 0x10 /* PF_IO_WORKER */) {
		kind = WF_RL_OTHER;
		name = NULL;
	} else {
		return; /* a write, chmod, chown, unlink...: no new name */
	}
	if (kind == WF_RL_LINK && !(w->flags & WF_K_FILE))
		return; /* a weight directory gaining an entry: the file linked has its own event */
	announce(t, start_ns); /* who it is (its executable, command line), before the event that names it */
	struct relink_event *ev = bpf_ringbuf_reserve(&events, sizeof(*ev), 0);
	if (!ev) {
		struct wf_lost *l = lost_slot();
		if (l)
			__sync_fetch_and_add(&l->events, 1);
		return;
	}
	ev->hdr.type = WF_EV_RELINK;
	struct wf_relink *e = &ev->r;
	e->tgid = t->tgid;
	e->pid = t->pid;
	e->uid = (__u32)bpf_get_current_uid_gid();
	e->ppid = BPF_CORE_READ(t, real_parent, tgid);
	e->start_ns = start_ns;
	e->cgroup_id = bpf_get_current_cgroup_id();
	e->ino = ino;
	e->dev = k.dev;
	e->id = w->id;
	e->kind = kind;
	e->dirfd = dirfd;
	e->mnt_ns = BPF_CORE_READ(t, nsproxy, mnt_ns, ns.inum);
	e->flags = w->flags;
	e->sysnr = nr;
	bpf_probe_read_kernel_str(e->comm, sizeof(e->comm), &t->group_leader->comm);
	e->name[0] = 0;
	e->dir[0] = 0;
	if (name)
		bpf_probe_read_user_str(e->name, sizeof(e->name), name);
	if (name && e->name[0] != '/') {
		__u32 zero = 0;
		struct scratch *s = bpf_map_lookup_elem(&scratch, &zero);
		struct dentry *d = NULL;
		struct vfsmount *vm = NULL;
		if (dirfd == AT_FDCWD) {
			d = BPF_CORE_READ(t, fs, pwd.dentry);
			vm = BPF_CORE_READ(t, fs, pwd.mnt);
		} else {
			struct file *f = fd_file(t, dirfd);
			if (f) {
				d = BPF_CORE_READ(f, f_path.dentry);
				vm = BPF_CORE_READ(f, f_path.mnt);
			}
		}
		if (s && d && vm) {
			__u32 off = dir_path(t, d, vm, s->buf);
			bpf_probe_read_kernel_str(e->dir, sizeof(e->dir), s->buf + (off & (WF_PATH_MAX - 1)));
		}
	}
	bpf_ringbuf_submit(ev, 0);
}

SEC("tp_btf/ctime_ns_xchg")
int BPF_PROG(wf_ctime_xchg, struct inode *inode)
{
	relinked(inode);
	return 0;
}

SEC("tp_btf/ctime_xchg_skip")
int BPF_PROG(wf_ctime_skip, struct inode *inode)
{
	relinked(inode);
	return 0;
}

SEC("tp_btf/inode_set_ctime_to_ts")
int BPF_PROG(wf_ctime_set, struct inode *inode)
{
	relinked(inode);
	return 0;
}
