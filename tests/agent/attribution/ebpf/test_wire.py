"""The loader's records decoded, byte for byte (loader.c asserts the same sizes at compile time)."""

from __future__ import annotations

import socket
import struct

from weightwarden.agent.attribution.ebpf import wire
from weightwarden.agent.attribution.ebpf.loader import local_command


def _owner(tgid: int, comm: bytes = b"curl", flags: int = wire.OWNED) -> bytes:
    return wire.OWNER.pack(tgid, 1, 1000, flags, 5_000_000_000, 77, 3, 42, 8, 0, 0, comm.ljust(16, b"\0"))


def test_sizes_match_the_c_structs() -> None:
    assert (wire.OWNER.size, wire.FLOW_KEY.size, wire.FLOW_SIZE) == (80, 32, 32 + 136)
    assert (wire.UNIX_KEY.size, wire.UNIX_SIZE, wire.LOST.size) == (24, 24 + 184, 32)


def test_flows_round_trip() -> None:
    dst = socket.inet_pton(socket.AF_INET, "198.18.0.2").ljust(16, b"\0")
    src = socket.inet_pton(socket.AF_INET, "198.18.0.1").ljust(16, b"\0")
    v6 = socket.inet_pton(socket.AF_INET6, "2001:db8::7")
    rec = (wire.FLOW_KEY.pack(11, dst, 443, socket.IPPROTO_TCP, 4, 0) + _owner(321, flags=wire.OWNED | wire.ACCEPTED)
           + wire.FLOW_TAIL.pack(src, 40000, 0, 0, 1500, 3, 10, 20))
    rec6 = (wire.FLOW_KEY.pack(12, v6, 0, 1, 6, 0) + _owner(0, flags=0)
            + wire.FLOW_TAIL.pack(v6, 0, wire.F_RAW | wire.F_LOCAL, 0, 9, 1, 5, 5))
    flows = wire.parse_flows(rec + rec6 + b"\0" * 7)  # a torn tail is ignored
    assert len(flows) == 2
    a, b = flows
    assert (a.cookie, a.src, a.sport, a.dst, a.dport, a.bytes, a.protocol) == (11, "198.18.0.1", 40000, "198.18.0.2",
                                                                             443, 1500, "tcp")
    assert a.accepted and a.owner.known and a.owner.comm == "curl" and not a.local
    assert (b.dst, b.protocol, b.local, b.owner.known) == ("2001:db8::7", "raw", True, False)


def test_unix_and_lost_and_short_payloads() -> None:
    rec = (wire.UNIX_KEY.pack(321, 0, 5, 99) + _owner(321) + wire.UNIX_TAIL.pack(4096, 1, 2) + _owner(654, b"relay"))
    (u,) = wire.parse_unix(rec)
    assert (u.owner.tgid, u.peer_ino, u.bytes, u.peer.tgid, u.peer.comm) == (321, 99, 4096, 654, "relay")
    assert wire.parse_lost(struct.pack("<QQQQ", 1, 2, 3, 4)) == wire.Lost(1, 2, 3, 4)
    assert wire.parse_lost(b"") == wire.Lost()
    assert wire.parse_owner(b"short") is None
    assert wire.parse_flows(b"x" * 100) == []


def test_the_loader_is_told_the_hosts_addresses_or_to_merge_nothing() -> None:
    assert local_command({"198.18.0.1", "::1"}) == b"local 198.18.0.1 ::1\n"
    assert local_command({f"2001:db8::{i:x}" for i in range(10_000)}) == b"local -\n"  # longer than its line


def test_merged_records_carry_their_socket_count() -> None:
    dst = socket.inet_pton(socket.AF_INET, "198.18.0.2").ljust(16, b"\0")
    one = wire.FLOW_KEY.pack(1, dst, 443, socket.IPPROTO_TCP, 4, 0) + _owner(9) + wire.FLOW_TAIL.pack(
        dst, 1, 0, 0, 10, 1, 1, 2)  # a kernel record: 0 means one socket
    merged = wire.FLOW_KEY.pack(2, dst, 443, socket.IPPROTO_TCP, 4, 0) + _owner(9) + wire.FLOW_TAIL.pack(
        dst, 1, 0, 250, 10, 1, 1, 2)
    assert [f.sockets for f in wire.parse_flows(one + merged)] == [1, 250]
