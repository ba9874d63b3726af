"""Per-flow byte counters for UDP (and what TCP sockets cannot tell) from conntrack.

Conntrack counts IP bytes (headers included) once ``nf_conntrack_acct`` is on;
we convert to payload bytes with the fixed IP+UDP header size so every
protocol is accounted at the same layer as tcpi_bytes_sent.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from weightwarden.agent.kernel.netlink import NETLINK_NETFILTER, NetlinkError, NetlinkSocket, attr, nested, parse_attrs

NFNL_SUBSYS_CTNETLINK = 1
IPCTNL_MSG_CT_NEW = 0
IPCTNL_MSG_CT_GET = 1
IPCTNL_MSG_CT_DELETE = 2
NFNLGRP_CONNTRACK_DESTROY = 3

CTA_TUPLE_ORIG = 1
CTA_TUPLE_REPLY = 2
CTA_COUNTERS_ORIG = 9
CTA_COUNTERS_REPLY = 10
CTA_ID = 12
CTA_TUPLE_IP = 1
CTA_TUPLE_PROTO = 2
CTA_IP_V4_SRC = 1
CTA_IP_V4_DST = 2
CTA_IP_V6_SRC = 3
CTA_IP_V6_DST = 4
CTA_PROTO_NUM = 1
CTA_PROTO_SRC_PORT = 2
CTA_PROTO_DST_PORT = 3
CTA_COUNTERS_PACKETS = 1
CTA_COUNTERS_BYTES = 2

ACCT_SYSCTL = Path("/proc/sys/net/netfilter/nf_conntrack_acct")

_NFGEN = struct.Struct("!BBH")
_BE64 = struct.Struct("!Q")
_BE16 = struct.Struct("!H")


@dataclass(frozen=True, slots=True)
class CtFlow:
    family: int
    protocol: int
    src: str
    sport: int
    dst: str
    dport: int
    ct_id: int
    orig_packets: int
    orig_bytes: int

    @property
    def orig_payload(self) -> int:
        """Bytes sent by the originator above the transport header."""
        ip = 20 if self.family == socket.AF_INET else 40
        l4 = 8 if self.protocol == socket.IPPROTO_UDP else 0
        return max(0, self.orig_bytes - self.orig_packets * (ip + l4))


def _tuple_attrs(family: int, protocol: int, src: str, sport: int, dst: str, dport: int) -> bytes:
    if family == socket.AF_INET:
        ip = attr(CTA_IP_V4_SRC, socket.inet_pton(family, src)) + attr(CTA_IP_V4_DST, socket.inet_pton(family, dst))
    else:
        ip = attr(CTA_IP_V6_SRC, socket.inet_pton(family, src)) + attr(CTA_IP_V6_DST, socket.inet_pton(family, dst))
    proto = attr(CTA_PROTO_NUM, bytes([protocol])) + attr(CTA_PROTO_SRC_PORT, _BE16.pack(sport)) + attr(
        CTA_PROTO_DST_PORT, _BE16.pack(dport)
    )
    return nested(CTA_TUPLE_ORIG, nested(CTA_TUPLE_IP, ip), nested(CTA_TUPLE_PROTO, proto))


def parse_flow(body: memoryview) -> CtFlow | None:
    family = body[0]
    top = parse_attrs(body, _NFGEN.size)
    orig = top.get(CTA_TUPLE_ORIG)
    if orig is None:
        return None
    tup = parse_attrs(orig)
    ip = parse_attrs(tup[CTA_TUPLE_IP]) if CTA_TUPLE_IP in tup else {}
    proto = parse_attrs(tup[CTA_TUPLE_PROTO]) if CTA_TUPLE_PROTO in tup else {}
    if family == socket.AF_INET:
        s_raw, d_raw = ip.get(CTA_IP_V4_SRC), ip.get(CTA_IP_V4_DST)
    else:
        s_raw, d_raw = ip.get(CTA_IP_V6_SRC), ip.get(CTA_IP_V6_DST)
    if s_raw is None or d_raw is None or CTA_PROTO_NUM not in proto:
        return None
    sport = _BE16.unpack(proto[CTA_PROTO_SRC_PORT])[0] if CTA_PROTO_SRC_PORT in proto else 0
    dport = _BE16.unpack(proto[CTA_PROTO_DST_PORT])[0] if CTA_PROTO_DST_PORT in proto else 0
    packets = nbytes = 0
    if CTA_COUNTERS_ORIG in top:
        counters = parse_attrs(top[CTA_COUNTERS_ORIG])
        packets = _BE64.unpack(counters[CTA_COUNTERS_PACKETS])[0] if CTA_COUNTERS_PACKETS in counters else 0
        nbytes = _BE64.unpack(counters[CTA_COUNTERS_BYTES])[0] if CTA_COUNTERS_BYTES in counters else 0
    ct_id = struct.unpack("!I", top[CTA_ID])[0] if CTA_ID in top else 0
    return CtFlow(
        family=family,
        protocol=proto[CTA_PROTO_NUM][0],
        src=socket.inet_ntop(family, bytes(s_raw)),
        sport=sport,
        dst=socket.inet_ntop(family, bytes(d_raw)),
        dport=dport,
        ct_id=ct_id,
        orig_packets=packets,
        orig_bytes=nbytes,
    )


def acct_enabled(path: Path = ACCT_SYSCTL) -> bool | None:
    """Whether conntrack accounting is on; None when conntrack is absent."""
    try:
        return path.read_text().strip() == "1"
    except OSError:
        return None


def enable_acct(path: Path = ACCT_SYSCTL) -> bool:
    """Turn accounting on (per network namespace); False if we may not."""
    try:
        path.write_text("1\n")
    except OSError:
        return False
    return True


class Conntrack:
    """Exact-tuple queries and destroy events of this namespace's conntrack table."""

    def __init__(self, events: bool = True) -> None:
        self.query = NetlinkSocket(NETLINK_NETFILTER)
        self.events = NetlinkSocket(NETLINK_NETFILTER, rcvbuf=1 << 24) if events else None
        if self.events is not None:
            self.events.join_group(NFNLGRP_CONNTRACK_DESTROY)

    def close(self) -> None:
        self.query.close()
        if self.events is not None:
            self.events.close()

    def get(self, family: int, protocol: int, src: str, sport: int, dst: str, dport: int) -> CtFlow | None:
        body = _NFGEN.pack(family, 0, 0) + _tuple_attrs(family, protocol, src, sport, dst, dport)
        try:
            for _t, reply in self.query.request((NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_GET, body):
                return parse_flow(reply)
        except NetlinkError:
            return None
        return None

    def drain_destroyed(self) -> Iterator[CtFlow]:
        """Flows that ended since the last call; raises OSError(ENOBUFS) on overflow."""
        if self.events is None:
            return
        for rtype, body in self.events.drain():
            if rtype == (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_DELETE:
                flow = parse_flow(body)
                if flow is not None:
                    yield flow
