"""Packet sockets as events: who holds one, on which interface, with or without qdisc bypass, what it sent.

Two sources: the kernel's sends (the eBPF path credits every send on an AF_PACKET or AF_XDP socket, in
any network namespace) and ``/proc/net/packet`` (sockets open in the agent's namespace, sending or not:
a DHCP client, an LLDP daemon, tcpdump). One ``raw_socket`` event when a socket is first seen, one when
the kernel killed its sender (with the bytes that left before: ``escaped_bytes``), and one a minute
while it keeps sending (cumulative bytes). ``allowed``: its executable is in ``raw_sockets.allow``;
``action``: what the policy does to the others. Pure but for the two callables it is given.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from weightwarden.agent.attribution import containers
from weightwarden.agent.attribution.paths import RawPolicy
from weightwarden.agent.attribution.report import RawUse
from weightwarden.agent.kernel.interfaces import PacketSocket
from weightwarden.agent.kernel.procmap import ProcessInfo
from weightwarden.events import MAX_ARGS, RawSocket, safe_text

REPEAT_S = 60.0  # a socket that keeps sending is reported again this often, with its total
FORGET_S = 600.0  # a socket not seen for this long is forgotten (seen again: a new event)
MAX_TRACKED = 4096
SOCKET_TYPES = {3: "raw", 2: "dgram"}


@dataclass
class _Tracked:
    pid: int
    ino: int
    family: str
    socket_type: str
    protocol: int
    interface: str | None
    ifindex: int | None
    bypass: bool = False
    tx_bytes: int = 0
    tx_packets: int = 0
    allowed: bool = False
    killed: bool = False
    killed_reported: bool = False
    first_ts: float | None = None
    last_ts: float | None = None
    emitted_at: float | None = None  # monotonic
    emitted_bytes: int = 0
    seen_at: float = 0.0


class RawSockets:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.policy = RawPolicy()
        self._tracked: dict[tuple[int, int], _Tracked] = {}

    def _allowed(self, info: ProcessInfo | None) -> bool:
        return info is not None and bool(info.exe) and info.exe in self.policy.allow

    def update(self, uses: list[RawUse], opened: list[PacketSocket], ifname: Callable[[int], str | None],
               owners: Callable[[set[int]], dict[int, int]],
               describe: Callable[[int], ProcessInfo | None]) -> list[RawSocket]:
        """This interval's kernel sends and open sockets -> the events to emit."""
        now = self.clock()
        touched: list[_Tracked] = []
        for u in uses:
            key = (u.pid, u.ino)
            t = self._tracked.get(key)
            if t is None:
                if len(self._tracked) >= MAX_TRACKED:
                    self._forget(now, force=True)
                t = self._tracked[key] = _Tracked(u.pid, u.ino, u.family, u.socket_type, u.protocol, u.interface,
                                                  u.ifindex)
            t.tx_bytes += u.bytes
            t.tx_packets += u.packets
            t.bypass = t.bypass or u.bypass
            t.allowed = t.allowed or u.allowed
            t.killed = t.killed or u.killed or u.denied
            t.interface = u.interface or t.interface
            t.first_ts = u.first_ts if t.first_ts is None else t.first_ts
            t.last_ts = u.last_ts or t.last_ts
            t.seen_at = now
            touched.append(t)
        known_inodes = {t.ino for t in self._tracked.values()}
        fresh = {s.inode: s for s in opened if s.inode not in known_inodes}
        by_inode = owners(set(fresh)) if fresh else {}
        for s in opened:
            if s.inode in fresh:
                pid = by_inode.get(s.inode)
                if pid is None:
                    continue  # its holder is gone, or not ours to read
                t = self._tracked[(pid, s.inode)] = _Tracked(pid, s.inode, "packet",
                                                             SOCKET_TYPES.get(s.sock_type, "other"), s.protocol,
                                                             ifname(s.ifindex) if s.ifindex else None,
                                                             s.ifindex or None)
                touched.append(t)
            for t in self._tracked.values():
                if t.ino == s.inode:
                    t.seen_at = now
        out: list[RawSocket] = []
        for t in {id(t): t for t in touched}.values():  # once each, in order
            info = describe(t.pid)
            t.allowed = t.allowed or self._allowed(info)
            due = (t.emitted_at is None or (t.killed and not t.killed_reported)
                   or (t.tx_bytes > t.emitted_bytes and now - t.emitted_at >= REPEAT_S))
            if not due:
                continue
            out.append(self._event(t, info))
            t.emitted_at, t.emitted_bytes = now, t.tx_bytes
            t.killed_reported = t.killed
        self._forget(now)
        return out

    def _event(self, t: _Tracked, info: ProcessInfo | None) -> RawSocket:
        action: Literal["alert", "kill", "none"] = "none" if t.allowed else ("kill" if self.policy.kill else "alert")
        container = containers.parse(info.cgroup) if info is not None else None
        return RawSocket(
            pid=t.pid, ppid=info.ppid if info else None, name=safe_text(info.name, 256) if info else None,
            exe=safe_text(info.exe) if info else None, uid=info.uid if info else None,
            user=safe_text(info.user, 256) if info else None,
            cmdline=[safe_text(a) for a in info.cmdline[:MAX_ARGS]] if info else [],
            cgroup=safe_text(info.cgroup) if info and info.cgroup else None, container=container,
            start_time=info.create_time if info else None,
            family="xdp" if t.family == "xdp" else "packet",
            socket_type=t.socket_type if t.socket_type in ("raw", "dgram") else "other",  # type: ignore[arg-type]
            protocol=t.protocol, interface=safe_text(t.interface, 256) if t.interface else None,
            ifindex=t.ifindex, bypass=t.bypass, tx_bytes=t.tx_bytes, tx_packets=t.tx_packets, allowed=t.allowed,
            action=action, killed=t.killed, escaped_bytes=t.tx_bytes if t.killed else None,
            first_ts=t.first_ts, last_ts=t.last_ts)

    def _forget(self, now: float, force: bool = False) -> None:
        if force:  # full: the longest unseen half goes
            ordered = sorted(self._tracked, key=lambda k: self._tracked[k].seen_at)
            stale = ordered[:len(ordered) // 2]
        else:
            stale = [k for k, t in self._tracked.items() if now - t.seen_at > FORGET_S]
        for key in stale:
            del self._tracked[key]
