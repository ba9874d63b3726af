"""A traffic sink for the outside namespace: TCP (raw or HTTP PUT/POST) and UDP.

Usage: python -m tests.helpers.sink ADDR TCP_PORT UDP_PORT
"""

from __future__ import annotations

import socket
import socketserver
import sys
import threading


class Handler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        conn: socket.socket = self.request
        data = conn.recv(1 << 16)
        if data[:4] in (b"PUT ", b"POST"):
            head, _, body = data.partition(b"\r\n\r\n")
            while not _ and len(data) < 65536:
                more = conn.recv(1 << 16)
                if not more:
                    return
                data += more
                head, _, body = data.partition(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            if b"transfer-encoding: chunked" in head.lower():  # curl -T - or -T FIFO: read to the last chunk
                tail = body[-5:]
                while not tail.endswith(b"0\r\n\r\n"):
                    chunk = conn.recv(1 << 20)
                    if not chunk:
                        return
                    tail = (tail + chunk)[-5:]
            got = len(body)
            while got < length:
                chunk = conn.recv(1 << 20)
                if not chunk:
                    return
                got += len(chunk)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            return
        while data:
            data = conn.recv(1 << 20)


class Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True
    request_queue_size = 512


def main() -> None:
    addr, tcp_port, udp_port = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
    udp.bind((addr, udp_port))

    def drain() -> None:
        while True:
            udp.recv(65536)

    threading.Thread(target=drain, daemon=True).start()
    with Server((addr, tcp_port), Handler) as server:
        print("ready", flush=True)
        server.serve_forever()


if __name__ == "__main__":
    main()
