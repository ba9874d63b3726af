"""The eBPF attribution path: every network namespace, owners resolved in the kernel.

Each sample drains what the kernel counted (see weightwarden/agent/attribution/ebpf/bpf/weightwarden.bpf.c)
and turns it into per-process accounts: bytes per destination with protocol,
accepted-or-not, socket count and first/last send time; bytes to other
processes on this host (loopback TCP/UDP, unix sockets) as local peers. New
senders are announced by the kernel as they appear, and described from /proc
on a worker thread while they still live, never under a lock.
"""

from __future__ import annotations

import os
import queue
import socket
import threading
import time
from collections.abc import Callable
import psutil

from weightwarden import logs
from weightwarden.agent.attribution.ebpf import wire
from weightwarden.agent.kernel.cgroupfs import CgroupPaths
from weightwarden.agent.attribution.dns import NameCache
from weightwarden.agent.attribution.ebpf.loader import BpfLoader
from weightwarden.agent.kernel.interfaces import is_egress_destination
from weightwarden.agent.kernel.procmap import ProcessInfo, ProcessTable
from weightwarden.agent.attribution.report import Account, PathInterval, PeerStats

CLK_TCK = os.sysconf("SC_CLK_TCK")
FORGET_AFTER_S = 60.0  # a process silent this long is described afresh when it next sends
PEER_MEMORY_S = 30.0  # how long a loopback socket's owner is remembered for naming peers
MAX_PEER_LOOKUPS = 64  # /proc scans for unknown unix peers per interval


def create_time(start_ns: int, boot_time: float) -> float:
    """A process's start as psutil computes it from /proc/PID/stat, from the kernel's start_boottime."""
    ticks = start_ns // (1_000_000_000 // CLK_TCK)
    return (float(ticks) / CLK_TCK) + boot_time


class EbpfPath:
    name = "ebpf"

    def __init__(self, cgroup_dir: str, cgroup_root: str | None, procs: ProcessTable, names: NameCache,
                 local: Callable[[], set[str]]) -> None:
        self.cgroup_dir = cgroup_dir
        self.procs = procs
        self.names = names
        self.local = local
        self.cgroups = CgroupPaths(cgroup_root)
        self.boot_time = psutil.boot_time()
        self.loader = BpfLoader(cgroup_dir, on_owner=self._announced, on_dns=names.feed)
        self._todo: queue.Queue[wire.Owner | None] = queue.Queue(maxsize=20_000)
        self._describer: threading.Thread | None = None
        # endpoint -> (owner, seen): the kernel's owner names a peer that exited before /proc was read
        self._peer_owner: dict[tuple[int, str, int, str, int], tuple[wire.Owner, float]] = {}
        self._unix_owner: dict[int, int | None] = {}
        self._seen: dict[int, float] = {}
        self._log = logs.get("agent.ebpf")
        self.announce_dropped = 0

    def start(self) -> dict[str, object]:
        info = self.loader.start()
        self._describer = threading.Thread(target=self._describe_loop, name="describe", daemon=True)
        self._describer.start()
        return info

    def close(self) -> None:
        self.loader.close()
        if self._describer is not None:
            self._todo.put(None)
            self._describer.join(timeout=2)

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
        drain = self.loader.drain(local)
        now_wall, now_mono = time.time(), time.monotonic_ns()

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
        self._forget(out)
        out.unowned += drain.lost.bytes
        out.lost = int(bool(drain.lost.bytes or drain.lost.events))
        return out

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
