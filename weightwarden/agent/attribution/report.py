"""One interval's accounting as sample entries, bounded. Pure: no I/O.

Both attribution paths fill the same ``Account`` per process; this module turns
them into the ``processes`` of an egress sample, keeping every list within the
limits the collector accepts (a process sending 1-byte datagrams to 15,000
ports still yields a small sample: its busiest destinations, then one total).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NotRequired, TypedDict

from weightwarden.agent.kernel.procmap import ProcessInfo
from weightwarden.events import MAX_DESTINATIONS, MAX_LOCAL_PEERS, MAX_PIPES, MAX_PROCESSES, Container

Dest = tuple[str, int]
DestKey = tuple[str, int, str | None]  # address, port, protocol: ICMP and raw to one address stay apart
LOCAL_ONLY_MIN_BYTES = 4096  # a process that only talked locally is reported from this many bytes on


# -- a sample's entries as the agent builds them: the wire's shape (events.EgressSample), keys checked by mypy.
# Optional keys are absent, not null, as ``top --json`` has always printed them.


class DestinationEntry(TypedDict):
    address: str
    port: int
    tx_bytes: int
    protocol: NotRequired[str]
    accepted: NotRequired[bool]
    connections: NotRequired[int]
    first_ts: NotRequired[float]
    last_ts: NotRequired[float]
    name: NotRequired[str]  # the DNS name it was looked up by
    allowed: NotRequired[bool]  # allowlisted by the policy in force (the daemon marks it)


class PeerEntry(TypedDict):
    via: str
    tx_bytes: int
    pid: NotRequired[int]
    start_time: NotRequired[float]
    name: NotRequired[str]
    exe: NotRequired[str]
    port: NotRequired[int]


class OtherEntry(TypedDict):
    """What did not fit in a bounded list: how many entries, and their bytes."""

    count: int
    tx_bytes: int


class ProcessEntry(TypedDict):
    pid: int
    ppid: int | None
    name: str
    exe: str
    uid: int | None
    user: str | None
    cmdline: list[str]
    cgroup: str | None
    container: dict[str, str] | None
    start_time: float | None
    pipes: list[int]
    pipe_ends: dict[str, str]
    tx_bytes: int
    destinations: list[DestinationEntry]
    other_destinations: NotRequired[OtherEntry]
    local_peers: NotRequired[list[PeerEntry]]
    other_local_peers: NotRequired[OtherEntry]


@dataclass(slots=True)
class DestStats:
    tx_bytes: int = 0
    protocol: str | None = None
    accepted: bool | None = None
    connections: int | None = None
    first_ts: float | None = None
    last_ts: float | None = None

    def add(self, nbytes: int, first: float | None = None, last: float | None = None) -> None:
        self.tx_bytes += nbytes
        if first is not None:
            self.first_ts = first if self.first_ts is None else min(self.first_ts, first)
        if last is not None:
            self.last_ts = last if self.last_ts is None else max(self.last_ts, last)


@dataclass(slots=True)
class PeerStats:
    """Bytes sent to one local process (a possible relay)."""

    via: str
    tx_bytes: int = 0
    pid: int | None = None
    start_time: float | None = None
    name: str | None = None
    exe: str | None = None
    port: int | None = None


@dataclass(slots=True)
class Account:
    """What one process sent in one interval."""

    dests: dict[DestKey, DestStats] = field(default_factory=dict)
    peers: dict[tuple[str, int | None, int | None], PeerStats] = field(default_factory=dict)

    def dest(self, addr: str, port: int, protocol: str | None) -> DestStats:
        key = (addr, port, protocol)
        got = self.dests.get(key)
        if got is None:
            got = self.dests[key] = DestStats(protocol=protocol)
        return got

    @property
    def tx_bytes(self) -> int:
        return sum(d.tx_bytes for d in self.dests.values())

    @property
    def local_bytes(self) -> int:
        return sum(p.tx_bytes for p in self.peers.values())


@dataclass(frozen=True, slots=True)
class RawUse:
    """One packet socket (AF_PACKET, AF_XDP) as one process sent on it in one interval, from the kernel."""

    pid: int
    ino: int  # the socket's inode
    family: str  # packet, xdp
    socket_type: str  # raw, dgram, other
    protocol: int  # the ethertype bound (0: none)
    interface: str | None  # its device, when it is bound and in the agent's network namespace
    ifindex: int | None
    bypass: bool  # PACKET_QDISC_BYPASS (AF_XDP always): no qdisc, netfilter or cgroup program saw the frames
    bytes: int  # raw: whole frames; dgram: without the link-layer header
    packets: int
    killed: bool = False  # the policy's kill was sent from the send path
    denied: bool = False  # refused before anything left (bpf LSM)
    allowed: bool = False  # its executable is allowlisted (as the kernel read it)
    first_ts: float | None = None
    last_ts: float | None = None


@dataclass
class PathInterval:
    """What an attribution path measured in one interval."""

    accounts: dict[int, Account] = field(default_factory=dict)
    hints: dict[int, ProcessInfo] = field(default_factory=dict)  # the kernel's view of a sender, if /proc is gone
    unowned: int = 0
    lost: int = 0
    raw: list[RawUse] = field(default_factory=list)
    # IP and transport header bytes of the packets the path saw leave, and how many: the overhead per packet
    # that interface counters include and payload does not (0 packets: the path does not know).
    header_bytes: int = 0
    header_packets: int = 0


def _destination(addr: str, port: int, d: DestStats) -> DestinationEntry:
    out: DestinationEntry = {"address": addr, "port": port, "tx_bytes": d.tx_bytes}
    if d.protocol is not None:
        out["protocol"] = d.protocol
    if d.accepted is not None:
        out["accepted"] = d.accepted
    if d.connections is not None:
        out["connections"] = d.connections
    if d.first_ts is not None:
        out["first_ts"] = d.first_ts
    if d.last_ts is not None:
        out["last_ts"] = d.last_ts
    return out


def _peer(p: PeerStats) -> PeerEntry:
    out: PeerEntry = {"via": p.via, "tx_bytes": p.tx_bytes}
    if p.pid is not None:
        out["pid"] = p.pid
    if p.start_time is not None:
        out["start_time"] = p.start_time
    if p.name is not None:
        out["name"] = p.name
    if p.exe is not None:
        out["exe"] = p.exe
    if p.port is not None:
        out["port"] = p.port
    return out


def process_entry(pid: int, info: ProcessInfo | None,
                  dests: dict[Dest, int] | dict[DestKey, DestStats] | dict[Dest, DestStats],
                  peers: list[PeerStats] | None = None, container: Container | None = None) -> ProcessEntry:
    """One process's line in a sample: its identity and its busiest destinations (at most
    MAX_DESTINATIONS; the rest summed in ``other_destinations``) and local peers (at most
    MAX_LOCAL_PEERS), so a sample never outgrows what the collector accepts."""
    stats = {(k[0], k[1]) if len(k) == 2 else k: (v if isinstance(v, DestStats) else DestStats(tx_bytes=v))
             for k, v in dests.items()}
    ranked = sorted(stats.items(), key=lambda kv: kv[1].tx_bytes, reverse=True)
    shown, rest = ranked[:MAX_DESTINATIONS], ranked[MAX_DESTINATIONS:]
    entry: ProcessEntry = {
        "pid": pid,
        "ppid": info.ppid if info else None,
        "name": info.name if info else "?",
        "exe": info.exe if info else "",
        "uid": info.uid if info else None,
        "user": info.user if info else None,
        "cmdline": list(info.cmdline) if info else [],
        "cgroup": info.cgroup if info else None,
        "container": container.model_dump(exclude_none=True) if container else None,
        "start_time": info.create_time if info else None,
        "pipes": list(info.pipes)[:MAX_PIPES] if info else [],
        "pipe_ends": info.pipe_ends_json() if info else {},
        "tx_bytes": sum(d.tx_bytes for d in stats.values()),
        "destinations": [_destination(k[0], k[1], d) for k, d in shown],
    }
    if rest:
        entry["other_destinations"] = {"count": len(rest), "tx_bytes": sum(d.tx_bytes for _k, d in rest)}
    if peers:
        ordered = sorted(peers, key=lambda p: p.tx_bytes, reverse=True)
        entry["local_peers"] = [_peer(p) for p in ordered[:MAX_LOCAL_PEERS]]
        if len(ordered) > MAX_LOCAL_PEERS:
            cut = ordered[MAX_LOCAL_PEERS:]
            entry["other_local_peers"] = {"count": len(cut), "tx_bytes": sum(p.tx_bytes for p in cut)}
    return entry


def _rank(p: ProcessEntry) -> tuple[int, int]:
    return p["tx_bytes"], sum(peer["tx_bytes"] for peer in p.get("local_peers", []))


def bound_processes(processes: list[ProcessEntry]) -> tuple[list[ProcessEntry], OtherEntry | None]:
    """The MAX_PROCESSES busiest senders, and the rest as one total (None if nothing was cut)."""
    processes.sort(key=_rank, reverse=True)
    if len(processes) <= MAX_PROCESSES:
        return processes, None
    rest = processes[MAX_PROCESSES:]
    return processes[:MAX_PROCESSES], {"count": len(rest), "tx_bytes": sum(p["tx_bytes"] for p in rest)}
