/* SPDX-License-Identifier: (Apache-2.0 OR BSD-2-Clause OR GPL-2.0-only) */
/* Records shared by the file-read programs, their loader and the agent
 * (weightwarden/agent/files/ebpf/wire.py mirrors these layouts; every struct is padded by hand). */
#ifndef WF_H
#define WF_H

#define WF_WEIGHTS_MAX 131072  /* weight files and directories the kernel knows by inode */
#define WF_READERS_MAX 65536   /* (process, weight file) pairs counted at once */
#define WF_BITS_WORDS 8192     /* the prefilter: 512 Kibit, one bit per hash of an inode number */
#define WF_PATH_MAX 4096
#define WF_NAME_MAX 256

#define WF_K_FILE 1            /* a weight file (or a staged copy, a canary): its reads are counted */
#define WF_K_DIR 2             /* a weight directory: only its moves are reported */
#define WF_K_FS 4              /* with ino 0: every file of this filesystem is a weight (a root that is a
                                  whole filesystem); readers are then told apart by their inode */
#define WF_ARGS_MAX 512

#define WF_EV_RELINK 1         /* first byte of each ring buffer record: what it is */
#define WF_EV_OPENER 2

#define WF_RL_LINK 1           /* wf_relink.kind: a hard link was made (link, linkat) */
#define WF_RL_RENAME 2         /* a rename or move (rename, renameat, renameat2) */
#define WF_RL_OTHER 3          /* a new name made outside a syscall we know (io_uring): no name */

struct wf_key {
	__u64 ino;
	__u32 dev;           /* the kernel's dev_t: major << 20 | minor */
	__u32 pad;
};                           /* 16 bytes */

struct wf_weight {
	__u32 id;            /* the agent's number for the file (never 0) */
	__u32 flags;         /* WF_K_* */
};                           /* 8 bytes */

struct wf_reader_key {
	__u32 tgid;
	__u32 id;
	__u64 start_ns;      /* the process's start (boot ns): with tgid, one process */
	__u64 ino;           /* the file (its id may be a whole filesystem's) */
};                           /* 24 bytes */

struct wf_reader {
	__u64 bytes;         /* read through the page cache: whole pages, clipped at the file's end */
	__u64 calls;         /* read requests counted */
	__u64 mapped;        /* bytes mapped into the process by page faults (mmap) */
	__u64 first_ns;      /* CLOCK_MONOTONIC of the first count (the agent sees the rest change) */
	__u64 cgroup_id;
	__u32 uid;
	__u32 ppid;
	char comm[16];
};                           /* 64 bytes */

/* What one CPU is counting now (files.bpf.c's `slots`): one (process, file) at a time. The fields a
 * read of the same file by the same thread touches come first. */
struct wf_slot {
	__u64 task;          /* the thread counting now: its task's address, to know it again cheaply (0: none) */
	__u64 inode;         /* the file's inode, its address: the same */
	__u64 ino;
	__u64 rchar0;        /* the thread's rchar when its request began */
	__u64 a;             /* that request's first and last page */
	__u64 b;
	__u64 pend;          /* the request's pages, clipped at the end of the file (in `bytes` until known) */
	__u64 bytes;         /* counted, not yet in `readers` */
	__u64 calls;
	__u64 start_ns;
	__u32 dev;
	__u32 id;
	__u32 tgid;
	__u32 tid;           /* the thread whose request a..b is */
	__u32 exact;         /* the request came from a syscall that counts its bytes in rchar (asked) */
	__u32 ask;           /* the last request read less than its pages: ask the next one's syscall */
};                           /* 104 bytes */

struct wf_pending {          /* a slot as the loader reports it */
	struct wf_reader_key key;
	__u64 bytes;
	__u64 calls;
};                           /* 40 bytes */

struct wf_lost {
	__u64 readers;       /* counts dropped: the readers map was full */
	__u64 events;        /* relink events dropped: the ring buffer was full */
	__u64 storage;       /* reads not counted: no per-thread storage (memory pressure) */
	__u64 pad;
};                           /* 32 bytes */

struct wf_opener {           /* a process's first read of any weight: who it is, while it runs */
	__u32 tgid;
	__u32 uid;
	__u64 start_ns;
	__u64 cgroup_id;
	__u32 ppid;
	__u32 mnt_ns;
	char comm[16];
	char args[WF_ARGS_MAX];  /* its command line (NUL-separated, cut), read from its own memory */
	char exe[WF_PATH_MAX];   /* its executable, as the process sees it */
};                           /* 4656 bytes */

struct wf_relink {
	__u32 tgid;
	__u32 pid;
	__u32 uid;
	__u32 ppid;
	__u64 start_ns;
	__u64 cgroup_id;
	__u64 ino;
	__u32 dev;
	__u32 id;
	__u32 kind;          /* WF_RL_* */
	__s32 dirfd;         /* the directory a relative name is in (-100: the working directory) */
	__u32 mnt_ns;        /* the process's mount namespace (inode number) */
	__u32 flags;         /* the weight's WF_K_* */
	__s64 sysnr;
	char comm[16];
	char name[WF_NAME_MAX];  /* the new name as the syscall was given it */
	char dir[WF_PATH_MAX];   /* a relative name's directory, as the process sees it ("" if absolute) */
};                           /* 4440 bytes */

struct wf_event_hdr {         /* each ring buffer record starts with it */
	__u32 type;          /* WF_EV_* */
	__u32 pad;
};

#endif
