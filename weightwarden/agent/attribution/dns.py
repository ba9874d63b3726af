"""Names of destinations, from the DNS answers this host received.

Answers (UDP from port 53) reach us as whole IP packets: from the eBPF path's
ingress program, or from the fallback's NFLOG copy. Neither holds the packet:
a flood of answers costs names, never traffic or attribution. Each A/AAAA
answer maps an address to the name that was asked for, for its TTL (at least a
minute, at most a day). Parsed with dnspython (ISC licence): DNS compression
and record types are not worth hand-rolling. Garbage and short packets yield
no names, never an exception. An answer seen before (only its transaction id differs) is not parsed
again; past ``max_per_s`` new answers a second the rest are
counted and skipped, so parsing can never eat the agent's CPU.
"""

from __future__ import annotations

import struct
import threading
import time
from collections.abc import Callable

import dns.message
import dns.rdatatype

MIN_TTL, MAX_TTL = 60.0, 86400.0
MAX_NAMES = 100_000
MAX_PER_S = 1000
SEEN_ANSWERS = 4096  # answers remembered by content: a name asked again and again is parsed once


def _udp_payload(packet: bytes) -> bytes | None:
    """The UDP payload of an IPv4/IPv6 packet from source port 53; None otherwise."""
    if len(packet) < 28:
        return None
    version = packet[0] >> 4
    if version == 4:
        ihl = (packet[0] & 0x0F) * 4
        if packet[9] != 17 or ihl < 20 or len(packet) < ihl + 8:
            return None
        l4 = ihl
    elif version == 6:
        if len(packet) < 48 or packet[6] != 17:
            return None
        l4 = 40
    else:
        return None
    sport, _dport, length = struct.unpack_from("!HHH", packet, l4)
    if sport != 53:
        return None
    end = min(len(packet), l4 + length) if length >= 8 else len(packet)
    return packet[l4 + 8:end]


def answers(packet: bytes) -> list[tuple[str, str, float]]:
    """(address, queried name, ttl) for each A/AAAA answer in an IPv4/IPv6 DNS response."""
    payload = _udp_payload(packet)
    if not payload or len(payload) < 12:
        return []
    return _parse(payload)


def _parse(payload: bytes) -> list[tuple[str, str, float]]:
    try:
        msg = dns.message.from_wire(payload, ignore_trailing=True, one_rr_per_rrset=True)
    except Exception:  # noqa: BLE001 - hostile bytes: any parse failure means "no names", never a crash
        return []
    if not msg.flags & 0x8000 or not msg.question:  # not a response
        return []
    asked = msg.question[0].name.to_text(omit_final_dot=True)
    out = []
    for rrset in msg.answer:
        if rrset.rdtype not in (dns.rdatatype.A, dns.rdatatype.AAAA):
            continue
        for rdata in rrset:
            out.append((rdata.to_text(), asked, float(rrset.ttl)))
    return out


class NameCache:
    def __init__(self, clock: Callable[[], float] = time.monotonic, max_per_s: int = MAX_PER_S) -> None:
        self.clock = clock
        self.max_per_s = max_per_s
        self.skipped = 0  # answers not parsed because of the rate limit
        self._names: dict[str, tuple[str, float]] = {}
        self._lock = threading.Lock()
        self._window = 0.0
        self._parsed = 0
        self.parses = 0  # answers handed to the parser (the rest were known by content)
        # An answer without its transaction id -> what it says. Resolvers answer the same question
        # the same way until the TTL runs out, and a reflected flood repeats one answer: parsing
        # (about 0.1 ms each) is paid once per distinct answer.
        self._seen: dict[bytes, list[tuple[str, str, float]]] = {}

    def feed(self, packet: bytes) -> int:
        now = self.clock()
        payload = _udp_payload(packet)
        if not payload or len(payload) < 12:
            return 0
        key = payload[2:]
        found = self._seen.get(key)
        if found is None:
            if now - self._window >= 1.0:
                self._window, self._parsed = now, 0
            if self._parsed >= self.max_per_s:
                self.skipped += 1
                return 0
            self._parsed += 1
            self.parses += 1
            found = _parse(payload)
            if len(self._seen) >= SEEN_ANSWERS:
                self._seen.clear()
            self._seen[key] = found
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
