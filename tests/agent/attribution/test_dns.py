"""DNS answers parsed from hostile bytes: no names from garbage, never an exception, bounded cost."""

from __future__ import annotations

import ipaddress
import math
import random

from tests.agent.test_wire_formats import _dns_reply_packet
from weightwarden.agent.attribution.dns import NameCache, answers


def _well_formed(found: list[tuple[str, str, float]]) -> bool:
    """(address, name, ttl) triples a destination could carry: a real address, a name, a sane TTL."""
    for address, name, ttl in found:
        ipaddress.ip_address(address)  # raises for anything else
        if not name or len(name) > 253 or not math.isfinite(ttl) or ttl < 0:
            return False
    return True


def test_the_whole_answer_names_its_address_and_every_truncation_names_nothing() -> None:
    reply = _dns_reply_packet()
    full = answers(reply)
    assert full and _well_formed(full), full
    for cut in range(len(reply)):
        assert answers(reply[:cut]) == [], f"a reply cut at {cut} of {len(reply)} bytes named {answers(reply[:cut])}"


def test_random_garbage_gives_no_exception_and_nothing_malformed() -> None:
    reply = _dns_reply_packet()
    rng = random.Random(7)
    named = 0
    for _ in range(2000):
        blob = bytes(rng.getrandbits(8) for _ in range(rng.randrange(0, 300)))
        found = answers(blob)
        assert _well_formed(found), found
        named += len(found)
    # Garbage behind a valid IPv4/UDP/53 header: the parser itself gets it.
    for _ in range(500):
        body = bytes(rng.getrandbits(8) for _ in range(rng.randrange(12, 200)))
        found = answers(reply[:28] + body)
        assert _well_formed(found), found
        named += len(found)
    assert named == 0, "random bytes named an address"


def test_a_query_or_another_port_yields_no_names() -> None:
    reply = bytearray(_dns_reply_packet())
    reply[20:22] = (5353).to_bytes(2, "big")  # not from port 53
    assert answers(bytes(reply)) == []
    reply = bytearray(_dns_reply_packet())
    reply[30] &= 0x7F  # QR bit cleared: a query, not an answer
    assert answers(bytes(reply)) == []


def _answer(i: int, txid: int = 0) -> bytes:
    """A distinct IPv4/UDP answer from port 53 for name number ``i``."""
    import struct

    import dns.message
    import dns.rrset

    query = dns.message.make_query(f"n{i}.example", "A", id=txid)
    reply = dns.message.make_response(query)
    reply.answer.append(dns.rrset.from_text(f"n{i}.example.", 60, "IN", "A", f"203.0.113.{i % 250 + 1}"))
    body = reply.to_wire()
    udp = struct.pack("!HHHH", 53, 40000, 8 + len(body), 0) + body
    return struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0, bytes([198, 18, 0, 53]),
                       bytes([198, 18, 0, 1])) + udp


def test_a_flood_is_rate_limited_and_counted() -> None:
    now = [100.0]
    cache = NameCache(clock=lambda: now[0], max_per_s=10)
    parsed = sum(cache.feed(_answer(i)) for i in range(50))
    assert parsed == 10 and cache.skipped == 40 and cache.parses == 10
    now[0] += 1.0  # next second: parsing resumes
    assert cache.feed(_answer(60)) == 1
    assert cache.name("203.0.113.61") == "n60.example"


def test_the_same_answer_again_is_not_parsed_again() -> None:
    # A resolver answers one question the same way until the TTL ends; a reflected flood repeats one
    # answer. Only the transaction id differs: the answer is parsed once and still names the address.
    now = [100.0]
    cache = NameCache(clock=lambda: now[0], max_per_s=10)
    named = sum(cache.feed(_answer(7, txid=t)) for t in range(5000))
    assert named == 5000 and cache.parses == 1 and cache.skipped == 0
    assert cache.name("203.0.113.8") == "n7.example"
    now[0] += 3600  # the name expired; the same answer arriving later names it again, for its TTL
    assert cache.name("203.0.113.8") is None
    assert cache.feed(_answer(7, txid=1)) == 1 and cache.name("203.0.113.8") == "n7.example"
    assert cache.parses == 1
    # A different answer (another name for the same address) is parsed, and wins.
    assert cache.feed(_answer(257)) == 1 and cache.parses == 2
    assert cache.name("203.0.113.8") == "n257.example"
