"""Every byte that leaves is explained or alarming: per interface and interval, the bytes credited to
processes, the bytes protocol overhead explains, and the rest.

``attributed``: payload of the flows the routing sends out of the interface (the kernel's own route
lookup for each destination), plus the frames packet sockets bound to it sent. ``overhead``: headers,
from the interface's packet count: each packet carries a link-layer header and, unless a packet
socket sent it whole, the IP and transport headers the sensor measured on average this interval
(Ethernet + IPv4 + TCP with timestamps, 66 bytes, where the path does not measure). ``unexplained``:
what is left (never below zero): hand-built frames nobody was credited with, a blinded sensor,
forwarded traffic from machines behind this one.

Interfaces that carry traffic *into* local containers (bridges, veths whose peer is a container's
network namespace) transmit what the host forwards to its containers, downloads mostly: their
numbers are reported but not judged (``unexplained_tx_bytes`` is left out).

``explain`` and ``unexplained_events`` are pure; :class:`EgressExplainer` reads the host (routes,
links, which namespaces hold containers) and keeps the caches.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from weightwarden import logs
from weightwarden.agent.attribution import containers
from weightwarden.agent.attribution.report import PathInterval
from weightwarden.agent.kernel.interfaces import RouteTable
from weightwarden.events import SensorState, UnexplainedEgress

LINK_HEADER = 14  # Ethernet
DEFAULT_L3L4_HEADER = 20 + 32  # IPv4 + TCP with timestamps: a full-size segment's headers
UNEXPLAINED_MIN_BYTES = 1 << 20  # an interval's unexplained bytes raise an event from this many ...
UNEXPLAINED_MIN_SHARE = 0.02  # ... and from this share of what the interface sent
INTERNAL_REFRESH_S = 30.0


@dataclass(frozen=True, slots=True)
class IfaceInterval:
    name: str
    tx_bytes: int
    tx_packets: int


@dataclass(frozen=True, slots=True)
class Explained:
    name: str
    attributed: int
    overhead: int
    unexplained: int | None  # None: an interface into local containers, not judged


@dataclass
class Credited:
    """What the interval credited to each interface: payload bytes, and packet-socket frames."""

    payload: dict[str, int] = field(default_factory=dict)
    raw_packets: dict[str, int] = field(default_factory=dict)  # sent whole (SOCK_RAW): no header to explain
    dgram_packets: dict[str, int] = field(default_factory=dict)  # the device added only the link-layer header

    def add(self, name: str, nbytes: int) -> None:
        self.payload[name] = self.payload.get(name, 0) + nbytes


def header_per_packet(interval: PathInterval) -> float:
    """Bytes of headers each packet carries on the wire, from what the path measured this interval."""
    if interval.header_packets > 0:
        return LINK_HEADER + interval.header_bytes / interval.header_packets
    return float(LINK_HEADER + DEFAULT_L3L4_HEADER)


def explain(ifaces: Iterable[IfaceInterval], credited: Credited, per_packet: float,
            internal: set[str]) -> dict[str, Explained]:
    out: dict[str, Explained] = {}
    for i in ifaces:
        raw = credited.raw_packets.get(i.name, 0)
        dgram = credited.dgram_packets.get(i.name, 0)
        ip_packets = max(0, i.tx_packets - raw - dgram)
        overhead = round(ip_packets * per_packet) + dgram * LINK_HEADER
        attributed = credited.payload.get(i.name, 0)
        unexplained = None if i.name in internal else max(0, i.tx_bytes - attributed - overhead)
        out[i.name] = Explained(i.name, attributed, overhead, unexplained)
    return out


def unexplained_events(explained: dict[str, Explained], ifaces: Iterable[IfaceInterval], start_ts: float,
                       end_ts: float, sensor: SensorState | None) -> list[UnexplainedEgress]:
    out = []
    for i in ifaces:
        e = explained.get(i.name)
        if e is None or e.unexplained is None:
            continue
        if e.unexplained >= UNEXPLAINED_MIN_BYTES and e.unexplained >= UNEXPLAINED_MIN_SHARE * i.tx_bytes:
            out.append(UnexplainedEgress(interface=i.name, unexplained_tx_bytes=e.unexplained, tx_bytes=i.tx_bytes,
                                         attributed_tx_bytes=e.attributed, overhead_tx_bytes=e.overhead,
                                         tx_packets=i.tx_packets, first_ts=start_ts, last_ts=max(end_ts, start_ts),
                                         sensor=sensor))
    return out


def credit(interval: PathInterval, routes: RouteTable, ifname: dict[int, str]) -> Credited:
    """Each destination's payload to the interface the routing sends it out of; packet-socket frames to
    the device they are bound to."""
    out = Credited()
    routes.begin()
    for acct in interval.accounts.values():
        for (addr, _port, proto), d in acct.dests.items():
            if proto == "raw" and (addr.startswith("packet:") or addr.startswith("xdp:")):
                continue  # counted below, from the socket's own device
            index = routes.device(addr)
            name = ifname.get(index) if index is not None else None
            if name is not None:
                out.add(name, d.tx_bytes)
    for r in interval.raw:
        if r.interface is None:
            continue
        out.add(r.interface, r.bytes)
        table = out.dgram_packets if r.socket_type == "dgram" else out.raw_packets
        table[r.interface] = table.get(r.interface, 0) + r.packets
    return out


# -- which interfaces lead into local containers (side effects) -------------------------------------------


def _container_netns(proc_root: str) -> dict[int, int]:
    """The network namespaces processes in containers (by their cgroup) live in: inode -> one such pid."""
    own = Path(proc_root, "self", "ns", "net").stat().st_ino
    out: dict[int, int] = {}
    others: set[int] = set()
    try:
        pids = [p for p in os.listdir(proc_root) if p.isdigit()]  # noqa: PTH208 - hot path: pathlib costs 2-4x os here on 3.11
    except OSError:
        return out
    for pid in pids:
        try:
            netns = os.stat(Path(proc_root, pid, "ns", "net")).st_ino  # noqa: PTH116 - per pid: hot path: pathlib costs 2-4x os here on 3.11
            if netns == own or netns in out or netns in others:
                continue
            text = Path(proc_root, pid, "cgroup").read_text()
        except OSError:
            continue  # gone, or not ours to read
        if any(containers.parse(line.split(":", 2)[-1]) is not None for line in text.splitlines() if line):
            out[netns] = int(pid)
        else:
            others.add(netns)  # a namespace's first process decides (a container's processes share its cgroup)
    return out


def internal_links(proc_root: str = "/proc") -> set[str]:
    """Bridges, and veths whose peer is in a container's network namespace."""
    from pyroute2 import IPRoute

    internal: set[str] = set()
    with IPRoute() as ipr:
        peers: dict[int, list[str]] = {}
        for msg in ipr.get_links():
            name = msg.get_attr("IFLA_IFNAME")
            info = msg.get_attr("IFLA_LINKINFO")
            kind = info.get_attr("IFLA_INFO_KIND") if info is not None else None
            if kind == "bridge":
                internal.add(name)
            nsid = msg.get_attr("IFLA_LINK_NETNSID")
            if kind in ("veth", "netkit") and isinstance(nsid, int):
                peers.setdefault(nsid, []).append(name)
        if not peers:
            return internal
        for pid in _container_netns(proc_root).values():
            try:
                fd = os.open(Path(proc_root, str(pid), "ns", "net"), os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                continue
            try:
                nsid = (ipr.get_netnsid(fd=fd) or {}).get("nsid")
            except Exception:  # noqa: BLE001 - a namespace that went away between the reads
                nsid = None
            finally:
                os.close(fd)
            if isinstance(nsid, int):
                internal.update(peers.get(nsid, []))
    return internal


class EgressExplainer:
    """The per-interface numbers of each sample, and the unexplained_egress events they raise."""

    def __init__(self, proc_root: str = "/proc") -> None:
        self.proc_root = proc_root
        self.routes = RouteTable()
        self._internal: set[str] = set()
        self._internal_at = -1e9
        self._log = logs.get("agent.egress")

    def internal(self) -> set[str]:
        now = time.monotonic()
        if now - self._internal_at > INTERNAL_REFRESH_S:
            self._internal_at = now
            try:
                self._internal = internal_links(self.proc_root)
            except Exception as exc:  # noqa: BLE001 - a failed read judges every interface, never none
                self._log.warning("internal_links_unread", error=repr(exc)[:500])
                self._internal = set()
        return self._internal

    def explain(self, interval: PathInterval, ifaces: list[IfaceInterval]) -> dict[str, Explained]:
        ifname = {}
        for i in ifaces:
            try:
                ifname[socket.if_nametoindex(i.name)] = i.name
            except OSError:
                continue
        return explain(ifaces, credit(interval, self.routes, ifname), header_per_packet(interval), self.internal())

    def close(self) -> None:
        self.routes.close()
