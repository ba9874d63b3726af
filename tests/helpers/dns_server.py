"""A tiny authoritative DNS server for tests: answers every A query with one address.

Usage: python -m tests.helpers.dns_server LISTEN_ADDR ANSWER_ADDR
"""

from __future__ import annotations

import socket
import sys

from scapy.layers.dns import DNS, DNSRR


def main() -> None:
    listen, answer = sys.argv[1], sys.argv[2]
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((listen, 53))
    print("ready", flush=True)
    while True:
        data, peer = sock.recvfrom(4096)
        try:
            query = DNS(data)
        except Exception:  # noqa: BLE001 - a test server ignores garbage
            continue
        qd = query.qd[0] if isinstance(query.qd, list) else query.qd
        an = DNSRR(rrname=qd.qname, type="A", ttl=300, rdata=answer) if qd.qtype == 1 else None
        reply = DNS(id=query.id, qr=1, aa=1, rd=query.rd, ra=1, qd=query.qd, an=an)
        sock.sendto(bytes(reply), peer)


if __name__ == "__main__":
    main()
