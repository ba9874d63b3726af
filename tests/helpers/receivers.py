"""Alert receivers for tests: syslog over UDP, TCP and TLS (RFC 5424, octet counting), a webhook, one that hangs."""

from __future__ import annotations

import hashlib
import hmac
import json
import socket
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any


class SyslogListener:
    """Collects RFC 5424 messages: one per datagram (UDP), or octet-counted frames (TCP, TLS)."""

    def __init__(self, transport: str, tls: tuple[Path, Path] | None = None) -> None:
        self.transport = transport
        self.messages: list[bytes] = []
        kind = socket.SOCK_DGRAM if transport == "udp" else socket.SOCK_STREAM
        self.sock = socket.socket(socket.AF_INET, kind)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.ctx: ssl.SSLContext | None = None
        if tls:
            self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self.ctx.load_cert_chain(str(tls[0]), str(tls[1]))
        if kind == socket.SOCK_STREAM:
            self.sock.listen(8)
        self.sock.settimeout(0.2)
        self.stopped = False
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stopped:
            try:
                if self.transport == "udp":
                    self.messages.append(self.sock.recv(65536))
                    continue
                conn, _addr = self.sock.accept()
            except (TimeoutError, OSError):
                continue
            threading.Thread(target=self._stream, args=(conn,), daemon=True).start()

    def _stream(self, conn: socket.socket) -> None:
        try:
            if self.ctx is not None:
                conn = self.ctx.wrap_socket(conn, server_side=True)
            buf = b""
            while not self.stopped:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                buf += chunk
                while b" " in buf:  # RFC 6587 octet counting: "LEN SP MSG"
                    size, rest = buf.split(b" ", 1)
                    if len(rest) < int(size):
                        break
                    self.messages.append(rest[:int(size)])
                    buf = rest[int(size):]
        except (OSError, ValueError):
            return
        finally:
            conn.close()

    def close(self) -> None:
        self.stopped = True
        self.sock.close()


def parse_5424(message: bytes) -> dict[str, Any]:
    head, body = message.split(b"\xef\xbb\xbf", 1)
    pri_version, ts, host, app, procid, msgid, sd = head.decode().split(" ", 6)
    assert pri_version.startswith("<") and pri_version.endswith(">1"), pri_version
    return {"pri": int(pri_version[1:-2]), "ts": ts, "host": host, "app": app, "procid": procid, "msgid": msgid,
            "sd": sd.strip(), "body": body.decode()}


class WebhookListener:
    """Accepts signed JSON POSTs; keeps each with whether its HMAC signature was right."""

    def __init__(self, secret: str, status: int = 200) -> None:
        self.received: list[dict[str, Any]] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                ts = self.headers.get("X-Weightwarden-Timestamp", "")
                expected = "sha256=" + hmac.new(secret.encode(), ts.encode() + b"." + body, hashlib.sha256).hexdigest()
                owner.received.append({"doc": json.loads(body), "delivery": self.headers.get("X-Weightwarden-Delivery"),
                                       "event": self.headers.get("X-Weightwarden-Event"),
                                       "signed": hmac.compare_digest(expected, self.headers.get("X-Weightwarden-Signature", ""))})
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Hanging:
    """A TCP port that completes the handshake and then never answers (a receiver that is down but not gone)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]

    def close(self) -> None:
        self.sock.close()
