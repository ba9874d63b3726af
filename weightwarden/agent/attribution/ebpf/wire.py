"""The loader's wire format (weightwarden/agent/attribution/ebpf/bpf/loader.c), decoded. Pure: bytes in, records out.

Layouts mirror weightwarden/agent/attribution/ebpf/bpf/ww.h field by field (little-endian, padded by hand);
``tests/agent/attribution/ebpf/test_wire.py`` pins the sizes, so a change on one side that
is not made on the other fails a test, never a sample.
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass

T_READY, T_ERROR, T_FLOWS, T_UNIX, T_LOST, T_END, T_OWNER, T_DNS, T_RAW, T_TAMPER, T_TOTALS = range(1, 12)

OWNED, ACCEPTED = 1, 2  # ww_owner.flags
F_LOCAL, F_RAW, F_DECIDED, F_ONHOST = 1, 2, 4, 8  # ww_flow.flags
RAW_BYPASS, RAW_KILLED, RAW_DENIED, RAW_ALLOWED, RAW_BOUND = 1, 2, 4, 8, 16  # ww_raw.flags
AF_PACKET, AF_XDP = 17, 44
SOCK_DGRAM, SOCK_RAW = 2, 3

FRAME = struct.Struct("<II")
OWNER = struct.Struct("<IIIIQQQQIIQ16s")  # struct ww_owner
FLOW_KEY = struct.Struct("<Q16sHBBI")  # struct ww_flow_key
FLOW_TAIL = struct.Struct("<16sHHIQQQQ")  # struct ww_flow after its owner
UNIX_KEY = struct.Struct("<IIQQ")  # struct ww_unix_key
UNIX_TAIL = struct.Struct("<QQQ")  # struct ww_unix after its owner
LOST = struct.Struct("<QQQQ")
RAW_KEY = struct.Struct("<QII")  # struct ww_raw_key
RAW_TAIL = struct.Struct("<QIHHHHIQQQQ")  # struct ww_raw after its owner
TOTALS = struct.Struct("<QQQQ")  # struct ww_totals
FLOW_SIZE = FLOW_KEY.size + OWNER.size + FLOW_TAIL.size
UNIX_SIZE = UNIX_KEY.size + OWNER.size + UNIX_TAIL.size + OWNER.size
RAW_SIZE = RAW_KEY.size + OWNER.size + RAW_TAIL.size

PROTOCOLS = {socket.IPPROTO_TCP: "tcp", socket.IPPROTO_UDP: "udp", socket.IPPROTO_ICMP: "icmp", 58: "icmp"}


@dataclass(frozen=True, slots=True)
class Owner:
    """The process that wrote to a socket, as the kernel saw it then."""

    tgid: int
    ppid: int
    uid: int
    flags: int
    start_ns: int  # boot-time ns of the process start; with tgid it names one process
    cgroup_id: int
    netns: int
    exe_ino: int
    exe_dev: int
    comm: str

    @property
    def known(self) -> bool:
        return bool(self.flags & OWNED) and self.tgid > 0


@dataclass(frozen=True, slots=True)
class Flow:
    """Payload one socket sent to one destination within one drain interval."""

    cookie: int
    family: int  # 4 or 6
    proto: int
    src: str
    sport: int
    dst: str
    dport: int
    owner: Owner
    flags: int
    bytes: int
    packets: int
    first_ns: int  # CLOCK_MONOTONIC
    last_ns: int
    sockets: int = 1  # sockets counted in this record (one process to one destination, merged in the kernel or loader)

    @property
    def protocol(self) -> str:
        if self.flags & F_RAW:
            return "raw"
        return PROTOCOLS.get(self.proto, "other")

    @property
    def local(self) -> bool:
        return bool(self.flags & F_LOCAL)

    @property
    def accepted(self) -> bool:
        return bool(self.owner.flags & ACCEPTED)


@dataclass(frozen=True, slots=True)
class UnixSend:
    """Bytes one process wrote to one unix socket's peer within one interval."""

    owner: Owner
    peer_ino: int
    bytes: int
    first_ns: int
    last_ns: int
    peer: Owner  # the reader of the receiving socket, if it had read by the last send (else tgid 0)


@dataclass(frozen=True, slots=True)
class RawSend:
    """What one process sent on one packet socket (AF_PACKET, AF_XDP) within one interval."""

    cookie: int
    owner: Owner
    ino: int  # the socket's inode
    ifindex: int  # in the socket's own network namespace (owner.netns); 0: not bound
    family: int  # AF_PACKET or AF_XDP
    sock_type: int  # SOCK_RAW, SOCK_DGRAM
    protocol: int  # the ethertype bound, host order
    flags: int  # RAW_*
    bytes: int  # SOCK_RAW: whole frames; SOCK_DGRAM: without the link-layer header
    packets: int  # sends (one frame each, except through a TX ring)
    first_ns: int
    last_ns: int

    @property
    def bypass(self) -> bool:
        return bool(self.flags & RAW_BYPASS)

    @property
    def killed(self) -> bool:
        return bool(self.flags & RAW_KILLED)

    @property
    def allowed(self) -> bool:
        return bool(self.flags & RAW_ALLOWED)


@dataclass(frozen=True, slots=True)
class Totals:
    """What the programs added in one generation: ``counted`` is checked by the loader; the header
    bytes and packets give the protocol overhead per packet leaving."""

    counted: int = 0
    hdr_bytes: int = 0
    hdr_packets: int = 0


@dataclass(frozen=True, slots=True)
class Lost:
    bytes: int = 0
    packets: int = 0
    events: int = 0
    dns_limited: int = 0


def _owner(raw: tuple[object, ...]) -> Owner:
    tgid, ppid, uid, flags, start, cg, netns, exe_ino, exe_dev, _route, _counted, comm = raw
    assert isinstance(comm, bytes)
    return Owner(int(tgid), int(ppid), int(uid), int(flags), int(start), int(cg), int(netns),  # type: ignore[call-overload]
                 int(exe_ino), int(exe_dev), comm.split(b"\0", 1)[0].decode("utf-8", "backslashreplace"))  # type: ignore[call-overload]


def parse_owner(payload: bytes) -> Owner | None:
    if len(payload) < OWNER.size:
        return None
    return _owner(OWNER.unpack_from(payload, 0))


def _addr(family: int, raw: bytes) -> str:
    if family == 4:
        return socket.inet_ntop(socket.AF_INET, raw[:4])
    return socket.inet_ntop(socket.AF_INET6, raw)


def parse_flows(payload: bytes) -> list[Flow]:
    # A burst of 20,000 connections is a few processes talking to a few places: owners and
    # addresses repeat, so each distinct one is decoded once per frame.
    out: list[Flow] = []
    owners: dict[bytes, Owner] = {}
    addrs: dict[tuple[int, bytes], str] = {}
    view = memoryview(payload)
    for off in range(0, len(payload) - FLOW_SIZE + 1, FLOW_SIZE):
        cookie, daddr, dport, proto, family, _pad = FLOW_KEY.unpack_from(payload, off)
        if family not in (4, 6):
            continue
        raw = bytes(view[off + FLOW_KEY.size:off + FLOW_KEY.size + OWNER.size])
        owner = owners.get(raw)
        if owner is None:
            owner = owners[raw] = _owner(OWNER.unpack(raw))
        saddr, sport, flags, sockets, nbytes, packets, first, last = FLOW_TAIL.unpack_from(
            payload, off + FLOW_KEY.size + OWNER.size)
        src = addrs.get((family, saddr))
        if src is None:
            src = addrs[(family, saddr)] = _addr(family, saddr)
        dst = addrs.get((family, daddr))
        if dst is None:
            dst = addrs[(family, daddr)] = _addr(family, daddr)
        out.append(Flow(cookie, family, proto, src, sport, dst, dport, owner, flags, nbytes, packets, first, last,
                        max(sockets, 1)))
    return out


def parse_unix(payload: bytes) -> list[UnixSend]:
    out: list[UnixSend] = []
    for off in range(0, len(payload) - UNIX_SIZE + 1, UNIX_SIZE):
        _tgid, _pad, _start, peer = UNIX_KEY.unpack_from(payload, off)
        owner = _owner(OWNER.unpack_from(payload, off + UNIX_KEY.size))
        nbytes, first, last = UNIX_TAIL.unpack_from(payload, off + UNIX_KEY.size + OWNER.size)
        reader = _owner(OWNER.unpack_from(payload, off + UNIX_KEY.size + OWNER.size + UNIX_TAIL.size))
        out.append(UnixSend(owner, peer, nbytes, first, last, reader))
    return out


def parse_lost(payload: bytes) -> Lost:
    if len(payload) < LOST.size:
        return Lost()
    return Lost(*LOST.unpack_from(payload, 0))


def parse_raw(payload: bytes) -> list[RawSend]:
    out: list[RawSend] = []
    for off in range(0, len(payload) - RAW_SIZE + 1, RAW_SIZE):
        cookie, tgid, _pad = RAW_KEY.unpack_from(payload, off)
        owner = _owner(OWNER.unpack_from(payload, off + RAW_KEY.size))
        ino, ifindex, family, sock_type, protocol, _pad2, flags, nbytes, packets, first, last = RAW_TAIL.unpack_from(
            payload, off + RAW_KEY.size + OWNER.size)
        out.append(RawSend(cookie, owner, ino, ifindex, family, sock_type, protocol, flags, nbytes, packets, first,
                           last))
    return out


def parse_totals(payload: bytes) -> Totals:
    if len(payload) < TOTALS.size:
        return Totals()
    counted, hdr_bytes, hdr_packets, _pad = TOTALS.unpack_from(payload, 0)
    return Totals(counted, hdr_bytes, hdr_packets)
