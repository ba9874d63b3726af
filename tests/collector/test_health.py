"""``collector run --health-listen``: /healthz and /readyz against a real broker (and serve's /readyz)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from tests.collector.test_service import collector
from tests.helpers.broker import Broker, free_port
from tests.helpers.netns import wait_for


def get(url: str) -> tuple[int, dict[str, str]]:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        body = exc.read()
        return exc.code, json.loads(body) if exc.headers.get_content_type() == "application/json" else {}
    except OSError:
        return 0, {}


def test_ready_while_subscribed_live_throughout(broker: Broker, tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "collector.log"
    proc = collector(broker, f"sqlite:///{tmp_path}/c.db", "--health-listen", f"127.0.0.1:{port}", log=log)
    base = f"http://127.0.0.1:{port}"
    try:
        assert wait_for(lambda: get(base + "/readyz")[0] == 200, 20), log.read_text()[-2000:]
        assert get(base + "/healthz") == (200, {"status": "ok", "detail": ""})
        broker.kill()
        assert wait_for(lambda: get(base + "/readyz")[0] == 503, 20), "not ready while the broker is away"
        code, body = get(base + "/readyz")
        assert body["status"] == "disconnected" and str(broker.port) in body["detail"]
        assert get(base + "/healthz")[0] == 200, "alive: waiting for a broker is no reason to restart"
        broker.start()
        assert wait_for(lambda: get(base + "/readyz")[0] == 200, 30), "ready again once resubscribed"
        assert get(base + "/nope")[0] == 404
    finally:
        proc.terminate()
        assert proc.wait(timeout=20) == 0
    assert get(base + "/healthz")[0] == 0


def test_a_taken_health_port_fails_the_start(broker: Broker, tmp_path: Path) -> None:
    import socket

    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        res = subprocess.run([*collector_argv(broker, tmp_path), "--health-listen", f"127.0.0.1:{port}"],
                             capture_output=True, text=True, timeout=60)
    assert res.returncode == 1 and "--health-listen" in res.stderr, res.stderr
    bad = subprocess.run([*collector_argv(broker, tmp_path), "--health-listen", "nope"], capture_output=True, text=True,
                         timeout=60)
    assert bad.returncode == 2 and "HOST:PORT" in bad.stderr


def collector_argv(broker: Broker, tmp_path: Path) -> list[str]:
    import sys

    return [sys.executable, "-m", "weightwarden.collector", "run", "--broker", broker.url, "--db",
            f"sqlite:///{tmp_path}/c.db"]


def asgi_get(app: Any, path: str) -> tuple[int, bytes]:
    """One GET through the ASGI application itself, in this process."""
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "scheme": "http",
             "path": path, "raw_path": path.encode(), "query_string": b"", "headers": [(b"host", b"127.0.0.1")],
             "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80), "root_path": ""}
    asyncio.run(app(scope, receive, send))
    start = next(m for m in sent if m["type"] == "http.response.start")
    return int(start["status"]), b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")


def test_serve_is_ready_while_its_database_answers(tmp_path: Path) -> None:
    from weightwarden.collector.store.database import Store
    from weightwarden.collector.web.app import create_app

    path = tmp_path / "c.db"
    store = Store(f"sqlite:///{path}")
    app = create_app(store)
    code, body = asgi_get(app, "/readyz")
    assert code == 200 and json.loads(body)["status"] == "ok"
    store.engine.dispose()
    path.unlink()
    path.mkdir()  # where the database was, now something SQLite cannot open
    code, body = asgi_get(app, "/readyz")
    assert code == 503 and json.loads(body)["status"] == "database", body
    assert asgi_get(app, "/healthz")[0] == 200
