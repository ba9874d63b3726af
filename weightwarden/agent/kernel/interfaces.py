"""Per-interface transmit counters (from /proc/net/dev of this network namespace), this namespace's
cookie, and which device the routing sends a destination out of."""

from __future__ import annotations

import socket
import struct
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psutil

from weightwarden.agent.kernel.netlink import NetlinkSocket, attr, parse_attrs


@dataclass(frozen=True, slots=True)
class IfCounters:
    tx_bytes: int
    tx_packets: int
    rx_bytes: int
    rx_packets: int


def read_interfaces() -> dict[str, IfCounters]:
    counters = psutil.net_io_counters(pernic=True, nowrap=True)
    return {
        name: IfCounters(c.bytes_sent, c.packets_sent, c.bytes_recv, c.packets_recv) for name, c in counters.items()
    }


def counter_delta(new: int, old: int | None) -> int:
    """Delta of a monotonic counter; a reset (new < old) counts from zero."""
    if old is None:
        return 0
    return new - old if new >= old else new


def local_addresses() -> set[str]:
    """Every address configured in this namespace: traffic to them is not egress."""
    addrs = {"127.0.0.1", "::1"}
    for entries in psutil.net_if_addrs().values():
        for entry in entries:
            if entry.family.name in ("AF_INET", "AF_INET6"):
                addrs.add(entry.address.split("%", 1)[0])
    return addrs


def is_egress_destination(addr: str, local: set[str]) -> bool:
    return not (addr in local or addr.startswith("127.") or addr in ("::", "0.0.0.0") or addr.startswith("::ffff:127."))


SO_NETNS_COOKIE = 71  # Linux 5.14


def netns_cookie() -> int | None:
    """This network namespace's cookie (what the kernel's programs record as a socket's netns), or None
    on kernels before 5.14."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            raw = s.getsockopt(socket.SOL_SOCKET, SO_NETNS_COOKIE, 8)
    except OSError:
        return None
    return int.from_bytes(raw, "little")


NETLINK_ROUTE = 0
RTM_GETROUTE = 26
RTM_NEWROUTE = 24
RTA_DST = 1
RTA_OIF = 4
_RTMSG = struct.Struct("=BBBBBBBBI")


class RouteTable:
    """The device this namespace's routing sends each destination out of (RTM_GETROUTE: the kernel's own
    answer, ~3 us each), cached for ``ttl`` seconds. At most ``max_lookups`` new destinations are asked
    per call to :meth:`begin`'s interval; the rest get the default route's device."""

    def __init__(self, ttl: float = 30.0, max_lookups: int = 512, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self.max_lookups = max_lookups
        self.clock = clock
        self._cache: dict[str, tuple[int | None, float]] = {}
        self._budget = max_lookups
        self._sock: NetlinkSocket | None = None

    def begin(self) -> None:
        """A new interval: the lookup budget is full again, and stale entries go."""
        self._budget = self.max_lookups
        now = self.clock()
        if len(self._cache) > 4 * self.max_lookups:
            self._cache = {k: v for k, v in self._cache.items() if now - v[1] < self.ttl}

    def _lookup(self, addr: str) -> int | None:
        try:
            packed = socket.inet_pton(socket.AF_INET, addr)
            family = socket.AF_INET
        except OSError:
            try:
                packed = socket.inet_pton(socket.AF_INET6, addr)
                family = socket.AF_INET6
            except OSError:
                return None
        if self._sock is None:
            self._sock = NetlinkSocket(NETLINK_ROUTE, rcvbuf=1 << 16)
        payload = _RTMSG.pack(family, len(packed) * 8, 0, 0, 0, 0, 0, 0, 0) + attr(RTA_DST, packed)
        try:
            for rtype, body in self._sock.request(RTM_GETROUTE, payload):
                if rtype == RTM_NEWROUTE:
                    oif = parse_attrs(body, _RTMSG.size).get(RTA_OIF)
                    return int.from_bytes(oif[:4], sys.byteorder) if oif is not None else None
        except OSError:
            return None  # unreachable, or no route: nothing leaves for it
        return None

    def device(self, addr: str) -> int | None:
        now = self.clock()
        hit = self._cache.get(addr)
        if hit is not None and now - hit[1] < self.ttl:
            return hit[0]
        if self._budget <= 0:
            return self.device("0.0.0.0" if ":" not in addr else "::") if addr not in ("0.0.0.0", "::") else None
        self._budget -= 1
        got = self._lookup(addr)
        self._cache[addr] = (got, now)
        return got

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


@dataclass(frozen=True, slots=True)
class PacketSocket:
    """One AF_PACKET socket of this namespace, as /proc/net/packet lists it."""

    inode: int
    sock_type: int  # SOCK_RAW 3, SOCK_DGRAM 2
    protocol: int  # the ethertype bound, host order (0: none)
    ifindex: int  # 0: not bound
    uid: int


def read_packet_sockets(proc_root: str = "/proc") -> list[PacketSocket]:
    """The packet sockets open in this network namespace ([] where the kernel has no AF_PACKET)."""
    try:
        with Path(f"{proc_root}/net/packet").open(encoding="ascii", errors="replace") as fh:
            lines = fh.read().splitlines()[1:]
    except OSError:
        return []
    out = []
    for line in lines:
        # sk RefCnt Type Proto Iface R Rmem User Inode
        parts = line.split()
        if len(parts) < 9:
            continue
        try:
            out.append(PacketSocket(int(parts[8]), int(parts[2]), int(parts[3], 16), int(parts[4]), int(parts[7])))
        except ValueError:
            continue
    return out
