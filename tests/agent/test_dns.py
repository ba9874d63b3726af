"""DNS answers parsed from hostile bytes: no names from garbage, never an exception, bounded cost."""

from __future__ import annotations

import random

from tests.agent.test_wire_formats import _dns_reply_packet
from weightwarden.agent.dns import NameCache, answers


def test_every_truncation_and_random_garbage_gives_no_exception() -> None:
    reply = _dns_reply_packet()
    for cut in range(len(reply)):
        assert isinstance(answers(reply[:cut]), list)
    rng = random.Random(7)
    for _ in range(2000):
        blob = bytes(rng.getrandbits(8) for _ in range(rng.randrange(0, 300)))
        assert isinstance(answers(blob), list)
    # Garbage behind a valid IPv4/UDP/53 header: the parser itself gets it.
    for _ in range(500):
        body = bytes(rng.getrandbits(8) for _ in range(rng.randrange(12, 200)))
        assert isinstance(answers(reply[:28] + body), list)


def test_a_query_or_another_port_yields_no_names() -> None:
    reply = bytearray(_dns_reply_packet())
    reply[20:22] = (5353).to_bytes(2, "big")  # not from port 53
    assert answers(bytes(reply)) == []
    reply = bytearray(_dns_reply_packet())
    reply[30] &= 0x7F  # QR bit cleared: a query, not an answer
    assert answers(bytes(reply)) == []


def test_a_flood_is_rate_limited_and_counted() -> None:
    now = [100.0]
    cache = NameCache(clock=lambda: now[0], max_per_s=10)
    reply = _dns_reply_packet()
    parsed = sum(cache.feed(reply) for _ in range(50))
    assert parsed == 10 and cache.skipped == 40
    now[0] += 1.0  # next second: parsing resumes
    assert cache.feed(reply) == 1
