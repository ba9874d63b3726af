// SPDX-License-Identifier: (BSD-2-Clause OR GPL-2.0-only)
/* Egress attribution in the kernel, for every network namespace at once.
 *
 * Who owns a socket is written into socket-local storage from process context
 * (cgroup/sock_create, and the sock_send_length tracepoint on every write), so
 * the per-packet program never has to ask user space: cgroup_skb/egress reads
 * the owner, the 5-tuple and the payload length of each packet and adds them to
 * a per-(socket, destination) entry. Accepted sockets inherit their listener's
 * storage (BPF_F_CLONE), are flagged by sock_ops, and follow their first writer.
 *
 * Entries live in one of two maps, chosen by `gen`. The loader flips `gen`,
 * waits for every running program to finish (an update of an ARRAY_OF_MAPS
 * returns after synchronize_rcu), then reads and empties the old map, which has
 * no writer left: each byte is reported exactly once, with no lock on the
 * packet path.
 *
 * The tracepoint program sees every task; it acts only for tasks under the
 * cgroup the loader was given (`scope`), as the cgroup programs do. (fentry and
 * kprobes would do too, but kernels that forbid them exist: this one does.)
 *
 * Only ww_egress and ww_sock_create are essential. Every other program is optional: the loader
 * loads it if the verifier accepts it and says which capability is gone if not. Where kernels
 * differ in a field or type, CO-RE checks (bpf_core_field_exists, bpf_core_type_exists,
 * bpf_core_enum_value_exists) pick the code path when the object is loaded.
 *
 * Packet sockets (AF_PACKET, AF_XDP) skip the transport layer, and with PACKET_QDISC_BYPASS every
 * qdisc, netfilter hook and cgroup program too (dev_direct_xmit is their whole path): ww_packet
 * credits them from the send itself (sock_send_length fires for every family), and may kill a
 * sender the policy does not allow.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>
#include "ww.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

#define AF_UNIX 1
#define AF_INET 2
#define AF_INET6 10
#define AF_PACKET 17
#define AF_XDP 44
#define SIGKILL 9
#define EPERM 1
#define ETH_P_IP 0x0800
#define ETH_P_IPV6 0x86DD
#define SOCK_RAW 3
#define LOOPBACK_IFINDEX 1
#define PROTO_ICMPV6 58

/* .bss, pinned with the maps: an agent restarted later carries on with the same generation. */
__u32 gen = 0;                          /* written by the loader: +1 each drain, the map is gen & 1 */
__u32 merge_ready = 0;                  /* the loader knows the host's own addresses (local_addrs) */
__u32 local_epoch = 0;                  /* +1 each time the loader changes local_addrs */
__u32 active = 0;                       /* which load's tracepoint programs count (see my_epoch) */
__u32 raw_action = WW_RAW_ALERT;        /* raw_sockets.action for senders not allowlisted */
volatile const __u32 scope_is_root = 0; /* the scope is the whole hierarchy: every task is in it */
volatile const __u64 dns_per_sec = 500; /* per CPU; a flood of answers costs names, never bytes */
/* A restarted loader attaches its tracepoint programs beside the old ones, then sets `active` to its
 * own epoch: from that store on only the new ones count, so nothing is counted twice or missed. */
volatile const __u32 my_epoch = 1;
/* Test hook (WEIGHTWARDEN_BPF_REFUSE): a program whose bit is set carries an access the verifier
 * refuses, so a real refusal, with the verifier's own words, can be produced on any kernel. The
 * value is known when the object is verified (read-only data), so with the bit clear the branch is
 * dead code and costs nothing. */
volatile const __u32 refuse = 0;
/* Kernels before PACKET_SOCK_QDISC_BYPASS became a flag keep po->xmit: this is packet_direct_xmit's
 * address there (from /proc/kallsyms), or 0. */
volatile const __u64 direct_xmit_addr = 0;

#define WW_REFUSE(bit) \
	do { \
		if (refuse & (1u << (bit))) \
			asm volatile("r1 = 0; r0 = *(u64 *)(r1 + 0);" ::: "r0", "r1"); \
	} while (0)
/* Whether cgroup/sock_create may use task storage: 6.1 and 6.12 refuse bpf_task_storage_get in cgroup
 * socket programs (tests/kernels/), 6.18 allows it. The loader probes the kernel; the verifier never
 * looks at the branch a constant rules out, so the one object loads on both. */
volatile const __u32 sock_create_task_storage = 0;

struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC | BPF_F_CLONE);
	__type(key, int);
	__type(value, struct ww_owner);
} owners SEC(".maps");

#define FLOW_MAP(name) \
	struct { \
		__uint(type, BPF_MAP_TYPE_HASH); \
		__uint(max_entries, WW_FLOW_MAX); \
		__uint(map_flags, BPF_F_NO_PREALLOC); \
		__type(key, struct ww_flow_key); \
		__type(value, struct ww_flow); \
	} name SEC(".maps")
FLOW_MAP(flows0);
FLOW_MAP(flows1);

#define UNIX_MAP(name) \
	struct { \
		__uint(type, BPF_MAP_TYPE_HASH); \
		__uint(max_entries, WW_UNIX_MAX); \
		__uint(map_flags, BPF_F_NO_PREALLOC); \
		__type(key, struct ww_unix_key); \
		__type(value, struct ww_unix); \
	} name SEC(".maps")
UNIX_MAP(unix0);
UNIX_MAP(unix1);

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, struct ww_lost);
} lost SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, struct ww_totals);
} totals SEC(".maps");

#define RAW_MAP(name) \
	struct { \
		__uint(type, BPF_MAP_TYPE_HASH); \
		__uint(max_entries, WW_RAW_MAX); \
		__uint(map_flags, BPF_F_NO_PREALLOC); \
		__type(key, struct ww_raw_key); \
		__type(value, struct ww_raw); \
	} name SEC(".maps")
RAW_MAP(raw0);
RAW_MAP(raw1);

/* Executables allowed to send on packet sockets (raw_sockets.allow), by file. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, struct ww_exe_key);
	__type(value, __u8);
} raw_allow SEC(".maps");

/* The host's own addresses, as the agent sees them: flows to them stay on the host. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, WW_LOCAL_MAX);
	__type(key, struct ww_local_key);
	__type(value, __u8);
} local_addrs SEC(".maps");

struct dns_bucket {
	__u64 window_ns;
	__u64 used;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct dns_bucket);
} dns_rate SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 20);
} events SEC(".maps");

/* Processes already announced to user space (tgid -> start), so it can read /proc
 * for a new sender while it still lives, once per process. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 32768);
	__type(key, __u32);
	__type(value, __u64);
} announced SEC(".maps");

/* Who last read each unix socket, by the socket's inode. A writer reaches its peer only through
 * u->peer, an untrusted pointer on newer kernels (6.18 refuses it to bpf_sk_storage_get), so the
 * reader is recorded here from the trusted context of its own read and looked up by inode. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, struct ww_owner);
} unix_readers SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_CGROUP_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} scope SEC(".maps");

/* Updating this outer map waits for running programs (synchronize_rcu): the loader's fence. */
struct sync_inner_t {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} sync_inner SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__uint(max_entries, 1);
	__type(key, __u32);
	__array(values, struct sync_inner_t);
} sync_outer SEC(".maps") = {
	.values = { &sync_inner },
};

static __always_inline struct ww_lost *lost_slot(__u32 g)
{
	__u32 k = g & 1;
	return bpf_map_lookup_elem(&lost, &k);
}

static __always_inline struct ww_totals *totals_slot(__u32 g)
{
	__u32 k = g & 1;
	return bpf_map_lookup_elem(&totals, &k);
}

/* Atomic although per CPU: a softirq's program may interrupt a process context's on the same CPU,
 * and the drain compares this sum with the entries to the byte. */
static __always_inline void counted(__u32 g, __u64 bytes)
{
	struct ww_totals *t = totals_slot(g);
	if (t)
		__sync_fetch_and_add(&t->counted, bytes);
}

static __always_inline int in_scope(void)
{
	return scope_is_root || bpf_current_task_under_cgroup(&scope, 0) == 1;
}

static __always_inline void announce(const struct ww_owner *o)
{
	__u32 tgid = o->tgid;
	__u64 *seen = bpf_map_lookup_elem(&announced, &tgid);
	if (seen && *seen == o->start_ns)
		return;
	__u64 start = o->start_ns;
	bpf_map_update_elem(&announced, &tgid, &start, BPF_ANY);
	struct ww_owner_event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		struct ww_lost *l = lost_slot(gen);
		if (l)
			l->events++;
		return;
	}
	e->hdr.type = WW_EV_OWNER;
	e->hdr.len = sizeof(e->owner);
	__builtin_memcpy(&e->owner, o, sizeof(*o));
	bpf_ringbuf_submit(e, 0);
}

/* What a process's sockets say about it, kept on the process (its group leader) so that a socket
 * costs a few comparisons rather than a walk through task, mm and file: rebuilt when it may have
 * changed (exec: a new mm; a move to another cgroup; new credentials; a new parent). */
struct proc_owner {
	__u32 tgid;
	__u32 ppid;
	__u32 uid;
	__u32 exe_dev;
	__u64 start_ns;
	__u64 cgroup_id;
	__u64 exe_ino;
	__u64 mm;
	__u64 parent;
	char comm[16];
};

struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct proc_owner);
} procs SEC(".maps");

/* The current process as the owner (process context only); cached per process where `cached`. */
static __always_inline void fill_owner_cached(struct ww_owner *o, int cached)
{
	struct task_struct *t = bpf_get_current_task_btf();
	struct task_struct *leader = t->group_leader;
	__u64 cgroup_id = bpf_get_current_cgroup_id();
	__u32 uid = (__u32)bpf_get_current_uid_gid();
	__u64 mm = (__u64)t->mm;
	__u64 parent = (__u64)t->real_parent;
	struct proc_owner *p = cached ? bpf_task_storage_get(&procs, leader, 0, BPF_LOCAL_STORAGE_GET_F_CREATE) : 0;
	struct proc_owner fresh = {};
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	/* tgid too: an entry rewritten from user space (bpf_map_update_elem with a pidfd) must not name
	 * another process for long */
	int stale = !p || p->tgid != tgid || p->mm != mm || p->parent != parent || p->cgroup_id != cgroup_id
		    || p->uid != uid;
	if (stale) {
		if (!p)
			p = &fresh; /* an exiting leader has no storage: described in full each time */
		p->tgid = tgid;
		p->uid = uid;
		p->ppid = BPF_CORE_READ(t, real_parent, tgid);
		p->start_ns = BPF_CORE_READ(leader, start_boottime);
		p->cgroup_id = cgroup_id;
		p->exe_ino = BPF_CORE_READ(t, mm, exe_file, f_inode, i_ino);
		p->exe_dev = BPF_CORE_READ(t, mm, exe_file, f_inode, i_sb, s_dev);
		p->mm = mm;
		p->parent = parent;
		bpf_probe_read_kernel_str(p->comm, sizeof(p->comm), &leader->comm);
	}
	o->tgid = p->tgid;
	o->uid = p->uid;
	o->ppid = p->ppid;
	o->start_ns = p->start_ns;
	o->cgroup_id = p->cgroup_id;
	o->exe_ino = p->exe_ino;
	o->exe_dev = p->exe_dev;
	__builtin_memcpy(o->comm, p->comm, sizeof(o->comm));
	o->flags |= WW_OWNED;
	if (stale)
		announce(o);
}

static __always_inline void fill_owner(struct ww_owner *o)
{
	fill_owner_cached(o, 1);
}

/* A socket opened by a process under the scope cgroup (cgroup programs see only those). */
SEC("cgroup/sock_create")
int ww_sock_create(struct bpf_sock *ctx)
{
	WW_REFUSE(WW_P_SOCK_CREATE);
	if (ctx->family != AF_INET && ctx->family != AF_INET6)
		return 1;
	struct ww_owner *o = bpf_sk_storage_get(&owners, ctx, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (o) {
		o->netns = bpf_get_netns_cookie(ctx);
		fill_owner_cached(o, sock_create_task_storage);
	}
	return 1;
}

/* A connection the peer opened (accept side): flagged, and owned by its listener's
 * process until a process writes to it. */
SEC("sockops")
int ww_sockops(struct bpf_sock_ops *skops)
{
	WW_REFUSE(WW_P_SOCKOPS);
	if (skops->op != BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB)
		return 1;
	struct bpf_sock *sk = skops->sk;
	if (!sk)
		return 1;
	struct ww_owner *o = bpf_sk_storage_get(&owners, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (o)
		o->flags |= WW_ACCEPTED;
	return 1;
}

static __always_inline void unix_account(struct sock *sk, int sent);

/* The inode of a socket's file (a struct socket is the first half of its socket_alloc). */
static __always_inline __u64 sock_ino(struct sock *sk)
{
	struct socket_alloc *sa = (struct socket_alloc *)BPF_CORE_READ(sk, sk_socket);
	return sa ? BPF_CORE_READ(sa, vfs_inode.i_ino) : 0;
}

/* struct net's cookie is a field from 5.14; older kernels leave the socket's namespace unnamed here
 * (cgroup/sock_create names it with the helper for every inet socket anyway). */
struct net___ww {
	__u64 net_cookie;
} __attribute__((preserve_access_index));

static __always_inline __u64 net_cookie(struct sock *sk)
{
	if (!bpf_core_field_exists(struct net___ww, net_cookie))
		return 0;
	struct net___ww *net = (struct net___ww *)BPF_CORE_READ(sk, __sk_common.skc_net.net);
	return net ? BPF_CORE_READ(net, net_cookie) : 0;
}

/* Every completed write to a socket (send, write, sendfile and splice, io_uring), in the
 * writer's context: inet sockets are credited to the process that writes them (a socket
 * passed on or inherited follows its writer); unix sockets are counted as local transfers. */
SEC("tp_btf/sock_send_length")
int BPF_PROG(ww_send, struct sock *sk, int ret, int flags)
{
	WW_REFUSE(WW_P_SEND);
	if (!sk || ret <= 0 || active != my_epoch || !in_scope())
		return 0;
	__u16 family = sk->__sk_common.skc_family;
	if (family == AF_UNIX) {
		unix_account(sk, ret);
		return 0;
	}
	if (family != AF_INET && family != AF_INET6)
		return 0;
	struct ww_owner *o = bpf_sk_storage_get(&owners, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (!o)
		return 0;
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	if ((o->flags & WW_OWNED) && o->tgid == tgid)
		return 0;
	if (!o->netns)
		o->netns = net_cookie(sk);
	fill_owner(o);
	return 0;
}

struct ip4 {
	__u8 vihl;
	__u8 tos;
	__u16 tot_len;
	__u16 id;
	__u16 frag;
	__u8 ttl;
	__u8 protocol;
	__u16 check;
	__u8 saddr[4];
	__u8 daddr[4];
};

struct ip6 {
	__u32 vtcfl;
	__u16 payload_len;
	__u8 nexthdr;
	__u8 hop_limit;
	__u8 saddr[16];
	__u8 daddr[16];
};

struct l4ports {
	__u16 sport;
	__u16 dport;
	__u32 seq;
	__u32 ack;
	__u8 doff_res;
	__u8 flags;
};

struct pkt {
	struct ww_flow_key key;
	__u8 saddr[16];
	__u16 sport;
	__u32 hdr;
	__u32 l4;
};

/* `len` bytes at `off` from the network header: read in place when they are in the packet's linear
 * part (they nearly always are, and that is cheaper), copied out by the helper when they are not. */
static __always_inline int load(struct __sk_buff *skb, __u32 off, void *to, __u32 len)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	off &= 0x3f;
	if (data + off + len <= end) {
		__builtin_memcpy(to, data + off, len);
		return 0;
	}
	return bpf_skb_load_bytes(skb, off, to, len);
}

/* The IP and transport headers of an skb whose data starts at the network header. */
static __always_inline int parse(struct __sk_buff *skb, struct pkt *p)
{
	__u8 proto;
	if (skb->protocol == bpf_htons(ETH_P_IP)) {
		struct ip4 ip;
		if (load(skb, 0, &ip, sizeof(ip)))
			return -1;
		p->hdr = (ip.vihl & 0x0f) * 4;
		proto = ip.protocol;
		p->key.family = 4;
		__builtin_memcpy(p->key.daddr, ip.daddr, 4);
		__builtin_memcpy(p->saddr, ip.saddr, 4);
	} else if (skb->protocol == bpf_htons(ETH_P_IPV6)) {
		struct ip6 ip;
		if (load(skb, 0, &ip, sizeof(ip)))
			return -1;
		p->hdr = sizeof(ip);
		proto = ip.nexthdr;
		p->key.family = 6;
		__builtin_memcpy(p->key.daddr, ip.daddr, 16);
		__builtin_memcpy(p->saddr, ip.saddr, 16);
	} else {
		return -1;
	}
	p->key.proto = proto;
	if (proto == IPPROTO_TCP) {
		struct l4ports l4;
		if (load(skb, p->hdr, &l4, sizeof(l4)))
			return -1;
		p->l4 = (l4.doff_res >> 4) * 4;
		p->sport = bpf_ntohs(l4.sport);
		p->key.dport = bpf_ntohs(l4.dport);
	} else if (proto == IPPROTO_UDP) {
		__u16 ports[2];
		if (load(skb, p->hdr, ports, sizeof(ports)))
			return -1;
		p->l4 = 8;
		p->sport = bpf_ntohs(ports[0]);
		p->key.dport = bpf_ntohs(ports[1]);
	} else if (proto == IPPROTO_ICMP || proto == PROTO_ICMPV6) {
		p->l4 = 8; /* type, code, checksum, identifier, sequence */
	} else {
		p->l4 = 0;
	}
	return 0;
}

/* Whether a destination is this host: loopback, unspecified, or one of its addresses (the same
 * rule as the agent's is_egress_destination, weightwarden/agent/kernel/interfaces.py). */
static __always_inline int on_host(const struct ww_flow_key *k)
{
	const __u8 *d = k->daddr;
	if (k->family == 4) {
		if (d[0] == 127 || (d[0] | d[1] | d[2] | d[3]) == 0)
			return 1;
	} else {
		__u64 hi, lo;
		__builtin_memcpy(&hi, d, 8);
		__builtin_memcpy(&lo, d + 8, 8);
		if ((hi | lo) == 0)
			return 1;
		if (hi == 0 && d[8] == 0 && d[9] == 0 && d[10] == 0xff && d[11] == 0xff && d[12] == 127)
			return 1;
	}
	struct ww_local_key lk = {};
	lk.family = k->family;
	__builtin_memcpy(lk.addr, d, 16);
	return bpf_map_lookup_elem(&local_addrs, &lk) != 0;
}

/* Whether a TCP socket's flow merges: decided once per socket (its destination never changes)
 * and again only when the host's addresses do. */
static __always_inline int merges(struct pkt *p, struct ww_owner *o)
{
	__u32 epoch = local_epoch + 1;
	if (o && o->route >> 1 == epoch)
		return o->route & 1;
	int merged = !on_host(&p->key);
	if (o)
		o->route = epoch << 1 | merged;
	return merged;
}

/* A TCP socket has one destination for life, so the sockets one process opens to one remote
 * destination share one entry, which counts them: a burst of short connections costs a lookup
 * each rather than an entry each. Flows that stay on the host keep one entry per socket (their
 * ports name the process at the other end), as do UDP, ICMP and raw sockets. */
static __always_inline __u32 merge_key(struct pkt *p, struct ww_owner *o, __u32 g)
{
	__u32 tgid = o && (o->flags & WW_OWNED) ? o->tgid : 0;
	p->key.cookie = WW_MERGED | (__u64)tgid << 8 | (o ? o->flags & WW_ACCEPTED : 0);
	if (!o)
		return 0;
	__u64 want = (__u64)(g + 1) << 32 | tgid, seen = o->counted;
	if (seen == want)
		return 0;
	if (__sync_val_compare_and_swap(&o->counted, seen, want) != seen)
		return 0; /* another CPU counted it just now */
	return 1;
}

static __always_inline void account(void *map, struct pkt *p, struct ww_owner *o, __u16 flags,
				    __u64 payload, __u64 now, __u32 g, __u32 sockets, struct ww_totals *t)
{
	if (t)
		__sync_fetch_and_add(&t->counted, payload);
	struct ww_flow *f = bpf_map_lookup_elem(map, &p->key);
	if (!f) {
		struct ww_flow init = {};
		if (o)
			__builtin_memcpy(&init.owner, o, sizeof(*o));
		__builtin_memcpy(init.saddr, p->saddr, 16);
		init.sport = p->sport;
		/* Where it goes, decided once per entry while the host's addresses are known: the loader
		 * merges the entries of one process to one remote destination, never those on the host. */
		if (!(flags & (WW_F_DECIDED | WW_F_LOCAL)) && merge_ready)
			flags |= WW_F_DECIDED | (on_host(&p->key) ? WW_F_ONHOST : 0);
		init.flags = flags;
		init.first_ns = now;
		init.last_ns = now;
		init.bytes = payload;
		init.packets = 1;
		init.sockets = sockets;
		if (bpf_map_update_elem(map, &p->key, &init, BPF_NOEXIST) == 0)
			return;
		f = bpf_map_lookup_elem(map, &p->key); /* another CPU made it first, or the map is full */
		if (!f) {
			/* map full: counted, never silently dropped (atomically: the loader checks the sum) */
			struct ww_lost *l = lost_slot(g);
			if (l) {
				__sync_fetch_and_add(&l->bytes, payload);
				l->packets++;
			}
			return;
		}
	}
	__sync_fetch_and_add(&f->bytes, payload);
	__sync_fetch_and_add(&f->packets, 1);
	if (sockets)
		__sync_fetch_and_add(&f->sockets, sockets);
	f->last_ns = now;
	if (o && (f->owner.tgid != o->tgid || f->owner.flags != o->flags))
		__builtin_memcpy(&f->owner, o, sizeof(*o));
}

SEC("cgroup_skb/egress")
int ww_egress(struct __sk_buff *skb)
{
	WW_REFUSE(WW_P_EGRESS);
	struct bpf_sock *sk = skb->sk;
	if (!sk)
		return 1;
	sk = bpf_sk_fullsock(sk);
	if (!sk)
		return 1;
	struct pkt p = {};
	if (parse(skb, &p))
		return 1;
	__u64 len = skb->len;
	__u64 head = p.hdr + p.l4;
	__u64 payload = len > head ? len - head : 0;
	__u16 flags = 0;
	__u32 g = gen;
	struct ww_totals *t = totals_slot(g);
	if (skb->ifindex == LOOPBACK_IFINDEX) {
		flags |= WW_F_LOCAL;
	} else if (t) {
		/* Headers of every packet that leaves, bare ACKs included: what protocol overhead explains. */
		t->hdr_bytes += len < head ? len : head;
		t->hdr_packets++;
	}
	if (sk->type == SOCK_RAW)
		flags |= WW_F_RAW;
	/* Bare ACKs of downloads say nothing about egress; on loopback they name the peer. */
	if (!payload && !(flags & WW_F_LOCAL))
		return 1;
	struct ww_owner *o = bpf_sk_storage_get(&owners, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	__u64 now = bpf_ktime_get_ns();
	__u32 sockets = 1;
	int tcp = p.key.proto == IPPROTO_TCP && !flags && merge_ready;
	if (tcp && merges(&p, o)) {
		sockets = merge_key(&p, o, g);
		flags |= WW_F_DECIDED;
	} else {
		if (tcp)
			flags |= WW_F_DECIDED | WW_F_ONHOST;
		p.key.cookie = bpf_get_socket_cookie(skb);
	}
	if (g & 1)
		account(&flows1, &p, o, flags, payload, now, g, sockets, t);
	else
		account(&flows0, &p, o, flags, payload, now, g, sockets, t);
	return 1;
}

/* DNS answers, so destinations can carry the name they were looked up by. */
SEC("cgroup_skb/ingress")
int ww_ingress(struct __sk_buff *skb)
{
	WW_REFUSE(WW_P_INGRESS);
	struct pkt p = {};
	if (parse(skb, &p) || p.key.proto != IPPROTO_UDP || p.sport != 53)
		return 1;
	__u32 zero = 0;
	struct dns_bucket *b = bpf_map_lookup_elem(&dns_rate, &zero);
	if (!b)
		return 1;
	__u64 now = bpf_ktime_get_ns();
	if (now - b->window_ns > 1000000000ULL) {
		b->window_ns = now;
		b->used = 0;
	}
	if (b->used >= dns_per_sec) {
		struct ww_lost *l = lost_slot(gen);
		if (l)
			l->dns_limited++;
		return 1;
	}
	b->used++;
	__u32 n = skb->len;
	if (n > WW_DNS_MAX)
		n = WW_DNS_MAX;
	if (n < 28)
		return 1;
	struct ww_dns_event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		struct ww_lost *l = lost_slot(gen);
		if (l)
			l->events++;
		return 1;
	}
	e->hdr.type = WW_EV_DNS;
	e->hdr.len = n;
	if (bpf_skb_load_bytes(skb, 0, e->data, n) != 0) {
		bpf_ringbuf_discard(e, 0);
		return 1;
	}
	bpf_ringbuf_submit(e, 0);
	return 1;
}

/* Bytes written to a unix socket, by (writer, receiving socket): relays on this host. */
static __always_inline void unix_account(struct sock *sk, int sent)
{
	struct unix_sock *u = bpf_skc_to_unix_sock(sk);
	struct ww_owner *receiver = 0;
	struct ww_unix_key key = {};
	if (u) {
		/* Read through probes only: u->peer may not be handed to a helper (see unix_readers). */
		struct sock *peer = BPF_CORE_READ(u, peer);
		if (peer)
			key.peer_ino = sock_ino(peer);
	}
	if (key.peer_ino)
		receiver = bpf_map_lookup_elem(&unix_readers, &key.peer_ino);
	key.tgid = bpf_get_current_pid_tgid() >> 32;
	struct task_struct *t = bpf_get_current_task_btf();
	key.start_ns = BPF_CORE_READ(t, group_leader, start_boottime);
	__u64 now = bpf_ktime_get_ns();
	__u32 g = gen;
	counted(g, sent);
	struct ww_unix *v;
	if (g & 1)
		v = bpf_map_lookup_elem(&unix1, &key);
	else
		v = bpf_map_lookup_elem(&unix0, &key);
	if (!v) {
		struct ww_unix init = {};
		fill_owner(&init.owner);
		init.first_ns = now;
		if (g & 1) {
			bpf_map_update_elem(&unix1, &key, &init, BPF_NOEXIST);
			v = bpf_map_lookup_elem(&unix1, &key);
		} else {
			bpf_map_update_elem(&unix0, &key, &init, BPF_NOEXIST);
			v = bpf_map_lookup_elem(&unix0, &key);
		}
		if (!v) {
			struct ww_lost *l = lost_slot(g);
			if (l)
				__sync_fetch_and_add(&l->bytes, (__u64)sent);
			return;
		}
	}
	__sync_fetch_and_add(&v->bytes, sent);
	v->last_ns = now;
	if (receiver && receiver->tgid && v->peer.tgid != receiver->tgid)
		__builtin_memcpy(&v->peer, receiver, sizeof(*receiver));
}

/* A process reading a socket: remembered on it, so the writers of a unix socket can name their
 * reader, and a connection accepted by a forked worker (or only read from) names that worker. */
SEC("tp_btf/sock_recv_length")
int BPF_PROG(ww_recv, struct sock *sk, int ret, int flags)
{
	WW_REFUSE(WW_P_RECV);
	if (!sk || ret <= 0 || active != my_epoch || !in_scope())
		return 0;
	__u16 family = sk->__sk_common.skc_family;
	if (family != AF_UNIX && family != AF_INET && family != AF_INET6)
		return 0;
	struct ww_owner *o = bpf_sk_storage_get(&owners, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (!o)
		return 0;
	if (o->tgid != (__u32)(bpf_get_current_pid_tgid() >> 32) || !(o->flags & WW_OWNED))
		fill_owner(o);
	if (family == AF_UNIX) {
		__u64 ino = sock_ino(sk);
		struct ww_owner *known = ino ? bpf_map_lookup_elem(&unix_readers, &ino) : 0;
		if (ino && (!known || known->tgid != o->tgid || known->start_ns != o->start_ns))
			bpf_map_update_elem(&unix_readers, &ino, o, BPF_ANY);
	}
	return 0;
}

/* -- packet sockets ------------------------------------------------------------------------------ */

/* The fields read from a packet socket, by name (CO-RE): ifindex and num (the bound ethertype) on
 * every kernel; PACKET_QDISC_BYPASS is a bit of `flags` from 6.4 on, and `xmit == packet_direct_xmit`
 * before. */
struct packet_sock___ww {
	int ifindex;
	__be16 num;
	unsigned long flags;
} __attribute__((preserve_access_index));

struct packet_sock___old {
	int (*xmit)(struct sk_buff *skb);
} __attribute__((preserve_access_index));

enum packet_sock_flags___ww {
	PACKET_SOCK_QDISC_BYPASS___ww = 6,
};

struct xdp_sock___ww {
	struct net_device *dev;
} __attribute__((preserve_access_index));

static __always_inline int packet_bypass(struct sock *sk)
{
	if (bpf_core_enum_value_exists(enum packet_sock_flags___ww, PACKET_SOCK_QDISC_BYPASS___ww)) {
		struct packet_sock___ww *po = (void *)sk;
		unsigned long bits = BPF_CORE_READ(po, flags);
		__u32 bit = bpf_core_enum_value(enum packet_sock_flags___ww, PACKET_SOCK_QDISC_BYPASS___ww);
		return (bits >> (bit & 63)) & 1;
	}
	if (bpf_core_field_exists(struct packet_sock___old, xmit) && direct_xmit_addr) {
		struct packet_sock___old *po = (void *)sk;
		return (__u64)BPF_CORE_READ(po, xmit) == direct_xmit_addr;
	}
	return 0;
}

/* The executable of the current process, read now (not from the cached owner: a sender must not
 * pass for an allowlisted program by rewriting its task-storage entry). */
static __always_inline int exe_allowed(void)
{
	struct task_struct *t = bpf_get_current_task_btf();
	struct ww_exe_key k = {};
	k.ino = BPF_CORE_READ(t, mm, exe_file, f_inode, i_ino);
	k.dev = BPF_CORE_READ(t, mm, exe_file, f_inode, i_sb, s_dev);
	return k.ino && bpf_map_lookup_elem(&raw_allow, &k) != 0;
}

/* `cookie`: the socket's cookie where the program holds a trusted socket (ww_packet); programs that reach
 * the socket through a pointer walk (ww_xdp, ww_lsm) may not hand it to a helper, and key it by inode. */
static __always_inline void raw_account(struct sock *sk, __u64 cookie, __u16 family, __u64 bytes, __u32 flags)
{
	struct ww_raw_key key = {};
	key.cookie = cookie;
	key.tgid = bpf_get_current_pid_tgid() >> 32;
	__u64 now = bpf_ktime_get_ns();
	__u32 g = gen;
	counted(g, bytes);
	void *map = g & 1 ? (void *)&raw1 : (void *)&raw0;
	struct ww_raw *r = bpf_map_lookup_elem(map, &key);
	if (!r) {
		struct ww_raw init = {};
		fill_owner(&init.owner);
		init.owner.netns = net_cookie(sk);
		init.ino = sock_ino(sk);
		init.family = family;
		init.type = BPF_CORE_READ(sk, sk_type);
		if (family == AF_PACKET && bpf_core_type_exists(struct packet_sock___ww)) {
			struct packet_sock___ww *po = (void *)sk;
			init.ifindex = BPF_CORE_READ(po, ifindex);
			init.protocol = bpf_ntohs(BPF_CORE_READ(po, num));
		} else if (family == AF_XDP && bpf_core_type_exists(struct xdp_sock___ww)) {
			struct xdp_sock___ww *xs = (void *)sk;
			init.ifindex = BPF_CORE_READ(xs, dev, ifindex);
		}
		if (init.ifindex)
			init.flags |= WW_RAW_BOUND;
		init.first_ns = now;
		bpf_map_update_elem(map, &key, &init, BPF_NOEXIST);
		r = bpf_map_lookup_elem(map, &key);
		if (!r) {
			struct ww_lost *l = lost_slot(g);
			if (l) {
				__sync_fetch_and_add(&l->bytes, bytes);
				l->packets++;
			}
			return;
		}
	}
	__sync_fetch_and_add(&r->bytes, bytes);
	__sync_fetch_and_add(&r->packets, 1);
	r->last_ns = now;
	if ((r->flags & flags) != flags)
		r->flags |= flags; /* bits are only ever set: a race re-sets one at the next send */
}

/* Each send on a packet socket, in the sender's context, after the device took it: credited to the
 * process with the frame bytes and the interface, and a sender the policy says to kill is sent
 * SIGKILL here, so it stops at the end of this send (what it sent so far is what escaped). */
SEC("tp_btf/sock_send_length")
int BPF_PROG(ww_packet, struct sock *sk, int ret, int flags)
{
	WW_REFUSE(WW_P_PACKET);
	if (!sk || active != my_epoch)
		return 0;
	__u16 family = sk->__sk_common.skc_family;
	if (family != AF_PACKET && family != AF_XDP)
		return 0;
	if (!in_scope())
		return 0;
	/* AF_XDP's sendmsg only kicks the TX ring and returns 0: its frames are counted by ww_xdp where
	 * the kernel allows fentry; the socket is still seen here. */
	if (ret < 0 || (ret == 0 && family != AF_XDP))
		return 0;
	__u32 how = family == AF_XDP || (family == AF_PACKET && packet_bypass(sk)) ? WW_RAW_BYPASS : 0;
	if (exe_allowed()) {
		how |= WW_RAW_ALLOWED;
	} else if (raw_action == WW_RAW_KILL) {
		bpf_send_signal(SIGKILL);
		how |= WW_RAW_KILLED;
	}
	raw_account(sk, bpf_get_socket_cookie(sk), family, family == AF_XDP ? 0 : (__u64)ret, how);
	return 0;
}

#define WW_INO_KEY (1ULL << 63) /* a raw entry keyed by the socket's inode, not its cookie */

/* AF_XDP in copy mode (and PACKET_QDISC_BYPASS) hand each frame to __dev_direct_xmit: where fentry
 * is allowed, AF_XDP frames are counted here, before they leave. Optional: kernels that forbid
 * fentry (this one does) leave AF_XDP bytes to the interface's unexplained count. */
SEC("fentry/__dev_direct_xmit")
int BPF_PROG(ww_xdp, struct sk_buff *skb, __u16 queue_id)
{
	WW_REFUSE(WW_P_XDP);
	if (active != my_epoch)
		return 0;
	struct sock *sk = BPF_CORE_READ(skb, sk);
	if (!sk || BPF_CORE_READ(sk, __sk_common.skc_family) != AF_XDP || !in_scope())
		return 0;
	raw_account(sk, WW_INO_KEY | sock_ino(sk), AF_XDP, BPF_CORE_READ(skb, len), WW_RAW_BYPASS);
	return 0;
}

/* Where the bpf LSM is enabled, a packet-socket send the policy kills is refused before anything
 * leaves; elsewhere ww_packet's signal stops the sender after its first send. */
SEC("lsm/socket_sendmsg")
int BPF_PROG(ww_lsm, struct socket *sock, struct msghdr *msg, int size, int prev)
{
	WW_REFUSE(WW_P_LSM);
	if (prev || raw_action != WW_RAW_KILL || active != my_epoch)
		return prev;
	struct sock *sk = BPF_CORE_READ(sock, sk);
	if (!sk)
		return 0;
	__u16 family = BPF_CORE_READ(sk, __sk_common.skc_family);
	if ((family != AF_PACKET && family != AF_XDP) || !in_scope() || exe_allowed())
		return 0;
	bpf_send_signal(SIGKILL);
	raw_account(sk, WW_INO_KEY | sock_ino(sk), family, 0, WW_RAW_KILLED | WW_RAW_DENIED);
	return -EPERM;
}
