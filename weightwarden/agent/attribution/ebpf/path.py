"""The eBPF attribution path: every network namespace, owners resolved in the kernel.

Each sample drains what the kernel counted (see weightwarden/agent/attribution/ebpf/bpf/weightwarden.bpf.c)
and turns it into per-process accounts: bytes per destination with protocol,
accepted-or-not, socket count and first/last send time; bytes to other
processes on this host (loopback TCP/UDP, unix sockets) as local peers; frames
sent on packet sockets, by interface. New senders are announced by the kernel
as they appear, and described from /proc on a worker thread while they still
live, never under a lock.

The loader checks its programs twice a second and reports what someone changed
(``sensor_tampered``); if the loader itself is killed, another is started: with
pinned programs it takes them over and nothing sent meanwhile is missed.
"""

from __future__ import annotations

import os
import queue
import socket
import threading
import time
from collections.abc import Callable
from typing import get_args

import psutil

from weightwarden import logs
from weightwarden.agent.attribution import paths
from weightwarden.agent.attribution.dns import NameCache
from weightwarden.agent.attribution.ebpf import sensor, wire
from weightwarden.agent.attribution.ebpf.loader import BpfError, BpfLoader, ProgramState, Ready, Tamper
from weightwarden.agent.attribution.report import Account, PathInterval, PeerStats, RawUse
from weightwarden.agent.kernel.cgroupfs import CgroupPaths, find_cgroup2
from weightwarden.agent.kernel.features import Feature
from weightwarden.agent.kernel.interfaces import is_egress_destination, netns_cookie
from weightwarden.agent.kernel.procmap import ProcessInfo, ProcessTable
from weightwarden.events import Payload, SensorState, SensorTampered, TamperChange

CLK_TCK = os.sysconf("SC_CLK_TCK")
FORGET_AFTER_S = 60.0  # a process silent this long is described afresh when it next sends
PEER_MEMORY_S = 30.0  # how long a loopback socket's owner is remembered for naming peers
MAX_PEER_LOOKUPS = 64  # /proc scans for unknown unix peers per interval
REVIVE_EVERY_S = 5.0  # a loader that cannot be started again is retried this often
TAMPER_KINDS = frozenset(get_args(TamperChange.model_fields["kind"].annotation))
SOCKET_TYPES = {wire.SOCK_RAW: "raw", wire.SOCK_DGRAM: "dgram"}


def create_time(start_ns: int, boot_time: float) -> float:
    """A process's start as psutil computes it from /proc/PID/stat, from the kernel's start_boottime."""
    ticks = start_ns // (1_000_000_000 // CLK_TCK)
    return (float(ticks) / CLK_TCK) + boot_time


def raw_destination(family: str, interface: str | None, ifindex: int) -> str:
    """How a packet socket's bytes appear among a process's destinations: no address, only the device."""
    return f"{family}:{interface or (f'if{ifindex}' if ifindex else 'unbound')}"


class EbpfPath:
    name = "ebpf"

    def __init__(self, cgroup_dir: str, cgroup_root: str | None, procs: ProcessTable, names: NameCache,
                 local: Callable[[], set[str]], pin_dir: str | None = None) -> None:
        self.cgroup_dir = cgroup_dir
        self.procs = procs
        self.names = names
        self.local = local
        self.pin_dir = pin_dir
        self.cgroups = CgroupPaths(cgroup_root)
        self.boot_time = psutil.boot_time()
        self.loader = self._new_loader()
        self.ready: Ready = Ready({})
        self._todo: queue.Queue[wire.Owner | None] = queue.Queue(maxsize=20_000)
        self._describer: threading.Thread | None = None
        # endpoint -> (owner, seen): the kernel's owner names a peer that exited before /proc was read
        self._peer_owner: dict[tuple[int, str, int, str, int], tuple[wire.Owner, float]] = {}
        self._unix_owner: dict[int, int | None] = {}
        self._seen: dict[int, float] = {}
        self._log = logs.get("agent.ebpf")
        self.announce_dropped = 0
        # Filled by the loader's reader thread (tamper reports) and by collect (a loader that died), taken
        # by events(); a lock because both sides are threads.
        self._events: list[Payload] = []
        self._events_lock = threading.Lock()
        self._programs_lost: dict[str, ProgramState] = {}
        self._last_drain_wall = time.time()
        self._revive_failed_at = 0.0
        self._raw_policy = paths.RawPolicy()
        self._netns = netns_cookie()
        self._ifnames: dict[int, str] = {}

    def _new_loader(self) -> BpfLoader:
        return BpfLoader(self.cgroup_dir, on_owner=self._announced, on_dns=self.names.feed, on_tamper=self._tampered,
                         pin_dir=self.pin_dir)

    def start(self) -> list[Feature]:
        try:
            self.ready = self.loader.start()
        except BpfError as exc:
            self.loader.close()
            raise paths.PathUnavailable(str(exc)) from None
        self._describer = threading.Thread(target=self._describe_loop, name="describe", daemon=True)
        self._describer.start()
        notes = "; ".join(self.ready.notes)
        pin = self.ready.pin
        if pin.on:
            notes = "; ".join(filter(None, [f"pinned in {pin.dir}" + (
                ": took over the programs a previous loader left there, which kept counting" if pin.reused else ""),
                notes]))
        elif pin.reason:
            notes = "; ".join(filter(None, [f"not pinned: {pin.reason}", notes]))
        off = [f"{name} ({p.reason})" for name, p in self.ready.programs.items() if not p.on]
        return [Feature("ebpf", True, f"eBPF attribution on cgroup {self.cgroup_dir}: every process in every network "
                        "namespace, owners resolved in the kernel" + (f"; programs left out: {'; '.join(off)}" if off
                                                                       else "") + (f" ({notes})" if notes else ""))]

    def close(self) -> None:
        self.loader.close()
        if self._describer is not None:
            self._todo.put(None)
            self._describer.join(timeout=2)
            self._describer = None

    # -- what the sensor sees, and what was done to it -------------------------------------------

    def sensor(self) -> SensorState:
        programs = {**self.ready.programs, **self._programs_lost}
        return sensor.state(self.ready, programs)

    def events(self) -> list[Payload]:
        with self._events_lock:
            out, self._events = self._events, []
        return out

    def _emit(self, event: Payload) -> None:
        with self._events_lock:
            self._events.append(event)

    def _wall(self, mono_ns: int) -> float:
        return round(time.time() - (time.monotonic_ns() - mono_ns) / 1e9, 3)

    def _tampered(self, t: Tamper) -> None:
        changes = [TamperChange(kind=c.kind if c.kind in TAMPER_KINDS else "other", name=c.name[:256],  # type: ignore[arg-type]
                                detail=c.detail[:4000] or None) for c in t.changes][:200]
        if not changes:
            return
        detected = self._wall(t.detected_ns) if t.detected_ns else time.time()
        blind = self._wall(t.ok_ns) if t.ok_ns else self._last_drain_wall
        self._log.error("sensor_tampered", changes=[c.model_dump(exclude_none=True) for c in changes],
                        reattached=t.reattached)
        self._emit(SensorTampered(changes=changes, reattached=t.reattached, detected_ts=detected,
                                  blind_from_ts=min(blind, detected)))

    def _revive(self, error: BpfError) -> None:
        """The loader stopped answering: say so, and start another (it takes over pinned programs)."""
        if time.monotonic() - self._revive_failed_at < REVIVE_EVERY_S:
            raise error
        rc, pid = self.loader.returncode, self.loader.pid
        self.loader.close()
        ended = f"killed by signal {-rc}" if rc is not None and rc < 0 else f"exit status {rc}" if rc is not None \
            else "no answer"
        detail = f"the eBPF loader (pid {pid}) stopped: {ended} ({error})"
        detected = time.time()
        self.loader = self._new_loader()
        try:
            self.ready = self.loader.start()
        except BpfError as exc:
            self._revive_failed_at = time.monotonic()
            self._programs_lost = {name: ProgramState(False, f"the loader died and could not be started again: {exc}")
                                   for name in self.ready.programs}
            self._emit(SensorTampered(changes=[TamperChange(kind="loader_killed" if rc is not None and rc < 0 else
                                                            "other", name="weightwarden-bpf",
                                                            detail=f"{detail}; starting another failed: {exc}"[:4000])],
                                      reattached=False, detected_ts=detected, blind_from_ts=self._last_drain_wall))
            raise BpfError(f"{detail}; starting another failed: {exc}") from None
        self._programs_lost = {}
        kept = self.ready.pin.on and self.ready.pin.reused
        detail += ("; another loader took over the pinned programs, which kept counting" if kept else
                   "; another loader attached the programs again: what was sent meanwhile was not attributed")
        self._log.error("loader_restarted", detail=detail)
        self._emit(SensorTampered(changes=[TamperChange(kind="loader_killed" if rc is not None and rc < 0 else "other",
                                                        name="weightwarden-bpf", detail=detail[:4000])],
                                  reattached=True, detected_ts=detected,
                                  blind_from_ts=None if kept else self._last_drain_wall))
        self.loader.set_raw_policy(self._raw_policy.kill, list(self._raw_policy.files))

    def set_raw_policy(self, policy: paths.RawPolicy) -> None:
        self._raw_policy = policy
        try:
            self.loader.set_raw_policy(policy.kill, list(policy.files))
        except BpfError as exc:
            self._log.error("raw_policy_not_sent", error=str(exc))

    # -- new senders, described while they live ------------------------------

    def _announced(self, owner: wire.Owner) -> None:
        self._seen[owner.tgid] = time.monotonic()
        try:
            self._todo.put_nowait(owner)
        except queue.Full:
            self.announce_dropped += 1

    def _describe_loop(self) -> None:
        while True:
            owner = self._todo.get()
            if owner is None:
                return
            try:
                # The kernel announces a process again only when it changed (exec, cgroup, credentials,
                # parent): what /proc said of it before is stale.
                self.procs.forget(owner.tgid)
                self.procs.describe(owner.tgid)
            except Exception as exc:  # noqa: BLE001 - one odd process must not stop the others
                self._log.warning("describe_error", pid=owner.tgid, error=repr(exc))

    def cgroup_path(self, cgroup_id: int) -> str | None:
        return self.cgroups.path(cgroup_id)

    def _hint(self, o: wire.Owner) -> ProcessInfo:
        """The kernel's view of a sender: what is reported if /proc no longer has it (or has another)."""
        return ProcessInfo(o.tgid, o.ppid, o.comm, "", o.uid, str(o.uid), (), self.cgroups.path(o.cgroup_id),
                           create_time(o.start_ns, self.boot_time))

    # -- one interval -----------------------------------------------------------

    def collect(self) -> PathInterval:
        local = self.local()
        try:
            drain = self.loader.drain(local)
        except BpfError as exc:
            self._revive(exc)
            drain = self.loader.drain(local)
        now_wall, now_mono = time.time(), time.monotonic_ns()
        self._last_drain_wall = now_wall

        def wall(ns: int) -> float | None:
            return round(now_wall - (now_mono - ns) / 1e9, 6) if ns else None

        out = PathInterval()
        # Who holds each loopback endpoint (this drain, then recent ones): names relay peers.
        # Busiest last: a listener's SYN-ACK shares its tuple with the accepted socket, which must win.
        on_host = [f for f in drain.flows if f.local or f.dst in local or not is_egress_destination(f.dst, local)]
        for f in sorted(on_host, key=lambda f: f.packets):
            if f.owner.known:
                key = (f.owner.netns if f.local else 0, f.src, f.sport, f.dst, f.dport)
                self._peer_owner[key] = (f.owner, now_wall)
        for key in [k for k, (_pid, seen) in self._peer_owner.items() if now_wall - seen > PEER_MEMORY_S]:
            del self._peer_owner[key]
        for f in drain.flows:
            if not f.bytes:
                continue
            owner = f.owner if f.owner.known else None
            if owner is None:
                if not f.local and is_egress_destination(f.dst, local):
                    out.unowned += f.bytes
                continue
            pid = owner.tgid
            acct = out.accounts.setdefault(pid, Account())
            if pid not in out.hints:
                out.hints[pid] = self._hint(owner)
            if f.local or not is_egress_destination(f.dst, local):
                self._local_peer(acct, f)
                continue
            d = acct.dest(f.dst, f.dport, f.protocol)
            d.add(f.bytes, wall(f.first_ns), wall(f.last_ns))
            if f.protocol == "tcp":
                d.accepted = f.accepted if d.accepted is None else (d.accepted and f.accepted)
            d.connections = (d.connections or 0) + f.sockets  # one record per socket and destination
        self._unix(drain.unix, out)
        self._raw(drain.raw, out, wall)
        self._forget(out)
        out.unowned += drain.lost.bytes
        out.lost = int(bool(drain.lost.bytes or drain.lost.events))
        out.header_bytes, out.header_packets = drain.totals.hdr_bytes, drain.totals.hdr_packets
        return out

    def _ifname(self, ifindex: int) -> str | None:
        name = self._ifnames.get(ifindex)
        if name is None:
            try:
                name = self._ifnames[ifindex] = socket.if_indextoname(ifindex)
            except OSError:
                return None
        return name

    def _raw(self, sends: list[wire.RawSend], out: PathInterval, wall: Callable[[int], float | None]) -> None:
        """Packet-socket sends: credited to their process (a destination named by the device, protocol raw),
        and kept whole for the raw_socket events."""
        self._ifnames.clear()  # devices come and go: names are read afresh each interval
        for r in sends:
            if not r.owner.known:
                out.unowned += r.bytes
                continue
            here = self._netns is None or r.owner.netns in (0, self._netns)
            name = self._ifname(r.ifindex) if here and r.ifindex else None
            family = "xdp" if r.family == wire.AF_XDP else "packet"
            pid = r.owner.tgid
            if pid not in out.hints:
                out.hints[pid] = self._hint(r.owner)
            if r.bytes:
                d = out.accounts.setdefault(pid, Account()).dest(raw_destination(family, name, r.ifindex), 0, "raw")
                d.add(r.bytes, wall(r.first_ns), wall(r.last_ns))
            out.raw.append(RawUse(
                pid=pid, ino=r.ino, family=family, socket_type=SOCKET_TYPES.get(r.sock_type, "other"),
                protocol=r.protocol, interface=name, ifindex=r.ifindex or None, bypass=r.bypass, bytes=r.bytes,
                packets=r.packets, killed=r.killed, denied=bool(r.flags & wire.RAW_DENIED), allowed=r.allowed,
                first_ts=wall(r.first_ns), last_ts=wall(r.last_ns)))

    def _forget(self, out: PathInterval) -> None:
        now = time.monotonic()
        for pid in out.accounts:
            self._seen[pid] = now
        for pid in [p for p, t in list(self._seen.items()) if now - t > FORGET_AFTER_S]:
            self._seen.pop(pid, None)
        self.procs.prune(set(self._seen))

    def _local_peer(self, acct: Account, f: wire.Flow) -> None:
        via = "tcp" if f.proto == socket.IPPROTO_TCP else "udp" if f.proto == socket.IPPROTO_UDP else None
        if via is None:
            return
        peer = self._peer_owner.get((f.owner.netns if f.local else 0, f.dst, f.dport, f.src, f.sport))
        pid = peer[0].tgid if peer else None
        if pid == f.owner.tgid:
            return  # a process talking to itself hands nothing on
        self._add_peer(acct, via, pid, f.dport, f.bytes, kernel=peer[0] if peer else None)

    def _add_peer(self, acct: Account, via: str, pid: int | None, port: int | None, nbytes: int,
                  kernel: wire.Owner | None = None) -> None:
        key = (via, pid, port)
        stats = acct.peers.get(key)
        if stats is None:
            info = self.procs.describe(pid) if pid is not None else None
            if kernel is not None and (info is None or abs(info.create_time - create_time(
                    kernel.start_ns, self.boot_time)) >= 0.05):
                info = self._hint(kernel)
            stats = acct.peers[key] = PeerStats(via, 0, pid, info.create_time if info else None,
                                                info.name if info else None, info.exe if info else None, port)
        stats.tx_bytes += nbytes

    def _unix(self, sends: list[wire.UnixSend], out: PathInterval) -> None:
        # The kernel names the reader once it has read; /proc (by the peer socket's inode) otherwise.
        unknown = {s.peer_ino for s in sends
                   if s.peer_ino and not s.peer.known and s.peer_ino not in self._unix_owner}
        if unknown:
            wanted = set(sorted(unknown)[:MAX_PEER_LOOKUPS])
            found = self.procs.owners(wanted)
            for ino in wanted:
                self._unix_owner[ino] = found.get(ino)
        if len(self._unix_owner) > 50_000:
            self._unix_owner.clear()
        for s in sends:
            if not s.bytes or not s.owner.known:
                continue
            pid = s.owner.tgid
            acct = out.accounts.setdefault(pid, Account())
            if pid not in out.hints:
                out.hints[pid] = self._hint(s.owner)
            if s.peer.known:
                if s.peer.tgid == pid:
                    continue  # a process talking to itself hands nothing on
                self._add_peer(acct, "unix", s.peer.tgid, None, s.bytes, s.peer)
                continue
            peer = self._unix_owner.get(s.peer_ino) if s.peer_ino else None
            if peer == pid:
                continue
            self._add_peer(acct, "unix", peer, None, s.bytes)


@paths.register("ebpf")
def _create(ctx: paths.PathContext) -> EbpfPath:
    root = find_cgroup2(ctx.proc_root)
    target = ctx.bpf_cgroup or root
    if target is None:
        raise paths.PathUnavailable("no cgroup v2 hierarchy is mounted")
    if not ctx.admin:
        raise paths.PathUnavailable("loading eBPF programs needs root (CAP_BPF and CAP_NET_ADMIN)")
    return EbpfPath(target, root, ctx.procs, ctx.names, ctx.local, ctx.bpf_pin_dir)
