"""Hold the first packet of each new outbound flow until its owner is known.

The kernel queues the packet (iptables NFQUEUE with --queue-bypass, so traffic
flows untouched when no agent listens); the sending process waits in
connect(), so it cannot exit before we map the socket to its pid. We always
answer ACCEPT: this queue observes, it never filters. Fail-open is set so a
full queue also lets packets through.
"""

from __future__ import annotations

import contextlib
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass

from weightwarden.agent.kernel.netlink import NETLINK_NETFILTER, NetlinkSocket, attr, parse_attrs

NFNL_SUBSYS_QUEUE = 3
NFQNL_MSG_PACKET = 0
NFQNL_MSG_VERDICT = 1
NFQNL_MSG_CONFIG = 2

NFQA_PACKET_HDR = 1
NFQA_VERDICT_HDR = 2
NFQA_PAYLOAD = 10
NFQA_UID = 16

NFQA_CFG_CMD = 1
NFQA_CFG_PARAMS = 2
NFQA_CFG_QUEUE_MAXLEN = 3
NFQA_CFG_MASK = 4
NFQA_CFG_FLAGS = 5
NFQNL_CFG_CMD_BIND = 1
NFQNL_CFG_CMD_UNBIND = 2
NFQNL_COPY_PACKET = 2
NFQA_CFG_F_FAIL_OPEN = 1
NFQA_CFG_F_UID_GID = 8

NF_ACCEPT = 1
COPY_RANGE = 4096  # ports of new flows, and whole DNS answers

_NFGEN = struct.Struct("!BBH")
_PKT_HDR = struct.Struct("!IHB")
_VERDICT = struct.Struct("!II")


@dataclass(frozen=True, slots=True)
class FlowTuple:
    """The 5-tuple of an outbound packet, as the sender sees it."""

    family: int
    protocol: int
    src: str
    sport: int
    dst: str
    dport: int


def parse_packet(payload: bytes | memoryview) -> FlowTuple | None:
    """5-tuple of an IPv4/IPv6 TCP or UDP packet; None for anything else."""
    data = bytes(payload)
    if not data:
        return None
    version = data[0] >> 4
    if version == 4 and len(data) >= 20:
        ihl = (data[0] & 0x0F) * 4
        proto = data[9]
        src = socket.inet_ntop(socket.AF_INET, data[12:16])
        dst = socket.inet_ntop(socket.AF_INET, data[16:20])
        family, l4 = socket.AF_INET, ihl
    elif version == 6 and len(data) >= 40:
        proto = data[6]
        src = socket.inet_ntop(socket.AF_INET6, data[8:24])
        dst = socket.inet_ntop(socket.AF_INET6, data[24:40])
        family, l4 = socket.AF_INET6, 40
    else:
        return None
    if proto not in (socket.IPPROTO_TCP, socket.IPPROTO_UDP) or len(data) < l4 + 4:
        return None
    sport, dport = struct.unpack_from("!HH", data, l4)
    return FlowTuple(family, proto, src, sport, dst, dport)


def _msg_type(msg: int) -> int:
    return (NFNL_SUBSYS_QUEUE << 8) | msg


class NfQueue:
    """A bound NFQUEUE that hands each packet's tuple to a callback, then accepts it."""

    def __init__(self, queue_num: int, maxlen: int = 4096) -> None:
        self.queue_num = queue_num
        self.nl = NetlinkSocket(NETLINK_NETFILTER, rcvbuf=1 << 23)
        self._config(attr(NFQA_CFG_CMD, struct.pack("!BxH", NFQNL_CFG_CMD_BIND, 0)))
        self._config(attr(NFQA_CFG_PARAMS, struct.pack("!IBxxx", COPY_RANGE, NFQNL_COPY_PACKET)))
        self._config(attr(NFQA_CFG_QUEUE_MAXLEN, struct.pack("!I", maxlen)))
        flags = NFQA_CFG_F_FAIL_OPEN | NFQA_CFG_F_UID_GID
        self._config(attr(NFQA_CFG_FLAGS, struct.pack("!I", flags)) + attr(NFQA_CFG_MASK, struct.pack("!I", flags)))
        self.packets = 0

    def _header(self) -> bytes:
        return _NFGEN.pack(socket.AF_UNSPEC, 0, self.queue_num)

    def _config(self, attrs: bytes) -> None:
        for _ in self.nl.request(_msg_type(NFQNL_MSG_CONFIG), self._header() + attrs):
            pass

    def fileno(self) -> int:
        return self.nl.fileno()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._config(attr(NFQA_CFG_CMD, struct.pack("!BxH", NFQNL_CFG_CMD_UNBIND, 0)))
        self.nl.close()

    def accept(self, packet_id: int) -> None:
        body = self._header() + attr(NFQA_VERDICT_HDR, _VERDICT.pack(NF_ACCEPT, packet_id))
        self.nl.send(_msg_type(NFQNL_MSG_VERDICT), 1, body)

    def serve_once(self, on_flow: Callable[[FlowTuple, int | None, bytes], None], block: bool = True) -> int:
        """Handle the packets of one datagram; returns how many were seen.

        ``on_flow`` runs before the verdict, while the sender is still held.
        Whatever it raises, the packet is accepted.
        """
        handled = 0
        for rtype, _seq, body in self.nl.recv_messages(block=block):
            if rtype != _msg_type(NFQNL_MSG_PACKET):
                continue
            attrs = parse_attrs(body, _NFGEN.size)
            hdr = attrs.get(NFQA_PACKET_HDR)
            if hdr is None:
                continue
            packet_id, _proto, _hook = _PKT_HDR.unpack_from(hdr, 0)
            try:
                payload = bytes(attrs.get(NFQA_PAYLOAD, b""))
                flow = parse_packet(payload)
                uid_raw = attrs.get(NFQA_UID)
                uid = struct.unpack("!I", uid_raw)[0] if uid_raw is not None else None
                if flow is not None:
                    on_flow(flow, uid, payload)
            finally:
                self.accept(packet_id)
            handled += 1
            self.packets += 1
        return handled
