"""An upload whose size the kernel reports: what a test compares credited bytes with.

    python -m tests.helpers.upload ADDR PORT BYTES [CHUNKS PAUSE_S] [--wait]

Prints its pid, (with --wait) waits for a line on stdin, sends BYTES over one TCP connection (in CHUNKS
pieces PAUSE_S apart), waits until the peer acknowledged everything, then prints "sent N": the payload
the kernel transmitted (TCP_INFO's tcpi_bytes_sent), retransmissions included, as the sensor counts.
Under load a veth drops and TCP retransmits: N, not BYTES, is what every byte counted once adds up to.
"""

from __future__ import annotations

import os
import socket
import struct
import sys
import time

TCPI_UNACKED = 24  # offsets in struct tcp_info
TCPI_BYTES_SENT = 200


def bytes_sent(s: socket.socket, timeout: float = 20.0) -> int:
    deadline = time.monotonic() + timeout
    while True:
        info = s.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
        if struct.unpack_from("<I", info, TCPI_UNACKED)[0] == 0 or time.monotonic() > deadline:
            return int(struct.unpack_from("<Q", info, TCPI_BYTES_SENT)[0])
        time.sleep(0.01)


def main() -> int:
    args = [a for a in sys.argv[1:] if a != "--wait"]
    addr, port, total = args[0], int(args[1]), int(args[2])
    chunks, pause = (int(args[3]), float(args[4])) if len(args) > 4 else (1, 0.0)
    s = socket.create_connection((addr, port))
    print(os.getpid(), flush=True)
    if "--wait" in sys.argv:
        sys.stdin.readline()
    for i in range(chunks):
        s.sendall(b"u" * (total // chunks + (total % chunks if i == chunks - 1 else 0)))
        if pause:
            time.sleep(pause)
    print(f"sent {bytes_sent(s)}", flush=True)
    s.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
