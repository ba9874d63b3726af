"""Parsers of kernel messages, fed with hand-built bytes (no root needed)."""

import socket
import struct

from weightwarden.agent.kernel import conntrack, nfqueue, sockdiag
from weightwarden.agent.kernel.netlink import attr, nested, parse_attrs


def test_attr_roundtrip_and_padding() -> None:
    blob = attr(1, b"abc") + attr(2, b"\x01\x02\x03\x04") + nested(3, attr(4, b"zz"))
    assert len(blob) % 4 == 0
    parsed = parse_attrs(blob)
    assert bytes(parsed[1]) == b"abc"
    assert bytes(parsed[2]) == b"\x01\x02\x03\x04"
    assert bytes(parse_attrs(parsed[3])[4]) == b"zz"


def test_parse_attrs_stops_on_garbage_length() -> None:
    assert parse_attrs(b"\x02\x00\x01\x00garbage") == {}
    assert parse_attrs(b"") == {}


def _ipv4_packet(proto: int, sport: int, dport: int) -> bytes:
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 40, 0, 0, 64, proto, 0,
                      socket.inet_aton("198.18.0.1"), socket.inet_aton("198.18.0.2"))
    return hdr + struct.pack("!HH", sport, dport) + b"\0" * 16


def test_parse_packet_ipv4_tcp_and_udp() -> None:
    flow = nfqueue.parse_packet(_ipv4_packet(6, 40000, 443))
    assert flow == nfqueue.FlowTuple(socket.AF_INET, 6, "198.18.0.1", 40000, "198.18.0.2", 443)
    assert nfqueue.parse_packet(_ipv4_packet(17, 5353, 53)).protocol == 17  # type: ignore[union-attr]


def test_parse_packet_ipv6() -> None:
    src = socket.inet_pton(socket.AF_INET6, "2001:db8::1")
    dst = socket.inet_pton(socket.AF_INET6, "2001:db8::2")
    pkt = struct.pack("!IHBB", 6 << 28, 8, 6, 64) + src + dst + struct.pack("!HH", 1234, 22) + b"\0" * 4
    flow = nfqueue.parse_packet(pkt)
    assert flow is not None and flow.family == socket.AF_INET6 and flow.dst == "2001:db8::2" and flow.dport == 22


def test_parse_packet_rejects_garbage_and_other_protocols() -> None:
    assert nfqueue.parse_packet(b"") is None
    assert nfqueue.parse_packet(b"\x45\x00") is None
    assert nfqueue.parse_packet(_ipv4_packet(1, 0, 0)) is None  # ICMP
    assert nfqueue.parse_packet(b"\x99" * 60) is None


def _diag_msg(bytes_sent: int | None, cookie: int = 77, inode: int = 1234) -> bytes:
    head = struct.pack("=BBBB", socket.AF_INET, 1, 0, 0)
    sockid = struct.pack("!HH", 40000, 443) + socket.inet_aton("198.18.0.1") + b"\0" * 12
    sockid += socket.inet_aton("198.18.0.2") + b"\0" * 12 + struct.pack("=I", 0) + cookie.to_bytes(8, "little")
    tail = struct.pack("=IIIII", 0, 0, 0, 1000, inode)
    msg = head + sockid + tail
    if bytes_sent is not None:
        info = bytearray(232)
        struct.pack_into("=Q", info, sockdiag.TCPI_BYTES_SENT, bytes_sent)
        msg += attr(sockdiag.INET_DIAG_INFO, bytes(info))
    msg += attr(sockdiag.INET_DIAG_CGROUP_ID, struct.pack("=Q", 99))
    return msg


def test_sockdiag_message_fields() -> None:
    rec = sockdiag.parse_message(memoryview(_diag_msg(123_456_789)), socket.IPPROTO_TCP)
    assert (rec.src, rec.sport, rec.dst, rec.dport) == ("198.18.0.1", 40000, "198.18.0.2", 443)
    assert rec.cookie == 77 and rec.inode == 1234 and rec.uid == 1000
    assert rec.bytes_sent == 123_456_789 and rec.cgroup_id == 99


def test_sockdiag_message_without_tcp_info() -> None:
    rec = sockdiag.parse_message(memoryview(_diag_msg(None)), socket.IPPROTO_UDP)
    assert rec.bytes_sent is None


def test_sockdiag_request_layout() -> None:
    req = sockdiag.build_request(socket.AF_INET, socket.IPPROTO_TCP, src="198.18.0.1", sport=1, dst="198.18.0.2",
                                 dport=2)
    assert len(req) == 56
    assert req[:2] == bytes([socket.AF_INET, socket.IPPROTO_TCP])
    assert req[-8:] == sockdiag.NO_COOKIE


def test_conntrack_flow_parse_and_payload() -> None:
    tuple_attrs = conntrack._tuple_attrs(socket.AF_INET, 17, "198.18.0.1", 5000, "198.18.0.2", 6000)
    counters = nested(conntrack.CTA_COUNTERS_ORIG, attr(1, struct.pack("!Q", 100)), attr(2, struct.pack("!Q", 102_800)))
    body = struct.pack("!BBH", socket.AF_INET, 0, 0) + tuple_attrs + counters + attr(conntrack.CTA_ID, b"\0\0\0\x05")
    flow = conntrack.parse_flow(memoryview(body))
    assert flow is not None
    assert (flow.src, flow.sport, flow.dst, flow.dport, flow.protocol) == ("198.18.0.1", 5000, "198.18.0.2", 6000, 17)
    assert flow.ct_id == 5
    # 100 datagrams of 1000 bytes: IP (20) + UDP (8) headers come off.
    assert flow.orig_payload == 100_000


def test_conntrack_parse_rejects_truncated() -> None:
    assert conntrack.parse_flow(memoryview(struct.pack("!BBH", 2, 0, 0))) is None


def _dns_reply_packet() -> bytes:
    """An IPv4/UDP packet from port 53 carrying a CNAME then an A answer."""
    import dns.message
    import dns.rrset

    query = dns.message.make_query("hf-mirror.example", "A")
    reply = dns.message.make_response(query)
    reply.answer.append(dns.rrset.from_text("hf-mirror.example.", 300, "IN", "CNAME", "cdn.example."))
    reply.answer.append(dns.rrset.from_text("cdn.example.", 30, "IN", "A", "203.0.113.7"))
    body = reply.to_wire()
    udp = struct.pack("!HHHH", 53, 40000, 8 + len(body), 0) + body
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0,
                     bytes([198, 18, 0, 53]), bytes([198, 18, 0, 1]))
    return ip + udp


def test_dns_answers_map_addresses_to_the_name_asked_for() -> None:
    from weightwarden.agent.attribution.dns import NameCache, answers

    reply = _dns_reply_packet()
    assert answers(reply) == [("203.0.113.7", "hf-mirror.example", 30.0)]
    assert answers(b"garbage") == [] and answers(b"") == []
    now = [0.0]
    cache = NameCache(clock=lambda: now[0])
    assert cache.feed(reply) == 1
    assert cache.name("203.0.113.7") == "hf-mirror.example"
    now[0] = 61.0  # a 30 s TTL is kept for the one-minute floor, then forgotten
    assert cache.name("203.0.113.7") is None
