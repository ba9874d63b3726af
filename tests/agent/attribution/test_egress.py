"""Every byte that leaves, explained or not (pure): per interface, payload credited by route and by the
packet socket's device, overhead from the packet count, the rest unexplained; an event when it is large."""

from __future__ import annotations

from weightwarden.agent.attribution.egress import (
    DEFAULT_L3L4_HEADER,
    LINK_HEADER,
    UNEXPLAINED_MIN_BYTES,
    Credited,
    IfaceInterval,
    credit,
    explain,
    header_per_packet,
    unexplained_events,
)
from weightwarden.agent.attribution.report import Account, PathInterval, RawUse
from weightwarden.agent.kernel.interfaces import RouteTable


class FakeRoutes(RouteTable):
    def __init__(self, table: dict[str, int]) -> None:
        super().__init__()
        self.table = table

    def _lookup(self, addr: str) -> int | None:
        return self.table.get(addr)


def test_overhead_comes_from_the_packets_and_the_measured_header_size() -> None:
    assert header_per_packet(PathInterval()) == LINK_HEADER + DEFAULT_L3L4_HEADER
    assert header_per_packet(PathInterval(header_bytes=720, header_packets=10)) == LINK_HEADER + 72  # IPv6 TCP
    ifaces = [IfaceInterval("eth0", 1_000 * 1514, 1_000)]
    got = explain(ifaces, Credited({"eth0": 1_000 * 1448}), 66.0, set())
    assert got["eth0"].overhead == 66_000 and got["eth0"].unexplained == 0


def test_frames_sent_whole_carry_no_header_to_explain_and_nobodys_frames_are_unexplained() -> None:
    ifaces = [IfaceInterval("eth0", 50 * 1014 + 10 * 1514, 60), IfaceInterval("veth9", 10_000, 10)]
    credited = Credited({"eth0": 10 * 1448 + 50 * 1014}, raw_packets={"eth0": 50})
    got = explain(ifaces, credited, 66.0, internal={"veth9"})
    assert got["eth0"].unexplained == 0 and got["eth0"].overhead == 10 * 66
    assert got["veth9"].unexplained is None  # into a container: reported, not judged
    alone = explain(ifaces, Credited(), 66.0, set())["eth0"]
    assert alone.unexplained == 50 * 1014 + 10 * 1514 - 60 * 66


def test_credit_follows_the_route_and_the_packet_sockets_device() -> None:
    acct = Account()
    acct.dest("198.51.100.7", 443, "tcp").add(5000)
    acct.dest("203.0.113.9", 53, "udp").add(300)
    acct.dest("packet:eth1", 0, "raw").add(9000)  # counted from the socket below, not routed
    interval = PathInterval(accounts={1: acct}, raw=[
        RawUse(1, 7, "packet", "raw", 0x800, "eth1", 3, True, 9000, 9),
        RawUse(1, 8, "packet", "dgram", 0x800, "eth1", 3, False, 1000, 2),
        RawUse(2, 9, "packet", "raw", 0, None, None, False, 700, 1)])  # unbound: no device to credit
    got = credit(interval, FakeRoutes({"198.51.100.7": 2, "203.0.113.9": 3}), {2: "eth0", 3: "eth1"})
    assert got.payload == {"eth0": 5000, "eth1": 300 + 9000 + 1000}
    assert got.raw_packets == {"eth1": 9} and got.dgram_packets == {"eth1": 2}


def test_an_event_only_when_unexplained_is_large_by_itself_and_as_a_share() -> None:
    big = IfaceInterval("eth0", 100 << 20, 70_000)
    small = IfaceInterval("eth1", 3 << 20, 2_000)
    internal = IfaceInterval("br0", 500 << 20, 300_000)
    explained = explain([big, small, internal], Credited({"eth0": 10 << 20, "eth1": 3 << 20}), 66.0, {"br0"})
    events = unexplained_events(explained, [big, small, internal], 10.0, 11.0, None)
    assert [e.interface for e in events] == ["eth0"]
    e = events[0]
    assert e.unexplained_tx_bytes == (100 << 20) - (10 << 20) - 70_000 * 66 and e.tx_packets == 70_000
    assert (e.first_ts, e.last_ts) == (10.0, 11.0)
    quiet = explain([IfaceInterval("eth0", UNEXPLAINED_MIN_BYTES - 1, 1)], Credited(), 0.0, set())
    assert unexplained_events(quiet, [IfaceInterval("eth0", UNEXPLAINED_MIN_BYTES - 1, 1)], 0, 1, None) == []
