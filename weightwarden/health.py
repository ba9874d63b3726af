"""Liveness and readiness over HTTP, for Kubernetes probes and load balancers (both daemons).

``GET /healthz`` answers whether the process still works (a failure means: restart it);
``GET /readyz`` whether it does its job now (a failure means: do not count on it yet). Each
answer is 200 or 503 with a one-line JSON body that says why, so ``curl`` and a probe's event
log show the reason. The checks are plain callables read from the server's own thread: they
must only read state the daemon keeps, never wait on it.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

LIVE_PATH, READY_PATH = "/healthz", "/readyz"


@dataclass(frozen=True)
class Probe:
    ok: bool
    status: str  # one word: ok, starting, stuck, stopping, disconnected...
    detail: str = ""

    def body(self) -> bytes:
        return (json.dumps({"status": self.status, "detail": self.detail}) + "\n").encode()


Check = Callable[[], Probe]


def split_listen(listen: str, flag: str) -> tuple[str, int]:
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"{flag} {listen!r}: use HOST:PORT")
    return host.strip("[]") or "0.0.0.0", int(port)


def respond(handler: BaseHTTPRequestHandler, probe: Probe) -> None:
    body = probe.body()
    handler.send_response(200 if probe.ok else 503)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(body)))
    handler.send_header("Cache-Control", "no-store")
    handler.end_headers()
    handler.wfile.write(body)


def answer(handler: BaseHTTPRequestHandler, live: Check, ready: Check) -> bool:
    """Serve a health path if the request is for one; False if it is not (the caller goes on)."""
    path = handler.path.split("?", 1)[0]
    if path not in (LIVE_PATH, READY_PATH):
        return False
    try:
        probe = live() if path == LIVE_PATH else ready()
    except Exception as exc:  # noqa: BLE001 - a check that fails is an unhealthy answer, never a dead thread
        probe = Probe(False, "error", repr(exc)[:200])
    respond(handler, probe)
    return True


class HealthServer:
    """/healthz and /readyz on HOST:PORT, from a daemon thread (``collector run --health-listen``)."""

    def __init__(self, listen: str, live: Check, ready: Check, flag: str = "--health-listen") -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
                if not answer(self, live, ready):
                    self.send_error(404, "only /healthz and /readyz here")

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's signature
                return None

        ThreadingHTTPServer.daemon_threads = True
        self.server = ThreadingHTTPServer(split_listen(listen, flag), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, name="ww-health", daemon=True)

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def start(self) -> HealthServer:
        self.thread.start()
        return self

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
