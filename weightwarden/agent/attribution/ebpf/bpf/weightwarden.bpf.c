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
#define ETH_P_IP 0x0800
#define ETH_P_IPV6 0x86DD
#define SOCK_RAW 3
#define LOOPBACK_IFINDEX 1
#define PROTO_ICMPV6 58

__u32 gen = 0;                          /* written by the loader: +1 each drain, the map is gen & 1 */
__u32 merge_ready = 0;                  /* the loader knows the host's own addresses (local_addrs) */
__u32 local_epoch = 0;                  /* +1 each time the loader changes local_addrs */
volatile const __u32 scope_is_root = 0; /* the scope is the whole hierarchy: every task is in it */
volatile const __u64 dns_per_sec = 500; /* per CPU; a flood of answers costs names, never bytes */
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
	int stale = !p || !p->tgid || p->mm != mm || p->parent != parent || p->cgroup_id != cgroup_id || p->uid != uid;
	if (stale) {
		if (!p)
			p = &fresh; /* an exiting leader has no storage: described in full each time */
		p->tgid = bpf_get_current_pid_tgid() >> 32;
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

/* Every completed write to a socket (send, write, sendfile and splice, io_uring), in the
 * writer's context: inet sockets are credited to the process that writes them (a socket
 * passed on or inherited follows its writer); unix sockets are counted as local transfers. */
SEC("tp_btf/sock_send_length")
int BPF_PROG(ww_send, struct sock *sk, int ret, int flags)
{
	if (!sk || ret <= 0 || !in_scope())
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
		o->netns = BPF_CORE_READ(sk, __sk_common.skc_net.net, net_cookie);
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
				    __u64 payload, __u64 now, __u32 g, __u32 sockets)
{
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
			/* map full: counted, never silently dropped */
			struct ww_lost *l = lost_slot(g);
			if (l) {
				l->bytes += payload;
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
	if (skb->ifindex == LOOPBACK_IFINDEX)
		flags |= WW_F_LOCAL;
	if (sk->type == SOCK_RAW)
		flags |= WW_F_RAW;
	/* Bare ACKs of downloads say nothing about egress; on loopback they name the peer. */
	if (!payload && !(flags & WW_F_LOCAL))
		return 1;
	struct ww_owner *o = bpf_sk_storage_get(&owners, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	__u64 now = bpf_ktime_get_ns();
	__u32 g = gen;
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
		account(&flows1, &p, o, flags, payload, now, g, sockets);
	else
		account(&flows0, &p, o, flags, payload, now, g, sockets);
	return 1;
}

/* DNS answers, so destinations can carry the name they were looked up by. */
SEC("cgroup_skb/ingress")
int ww_ingress(struct __sk_buff *skb)
{
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
				l->bytes += sent;
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
	if (!sk || ret <= 0 || !in_scope())
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
