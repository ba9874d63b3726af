/* SPDX-License-Identifier: (Apache-2.0 OR BSD-2-Clause OR GPL-2.0-only) */
/* Records shared by the BPF programs, the loader and the agent (weightwarden/agent/attribution/ebpf/wire.py
 * mirrors these layouts; every struct is padded by hand so all three agree). */
#ifndef WW_H
#define WW_H

#define WW_FLOW_MAX 131072     /* flow entries per generation (one socket x destination each) */
#define WW_UNIX_MAX 16384      /* unix (sender, peer) pairs per generation */
#define WW_DNS_MAX 1024        /* bytes of a DNS answer copied to user space */

#define WW_OWNED 1             /* owner filled from a process context */
#define WW_ACCEPTED 2          /* a TCP connection the peer opened (accept()) */

#define WW_F_LOCAL 1           /* routed over loopback: a transfer on this host */
#define WW_F_RAW 2             /* a SOCK_RAW socket */
#define WW_F_DECIDED 4         /* the kernel knew the host's addresses when it made the entry ... */
#define WW_F_ONHOST 8          /* ... and its destination is one of them (kept per socket) */

#define WW_MERGED (1ULL << 63) /* ww_flow_key.cookie of a flow merging one process's TCP sockets */
#define WW_LOCAL_MAX 4096      /* addresses of the host (see local_addrs) */

#define WW_EV_OWNER 1
#define WW_EV_DNS 2

#define WW_RAW_MAX 4096        /* packet-socket (socket, writer) pairs per generation */
#define WW_RAW_BYPASS 1        /* PACKET_QDISC_BYPASS (AF_XDP always): no qdisc, netfilter or cgroup program */
#define WW_RAW_KILLED 2        /* the policy says kill: SIGKILL sent from the send path */
#define WW_RAW_DENIED 4        /* refused before it sent (bpf LSM): nothing left */
#define WW_RAW_ALLOWED 8       /* its executable is allowlisted */
#define WW_RAW_BOUND 16        /* ifindex is the device the socket is bound to (else unknown: 0) */

#define WW_RAW_ALERT 0         /* raw_action: what happens to a packet-socket sender not allowlisted */
#define WW_RAW_KILL 1

/* The programs, by bit (the loader's table and the test hook that makes the verifier refuse one). */
enum ww_prog {
	WW_P_EGRESS = 0,
	WW_P_SOCK_CREATE,
	WW_P_SOCKOPS,
	WW_P_INGRESS,
	WW_P_SEND,
	WW_P_RECV,
	WW_P_PACKET,
	WW_P_XDP,
	WW_P_LSM,
	WW_P_COUNT,
};

struct ww_owner {
	__u32 tgid;
	__u32 ppid;
	__u32 uid;
	__u32 flags;
	__u64 start_ns;      /* group leader's start_boottime: with tgid, names one process */
	__u64 cgroup_id;     /* cgroup v2 id of the writer */
	__u64 netns;         /* network namespace cookie */
	__u64 exe_ino;
	__u32 exe_dev;
	__u32 route;         /* on a TCP socket: (local_epoch + 1) << 1 | merged, decided once per address set */
	__u64 counted;       /* on a socket: (generation + 1) << 32 | tgid of the merged flow that last counted it */
	char comm[16];
};                           /* 80 bytes */

struct ww_flow_key {
	__u64 cookie;        /* socket cookie */
	__u8 daddr[16];
	__u16 dport;
	__u8 proto;          /* IP protocol number */
	__u8 family;         /* 4 or 6 */
	__u32 pad;
};                           /* 32 bytes */

struct ww_flow {
	struct ww_owner owner;
	__u8 saddr[16];
	__u16 sport;
	__u16 flags;
	__u32 sockets;       /* sockets counted in this entry (merged in the kernel or by the loader) */
	__u64 bytes;         /* transport payload */
	__u64 packets;
	__u64 first_ns;      /* CLOCK_MONOTONIC */
	__u64 last_ns;
};                           /* 136 bytes */

struct ww_unix_key {
	__u32 tgid;
	__u32 pad;
	__u64 start_ns;
	__u64 peer_ino;      /* inode of the receiving socket (0: unconnected datagram) */
};                           /* 24 bytes */

struct ww_unix {
	struct ww_owner owner;
	__u64 bytes;
	__u64 first_ns;
	__u64 last_ns;
	struct ww_owner peer;        /* the receiving process, once it has read (tgid 0: not yet known) */
};                           /* 184 bytes */

struct ww_local_key {
	__u8 family;
	__u8 pad[3];
	__u8 addr[16];
};                           /* 20 bytes */

/* One packet socket as one process wrote to it (AF_PACKET, AF_XDP). */
struct ww_raw_key {
	__u64 cookie;        /* socket cookie */
	__u32 tgid;
	__u32 pad;
};                           /* 16 bytes */

struct ww_raw {
	struct ww_owner owner;
	__u64 ino;           /* the socket's inode (as /proc/PID/fd and /proc/net/packet name it) */
	__u32 ifindex;       /* in the socket's network namespace (owner.netns) */
	__u16 family;        /* 17 AF_PACKET, 44 AF_XDP */
	__u16 type;          /* SOCK_RAW 3, SOCK_DGRAM 2 */
	__u16 protocol;      /* ethertype bound, host order */
	__u16 pad;
	__u32 flags;         /* WW_RAW_* */
	__u64 bytes;         /* what the sends handed to the device (SOCK_RAW: whole frames) */
	__u64 packets;       /* sends (one frame each, except through a TX ring) */
	__u64 first_ns;
	__u64 last_ns;
};                           /* 136 bytes */

/* What the programs added in one generation, summed over CPUs: the entries drained must add up to it
 * (a map rewritten behind the loader's back does not), and the header bytes give the overhead per packet. */
struct ww_totals {
	__u64 counted;       /* bytes added to flows, unix and raw entries, or to lost */
	__u64 hdr_bytes;     /* IP and transport header bytes of every packet cgroup_skb/egress saw */
	__u64 hdr_packets;
	__u64 pad;
};                           /* 32 bytes */

/* An allowlisted executable (raw_sockets.allow), as the kernel names files. */
struct ww_exe_key {
	__u64 ino;
	__u32 dev;           /* the kernel's dev_t: major << 20 | minor */
	__u32 pad;
};                           /* 16 bytes */

struct ww_lost {
	__u64 bytes;         /* payload not recorded because a map was full */
	__u64 packets;
	__u64 events;        /* ring buffer records dropped (full) */
	__u64 dns_limited;   /* DNS answers not copied (rate limit) */
};

struct ww_event_hdr {
	__u32 type;
	__u32 len;
};

struct ww_owner_event {
	struct ww_event_hdr hdr;
	struct ww_owner owner;
};

struct ww_dns_event {
	struct ww_event_hdr hdr;
	__u8 data[WW_DNS_MAX];
};

#endif
