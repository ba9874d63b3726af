"""A tiny authoritative DNS server for tests: answers every A query with one address.

Usage: python -m tests.helpers.dns_server LISTEN_ADDR ANSWER_ADDR
"""

from __future__ import annotations

import socket
import sys

import dns.message
import dns.rdatatype
import dns.rrset


def main() -> None:
    listen, answer = sys.argv[1], sys.argv[2]
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((listen, 53))
    print("ready", flush=True)
    while True:
        data, peer = sock.recvfrom(4096)
        try:
            query = dns.message.from_wire(data)
        except Exception:  # noqa: BLE001 - a test server ignores garbage
            continue
        reply = dns.message.make_response(query)
        question = query.question[0]
        if question.rdtype == dns.rdatatype.A:
            reply.answer.append(dns.rrset.from_text(question.name, 300, "IN", "A", answer))
        sock.sendto(reply.to_wire(), peer)


if __name__ == "__main__":
    main()
