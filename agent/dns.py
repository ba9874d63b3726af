"""Names of destinations, from the DNS answers this host received.

Inbound DNS responses (UDP source port 53) pass through the same NFQUEUE as
new flows (always accepted); each A/AAAA answer maps an address to the name
that was asked for, for its TTL (at least a minute, at most a day). Parsed
with scapy: DNS compression and record types are not worth hand-rolling.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

MIN_TTL, MAX_TTL = 60.0, 86400.0
MAX_NAMES = 100_000


def answers(packet: bytes) -> list[tuple[str, str, float]]:
    """(address, queried name, ttl) for each A/AAAA answer in an IPv4/IPv6 DNS response."""
    from scapy.layers.dns import DNS
    from scapy.layers.inet import IP
    from scapy.layers.inet6 import IPv6

    if len(packet) < 28:
        return []
    try:
        pkt = IP(packet) if packet[0] >> 4 == 4 else IPv6(packet)
        dns = pkt[DNS]
    except Exception:  # noqa: BLE001 - scapy raises all kinds of things on garbage; garbage has no names
        return []
    if not dns.qr or not dns.qd or not dns.an:
        return []
    qd = dns.qd[0] if isinstance(dns.qd, list) else dns.qd
    asked = qd.qname.decode(errors="replace").rstrip(".")
    out = []
    for first in dns.an if isinstance(dns.an, list) else [dns.an]:
        rr = first
        while rr is not None and hasattr(rr, "rrname"):  # records may also be chained as payloads
            if getattr(rr, "type", None) in (1, 28) and isinstance(rr.rdata, str):
                out.append((rr.rdata, asked, float(rr.ttl)))
            rr = rr.payload if rr.payload else None
    return out


class NameCache:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._names: dict[str, tuple[str, float]] = {}
        self._lock = threading.Lock()

    def feed(self, packet: bytes) -> int:
        found = answers(packet)
        now = self.clock()
        with self._lock:
            if len(self._names) > MAX_NAMES:
                self._names.clear()
            for addr, name, ttl in found:
                self._names[addr] = (name, now + min(max(ttl, MIN_TTL), MAX_TTL))
        return len(found)

    def name(self, addr: str) -> str | None:
        with self._lock:
            hit = self._names.get(addr)
        if hit is None or hit[1] < self.clock():
            return None
        return hit[0]
