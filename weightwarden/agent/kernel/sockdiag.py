"""Sockets and their byte counters, read from the kernel with sock_diag.

TCP byte counts come from tcp_info's ``tcpi_bytes_sent``: payload bytes handed
to IP, retransmissions included, headers excluded. The destroy multicast groups
deliver the final tcp_info of every TCP socket as it is freed, keyed by the
same socket cookie, so a connection that lives 5 ms still has exact totals.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass

from weightwarden.agent.kernel.netlink import NETLINK_SOCK_DIAG, NLA_TYPE_MASK, NLATTR, NetlinkError, NetlinkSocket, parse_attrs

SOCK_DIAG_BY_FAMILY = 20
SOCK_DESTROY = 21
INET_DIAG_INFO = 2
INET_DIAG_PROTOCOL = 10
INET_DIAG_CGROUP_ID = 21

# Multicast groups that carry sockets being destroyed (linux/sock_diag.h).
SKNLGRP_INET_TCP_DESTROY = 1
SKNLGRP_INET_UDP_DESTROY = 2
SKNLGRP_INET6_TCP_DESTROY = 3
SKNLGRP_INET6_UDP_DESTROY = 4

TCP_ESTABLISHED = 1
TCP_SYN_RECV = 3
TCP_TIME_WAIT = 6
TCP_CLOSE = 7
TCP_LISTEN = 10
ALL_STATES = 0xFFF
# Mini sockets (request and time-wait) carry no tcp_info and no owner.
FULL_SOCKET_STATES = ALL_STATES & ~((1 << TCP_SYN_RECV) | (1 << TCP_TIME_WAIT))

_REQ = struct.Struct("=BBBxI")
_SOCKID_PORTS = struct.Struct("!HH")
_SOCKID_TAIL = struct.Struct("=I8s")
_MSG_HEAD = struct.Struct("=BBBB")
_MSG_TAIL = struct.Struct("=IIIII")
_U64 = struct.Struct("=Q")
NO_COOKIE = b"\xff" * 8

# Offsets inside struct tcp_info (linux/tcp.h), stable since 4.19.
TCPI_BYTES_ACKED = 120
TCPI_BYTES_SENT = 200
TCPI_MIN_LEN_FOR_SENT = TCPI_BYTES_SENT + 8


@dataclass(frozen=True, slots=True)
class SockRecord:
    """One socket as sock_diag reports it."""

    protocol: int  # socket.IPPROTO_TCP or IPPROTO_UDP
    family: int
    state: int
    src: str
    sport: int
    dst: str
    dport: int
    cookie: int
    inode: int
    uid: int
    cgroup_id: int | None
    bytes_sent: int | None  # TCP only: tcpi_bytes_sent


def _addr(family: int, raw: bytes | memoryview) -> str:
    if family == socket.AF_INET:
        return socket.inet_ntop(socket.AF_INET, bytes(raw[:4]))
    addr = ipaddress.IPv6Address(bytes(raw[:16]))
    # Report v4-mapped peers of dual-stack sockets as plain IPv4.
    return str(addr.ipv4_mapped or addr)


def _raw_addr(family: int, text: str) -> bytes:
    packed = socket.inet_pton(family, text)
    return packed + b"\0" * (16 - len(packed))


def build_request(
    family: int,
    protocol: int,
    states: int = ALL_STATES,
    *,
    with_info: bool = True,
    src: str | None = None,
    sport: int = 0,
    dst: str | None = None,
    dport: int = 0,
) -> bytes:
    ext = (1 << (INET_DIAG_INFO - 1)) if with_info else 0
    sockid = (
        _SOCKID_PORTS.pack(sport, dport)
        + (_raw_addr(family, src) if src else b"\0" * 16)
        + (_raw_addr(family, dst) if dst else b"\0" * 16)
        + _SOCKID_TAIL.pack(0, NO_COOKIE)
    )
    return _REQ.pack(family, protocol, ext, states) + sockid


def parse_message(body: memoryview, protocol: int | None = None) -> SockRecord:
    """Decode one inet_diag_msg; ``protocol`` is implied by the request in dumps."""
    family, state, _timer, _retrans = _MSG_HEAD.unpack_from(body, 0)
    sport, dport = _SOCKID_PORTS.unpack_from(body, 4)
    src = _addr(family, body[8:24])
    dst = _addr(family, body[24:40])
    _ifindex, cookie_raw = _SOCKID_TAIL.unpack_from(body, 40)
    _expires, _rq, _wq, uid, inode = _MSG_TAIL.unpack_from(body, 52)
    attrs = parse_attrs(body, 72)
    proto = protocol
    if INET_DIAG_PROTOCOL in attrs:
        proto = attrs[INET_DIAG_PROTOCOL][0]
    bytes_sent = None
    info = attrs.get(INET_DIAG_INFO)
    if info is not None and len(info) >= TCPI_MIN_LEN_FOR_SENT:
        (bytes_sent,) = _U64.unpack_from(info, TCPI_BYTES_SENT)
    cgroup_id = None
    cg = attrs.get(INET_DIAG_CGROUP_ID)
    if cg is not None and len(cg) >= 8:
        (cgroup_id,) = _U64.unpack_from(cg, 0)
    return SockRecord(
        protocol=proto if proto is not None else socket.IPPROTO_TCP,
        family=family,
        state=state,
        src=src,
        sport=sport,
        dst=dst,
        dport=dport,
        cookie=int.from_bytes(cookie_raw, "little"),
        inode=inode,
        uid=uid,
        cgroup_id=cgroup_id,
        bytes_sent=bytes_sent,
    )


def _quick_key(body: memoryview) -> tuple[bytes, int] | None:
    """(cookie, tcpi_bytes_sent) read without decoding the rest of the message."""
    off, end = 72, len(body)
    while off + 4 <= end:
        length, kind = NLATTR.unpack_from(body, off)
        if length < 4:
            return None
        if kind & NLA_TYPE_MASK == INET_DIAG_INFO:
            if length - 4 < TCPI_MIN_LEN_FOR_SENT:
                return None
            return bytes(body[44:52]) + bytes([body[1]]), _U64.unpack_from(body, off + 4 + TCPI_BYTES_SENT)[0]
        off += (length + 3) & ~3
    return None


class SockDiag:
    """Dumps and exact lookups of TCP/UDP sockets in this network namespace."""

    def __init__(self) -> None:
        self.nl = NetlinkSocket(NETLINK_SOCK_DIAG)
        # Idle sockets dominate big hosts: one whose cookie, state and counter
        # are unchanged since the last dump reuses its decoded record.
        self._last: dict[bytes, tuple[int, SockRecord]] = {}

    def close(self) -> None:
        self.nl.close()

    def dump(self, protocol: int, states: int = FULL_SOCKET_STATES) -> Iterator[SockRecord]:
        cache = self._last if protocol == socket.IPPROTO_TCP else None
        seen: dict[bytes, tuple[int, SockRecord]] = {}
        for family in (socket.AF_INET, socket.AF_INET6):
            req = build_request(family, protocol, states, with_info=protocol == socket.IPPROTO_TCP)
            for _type, body in self.nl.request(SOCK_DIAG_BY_FAMILY, req, dump=True):
                quick = _quick_key(body) if cache is not None else None
                if quick is not None:
                    key, sent = quick
                    hit = cache.get(key) if cache is not None else None
                    rec = hit[1] if hit is not None and hit[0] == sent else parse_message(body, protocol)
                    seen[key] = (sent, rec)
                    yield rec
                else:
                    yield parse_message(body, protocol)
        if cache is not None:
            self._last = seen

    def lookup(self, family: int, protocol: int, src: str, sport: int, dst: str, dport: int) -> SockRecord | None:
        """The socket that owns this exact 4-tuple, or None if it is gone."""
        req = build_request(family, protocol, with_info=True, src=src, sport=sport, dst=dst, dport=dport)
        try:
            for _type, body in self.nl.request(SOCK_DIAG_BY_FAMILY, req):
                return parse_message(body, protocol)
        except NetlinkError:
            return None
        return None


class DestroyListener:
    """Final state of TCP/UDP sockets as the kernel frees them (needs CAP_NET_ADMIN)."""

    def __init__(self) -> None:
        self.nl = NetlinkSocket(NETLINK_SOCK_DIAG, rcvbuf=1 << 24)
        for group in (SKNLGRP_INET_TCP_DESTROY, SKNLGRP_INET6_TCP_DESTROY):
            self.nl.join_group(group)

    def fileno(self) -> int:
        return self.nl.fileno()

    def close(self) -> None:
        self.nl.close()

    def drain(self) -> Iterator[SockRecord]:
        """Records queued since the last call; raises OSError(ENOBUFS) on overflow."""
        for rtype, body in self.nl.drain():
            if rtype == SOCK_DIAG_BY_FAMILY:
                yield parse_message(body)
