"""The egress sampler: exact bytes sent per interface, per process, per destination.

Unit of account: transport payload bytes, as the kernel counts them
(TCP: tcpi_bytes_sent, retransmissions included; UDP: conntrack bytes less the
fixed IP+UDP headers). Interfaces count whole frames, so
``unattributed_tx_bytes = interface bytes - attributed bytes`` holds headers,
non-IP traffic and flows whose owner could not be named; nothing is dropped.

Sources, and why each:
- sock_diag dump each interval: live TCP sockets with their counters and inode;
- sock_diag destroy broadcast: the final counters of every TCP socket as it is
  freed (a 5 ms connection is never missed);
- NFQUEUE on the first packet of each new flow: the sender is held in
  connect() while we map the socket to its pid, so short-lived processes are
  named; packets are always accepted and the queue bypasses when we are gone;
- conntrack (accounting on): UDP byte totals, and destroy events for flows
  that end between two samples.
"""

from __future__ import annotations

import errno
import select
import socket
import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

from weightwarden.agent import conntrack as ct_mod
from weightwarden import logs
from weightwarden.agent import resolve_rules
from weightwarden.agent.features import Feature, cgroup_layout, has_net_admin
from weightwarden.agent.interfaces import IfCounters, counter_delta, is_egress_destination, local_addresses, read_interfaces
from weightwarden.agent.ledger import Dest, Ledger
from weightwarden.agent.nfqueue import FlowTuple, NfQueue
from weightwarden.agent.dns import NameCache
from weightwarden.agent.procmap import ProcessInfo, ProcessTable
from weightwarden.events import MAX_DESTINATIONS, MAX_PIPES, MAX_PROCESSES, EgressSample
from weightwarden.agent.sockdiag import TCP_LISTEN, DestroyListener, SockDiag, SockRecord

DEFAULT_QUEUE = 4242
DEAD_COOKIE_SAMPLES = 3
LOOPBACK_PREFIXES = ("lo",)


@dataclass(slots=True)
class UdpFlow:
    tuple: FlowTuple
    owner: int | None


@dataclass
class SamplerConfig:
    resolve_with_nfqueue: bool = True
    queue_num: int = DEFAULT_QUEUE
    proc_root: str = "/proc"
    sys_root: str = "/sys"
    clock: Callable[[], float] = time.time
    manage_rules: bool = True


@dataclass
class Sample:
    ts: float
    interval_s: float
    interfaces: list[dict[str, Any]]
    processes: list[dict[str, Any]]
    attributed_tx_bytes: int
    unattributed_tx_bytes: int
    unowned_flow_tx_bytes: int
    lost_events: int
    extra: dict[str, Any] = field(default_factory=dict)

    def to_payload(self) -> EgressSample:
        return EgressSample.model_validate(self.to_json())

    def to_json(self) -> dict[str, Any]:
        return {
            "ts": self.ts,
            "interval_s": round(self.interval_s, 6),
            "layer": "transport-payload",
            "interfaces": self.interfaces,
            "processes": self.processes,
            "attributed_tx_bytes": self.attributed_tx_bytes,
            "unattributed_tx_bytes": self.unattributed_tx_bytes,
            "unowned_flow_tx_bytes": self.unowned_flow_tx_bytes,
            "lost_events": self.lost_events,
            **self.extra,
        }


class Sampler:
    def __init__(self, config: SamplerConfig | None = None) -> None:
        self.cfg = config or SamplerConfig()
        self.features: list[Feature] = []
        self.procs = ProcessTable(self.cfg.proc_root)
        self.ledger = Ledger()
        self.diag = SockDiag()
        self.destroy: DestroyListener | None = None
        self.conntrack: ct_mod.Conntrack | None = None
        self.queue: NfQueue | None = None
        self.rule_plan: resolve_rules.RulePlan | None = None
        self._lock = threading.RLock()
        self._cookie_owner: dict[int, int] = {}
        self._dead_strikes: dict[int, int] = {}
        self._udp_flows: dict[FlowTuple, UdpFlow] = {}
        self._info: dict[int, ProcessInfo] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_if: dict[str, IfCounters] = {}
        self._last_ts = 0.0
        self._prev_ts = 0.0
        self._local = local_addresses()
        self._samples = 0
        self.lost_events = 0
        self.resolve_errors = 0
        self._log = logs.get("agent.sampler")
        self.names = NameCache()

    # -- lifecycle -------------------------------------------------------

    def start(self) -> None:
        admin = has_net_admin(self.cfg.proc_root)
        if not admin:
            self.features.append(
                Feature("privileges", False, "not root (no CAP_NET_ADMIN): measuring live TCP sockets only; "
                        "connections that open and close between samples and UDP are not attributed")
            )
        self.features.append(cgroup_layout(self.cfg.proc_root))
        try:
            self.destroy = DestroyListener()
            self.features.append(Feature("sock_destroy", True, "final TCP counters from sock_diag destroy events"))
        except OSError as exc:
            self.features.append(Feature("sock_destroy", False, f"sock_diag destroy events unavailable ({exc.strerror}): "
                                         "bytes of TCP connections that close between samples are unattributed"))
        self._start_conntrack(admin)
        if self.cfg.resolve_with_nfqueue and admin:
            self._start_queue()
        elif self.cfg.resolve_with_nfqueue:
            self.features.append(Feature("nfqueue", False, "owner resolution at connect time needs CAP_NET_ADMIN: "
                                         "owners are resolved at each sample instead"))
        self._baseline()

    def _start_conntrack(self, admin: bool) -> None:
        acct = ct_mod.acct_enabled()
        if acct is None:
            self.features.append(Feature("conntrack", False, "conntrack is not loaded: UDP bytes are not attributed "
                                         "(load nf_conntrack)"))
            return
        if not acct and not (admin and ct_mod.enable_acct()):
            self.features.append(Feature("conntrack", False, "conntrack accounting is off and we may not enable it: "
                                         "UDP bytes are not attributed (sysctl net.netfilter.nf_conntrack_acct=1)"))
            return
        try:
            self.conntrack = ct_mod.Conntrack(events=admin)
        except OSError as exc:
            self.features.append(Feature("conntrack", False, f"ctnetlink unavailable ({exc.strerror})"))
            return
        self.features.append(Feature("conntrack", True, "conntrack accounting on: UDP flows measured"))

    def _start_queue(self) -> None:
        tools = resolve_rules.available_tools()
        if not tools:
            self.features.append(Feature("nfqueue", False, "iptables not found: owners of short-lived "
                                         "connections are resolved at sample time and may be missed"))
            return
        try:
            self.queue = NfQueue(self.cfg.queue_num)
        except OSError as exc:
            self.features.append(Feature("nfqueue", False, f"cannot bind NFQUEUE {self.cfg.queue_num} "
                                         f"({exc.strerror}); is another agent running? Owners resolved at sample time"))
            return
        self.rule_plan = resolve_rules.plan(self.cfg.queue_num, tools)
        if self.cfg.manage_rules:
            errors = resolve_rules.apply(self.rule_plan)
            if errors and len(errors) == len(self.rule_plan.install):
                self.features.append(Feature("nfqueue", False, "could not install the NFQUEUE rules: " + errors[0]))
                self.queue.close()
                self.queue = None
                return
            if errors:
                self.features.append(Feature("nfqueue", False, "some NFQUEUE rules failed (IPv6?): " + errors[0]))
        self._thread = threading.Thread(target=self._serve_queue, name="nfqueue", daemon=True)
        self._thread.start()
        self.features.append(Feature("nfqueue", True, f"new flows held on NFQUEUE {self.cfg.queue_num} (bypass) "
                                     "until their owner is named"))

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
        if self.rule_plan is not None and self.cfg.manage_rules:
            resolve_rules.remove(self.rule_plan)
        for res in (self.queue, self.destroy, self.conntrack, self.diag):
            if res is not None:
                res.close()

    def __enter__(self) -> Sampler:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- owner resolution ------------------------------------------------

    def _remember(self, pid: int) -> None:
        with self._lock:
            info = self.procs.describe(pid)
            if info is not None:
                self._info[pid] = info

    def _serve_queue(self) -> None:
        assert self.queue is not None
        # This thread owns its own sock_diag socket: netlink sockets are not shared.
        qdiag = SockDiag()
        try:
            while not self._stop.is_set():
                ready, _, _ = select.select([self.queue], [], [], 0.2)
                if not ready:
                    continue
                try:
                    self.queue.serve_once(lambda flow, uid, pkt: self._on_packet(qdiag, flow, pkt), block=False)
                except BlockingIOError:
                    continue
                except OSError as exc:
                    if exc.errno != errno.ENOBUFS:
                        self.resolve_errors += 1
                        self._log.warning("nfqueue_error", error=str(exc))
                    else:
                        self.lost_events += 1
                except Exception as exc:  # noqa: BLE001 - one bad packet must not stop resolution
                    self.resolve_errors += 1
                    self._log.warning("resolve_error", error=repr(exc))
        finally:
            qdiag.close()

    def _on_packet(self, qdiag: SockDiag, flow: FlowTuple, packet: bytes) -> None:
        if flow.protocol == socket.IPPROTO_UDP and flow.sport == 53:
            self.names.feed(packet)  # an answer coming in (only INPUT sends us those)
            return
        self._on_new_flow(qdiag, flow)

    def _on_new_flow(self, qdiag: SockDiag, flow: FlowTuple) -> None:
        if not is_egress_destination(flow.dst, self._local):
            return
        if flow.protocol == socket.IPPROTO_TCP:
            rec = qdiag.lookup(flow.family, flow.protocol, flow.src, flow.sport, flow.dst, flow.dport)
            if rec is None or not rec.inode:
                return
            with self._lock:
                pid = self.procs.owners({rec.inode}).get(rec.inode)
                if pid is not None:
                    self._cookie_owner[rec.cookie] = pid
                    self._remember(pid)
        else:
            with self._lock:
                if flow in self._udp_flows:
                    return
            pid = self._udp_owner(qdiag, flow)
            with self._lock:
                self._udp_flows[flow] = UdpFlow(flow, pid)
                if pid is not None:
                    self._remember(pid)

    def _udp_owner(self, diag: SockDiag, flow: FlowTuple) -> int | None:
        wildcard = ("0.0.0.0", "::")
        for rec in diag.dump(socket.IPPROTO_UDP):
            if rec.sport == flow.sport and (rec.src == flow.src or rec.src in wildcard):
                if rec.dport and (rec.dst, rec.dport) != (flow.dst, flow.dport):
                    continue
                with self._lock:
                    return self.procs.owners({rec.inode}).get(rec.inode)
        return None

    # -- sampling --------------------------------------------------------

    def _read_tcp(self) -> tuple[dict[int, SockRecord], dict[int, int]]:
        live: dict[int, SockRecord] = {}
        listeners: dict[int, int] = {}  # local port -> inode of the listening socket
        for rec in self.diag.dump(socket.IPPROTO_TCP):
            if rec.state == TCP_LISTEN:
                listeners[rec.sport] = rec.inode
            else:
                live[rec.cookie] = rec
        return live, listeners

    def _baseline(self) -> None:
        live, _ = self._read_tcp()
        self._resolve(live.values())
        for rec in live.values():
            if rec.bytes_sent is not None:
                self.ledger.baseline(("tcp", rec.cookie), rec.bytes_sent, (rec.dst, rec.dport),
                                     self._cookie_owner.get(rec.cookie))
        self._last_if = read_interfaces()
        self._last_ts = self.cfg.clock()

    def _resolve(self, recs: Any) -> None:
        with self._lock:
            unknown = {r.inode for r in recs if r.inode and r.cookie not in self._cookie_owner}
            if not unknown:
                return
            owners = self.procs.owners(unknown)
            for rec in recs:
                pid = owners.get(rec.inode)
                if pid is not None and rec.cookie not in self._cookie_owner:
                    self._cookie_owner[rec.cookie] = pid
                    self._remember(pid)

    def _drain(self, source: Any, method: str) -> list[Any]:
        if source is None:
            return []
        out: list[Any] = []
        try:
            out.extend(getattr(source, method)())
        except OSError as exc:
            if exc.errno != errno.ENOBUFS:
                raise
            # The kernel dropped events: say so in every sample until read.
            self.lost_events += 1
        return out

    def sample(self) -> Sample:
        destroyed: list[SockRecord] = self._drain(self.destroy, "drain")
        ct_ended: list[ct_mod.CtFlow] = self._drain(self.conntrack, "drain_destroyed")
        live, listeners = self._read_tcp()
        if self._samples % 10 == 0:
            self._local = local_addresses()
        self._samples += 1
        self._resolve(list(live.values()))
        with self._lock:
            listener_owner = self.procs.owners(set(listeners.values()))

        def owner_of(rec: SockRecord) -> int | None:
            pid = self._cookie_owner.get(rec.cookie)
            if pid is None and rec.sport in listeners:
                # An accepted connection belongs to whoever listens on its port.
                pid = listener_owner.get(listeners[rec.sport])
                if pid is not None:
                    self._remember(pid)
            return pid

        for rec in destroyed:
            if rec.bytes_sent is None or not is_egress_destination(rec.dst, self._local):
                continue
            self.ledger.finish(("tcp", rec.cookie), rec.bytes_sent, (rec.dst, rec.dport), owner_of(rec))
        for rec in live.values():
            if rec.bytes_sent is None or not is_egress_destination(rec.dst, self._local):
                continue
            self.ledger.update(("tcp", rec.cookie), rec.bytes_sent, (rec.dst, rec.dport), owner_of(rec))
        self._sample_udp(ct_ended)

        keep: set[Hashable] = {("tcp", c) for c in live}
        keep |= {k for k in self.ledger.flows if isinstance(k, tuple) and k[0] == "udp"}
        self.ledger.forget(keep)
        with self._lock:
            # A socket may die between the destroy drain and the dump: keep its
            # owner for a few samples so its final counters still find it.
            for cookie in [c for c in self._cookie_owner if c not in live]:
                strikes = self._dead_strikes.get(cookie, 0) + 1
                if strikes >= DEAD_COOKIE_SAMPLES:
                    del self._cookie_owner[cookie]
                    self._dead_strikes.pop(cookie, None)
                else:
                    self._dead_strikes[cookie] = strikes
            self.procs.forget_inodes({r.inode for r in live.values()} | set(listeners.values()))
        return self._report(self.ledger.take_interval())

    def _sample_udp(self, ended: list[ct_mod.CtFlow]) -> None:
        if self.conntrack is None:
            return
        with self._lock:
            flows = dict(self._udp_flows)
        finished: set[FlowTuple] = set()
        for flow in ended:
            if flow.protocol != socket.IPPROTO_UDP or not is_egress_destination(flow.dst, self._local):
                continue
            key = FlowTuple(flow.family, flow.protocol, flow.src, flow.sport, flow.dst, flow.dport)
            known = flows.get(key)
            self.ledger.finish(("udp", key), flow.orig_payload, (flow.dst, flow.dport),
                               known.owner if known else None)
            finished.add(key)
        for key, udp in flows.items():
            if key in finished:
                continue
            got = self.conntrack.get(key.family, key.protocol, key.src, key.sport, key.dst, key.dport)
            if got is None:
                finished.add(key)  # expired with no destroy event seen: credited up to last sample
                continue
            self.ledger.update(("udp", key), got.orig_payload, (key.dst, key.dport), udp.owner)
        with self._lock:
            for key in finished:
                self._udp_flows.pop(key, None)
                self.ledger.flows.pop(("udp", key), None)

    def _report(self, interval: Any) -> Sample:
        now = self.cfg.clock()
        counters = read_interfaces()
        ifaces: list[dict[str, Any]] = []
        total_tx = 0
        for name, c in sorted(counters.items()):
            if name.startswith(LOOPBACK_PREFIXES):
                continue
            old = self._last_if.get(name)
            tx = counter_delta(c.tx_bytes, old.tx_bytes if old else None)
            rx = counter_delta(c.rx_bytes, old.rx_bytes if old else None)
            pk = counter_delta(c.tx_packets, old.tx_packets if old else None)
            total_tx += tx
            ifaces.append({"name": name, "tx_bytes": tx, "rx_bytes": rx, "tx_packets": pk,
                           "tx_rate_bps": 0.0})
        elapsed = max(now - self._last_ts, 1e-9)
        self._prev_ts = self._last_ts
        for entry in ifaces:
            entry["tx_rate_bps"] = round(entry["tx_bytes"] * 8 / elapsed, 1)
        self._last_if = counters
        self._last_ts = now

        processes = []
        for pid, dests in interval.by_owner.items():
            info = self._info.get(pid)
            entry = process_entry(pid, info, dests)
            for d in entry["destinations"]:
                dns_name = self.names.name(d["address"])
                if dns_name:
                    d["name"] = dns_name
            processes.append(entry)
        processes, other = bound_processes(processes)
        attributed = interval.attributed
        with self._lock:
            live_pids = set(self._cookie_owner.values()) | {u.owner for u in self._udp_flows.values() if u.owner}
            for pid in [p for p in self._info if p not in live_pids and p not in interval.by_owner]:
                del self._info[pid]
            self.procs.prune(live_pids)
        return Sample(
            ts=now,
            interval_s=elapsed,
            interfaces=ifaces,
            processes=processes,
            attributed_tx_bytes=attributed,
            unattributed_tx_bytes=max(0, total_tx - attributed),
            unowned_flow_tx_bytes=interval.unowned,
            lost_events=self.lost_events,
            extra={"start_ts": self._prev_ts, **({"other_processes": other} if other else {})},
        )


def process_entry(pid: int, info: ProcessInfo | None, dests: dict[Dest, int]) -> dict[str, Any]:
    """One process's line in a sample: its identity and its busiest destinations (at most
    MAX_DESTINATIONS; the rest summed in ``other_destinations``, so a sample never outgrows
    what the collector accepts, however many places a process sends to)."""
    ranked = sorted(dests.items(), key=lambda kv: kv[1], reverse=True)
    shown, rest = ranked[:MAX_DESTINATIONS], ranked[MAX_DESTINATIONS:]
    entry: dict[str, Any] = {
        "pid": pid,
        "ppid": info.ppid if info else None,
        "name": info.name if info else "?",
        "exe": info.exe if info else "",
        "uid": info.uid if info else None,
        "user": info.user if info else None,
        "cmdline": list(info.cmdline) if info else [],
        "cgroup": info.cgroup if info else None,
        "start_time": info.create_time if info else None,
        "pipes": list(info.pipes)[:MAX_PIPES] if info else [],
        "tx_bytes": sum(dests.values()),
        "destinations": [{"address": addr, "port": port, "tx_bytes": n} for (addr, port), n in shown],
    }
    if rest:
        entry["other_destinations"] = {"count": len(rest), "tx_bytes": sum(n for _d, n in rest)}
    return entry


def bound_processes(processes: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], dict[str, int] | None]:
    """The MAX_PROCESSES busiest senders, and the rest as one total (None if nothing was cut)."""
    processes.sort(key=lambda p: p["tx_bytes"], reverse=True)
    if len(processes) <= MAX_PROCESSES:
        return processes, None
    rest = processes[MAX_PROCESSES:]
    return processes[:MAX_PROCESSES], {"count": len(rest), "tx_bytes": sum(p["tx_bytes"] for p in rest)}
