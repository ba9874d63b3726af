"""Bad input is a 400 that says what was wrong, never a 500: huge offsets, NaN times, wrong JSON types.

Against a real ``serve``. Each of these was an unhandled error (500) before.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.helpers.console import Client, ConsoleServer, add_users
from weightwarden.collector.store.database import Store


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("badinput")
    db = f"sqlite:///{tmp}/collector.db"
    with Store(db).tx() as conn:
        Store.collector_alert(conn, "k-bad", "gpu-bad", "canary_read", "critical", "t", "e", {}, 1.0)
    tokens = add_users(db)
    server = ConsoleServer(db, tmp / "serve.log")
    try:
        yield {"tokens": tokens, "base": server.base, "log": tmp / "serve.log"}
    finally:
        server.stop()


@pytest.mark.parametrize(("path", "needle"), [
    (f"/api/v1/alerts?offset={2**63}", "offset"),
    (f"/api/v1/alerts?offset={2**64}", "offset"),
    ("/api/v1/alerts?limit=99999999999999999999999", "limit"),
    ("/api/v1/alerts?since=nan", "finite"),
    ("/api/v1/alerts?until=inf", "finite"),
    ("/api/v1/alerts?since=-inf", "finite"),
    ("/api/v1/alerts?since=1e400", "finite"),
    ("/api/v1/alerts?since=99999999999999999999d", "time"),
    ("/api/v1/hosts/gpu-bad/egress?since=nan", "finite"),
    (f"/api/v1/hosts/gpu-bad/egress?buckets={2**70}", "buckets"),
    (f"/api/v1/audit?offset={2**63}", "offset"),
])
def test_bad_queries_are_400(console: dict[str, Any], path: str, needle: str) -> None:
    status, body = Client(console["base"]).json("GET", path, console["tokens"]["admin"])
    assert status == 400 and needle in body["error"], (status, body)


def _post_raw(console: dict[str, Any], method: str, path: str, data: bytes) -> tuple[int, dict[str, str], bytes]:
    import urllib.error
    import urllib.request

    req = urllib.request.Request(console["base"] + path, data=data, method=method,
                                 headers={"Authorization": f"Bearer {console['tokens']['admin']}",
                                          "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


@pytest.mark.parametrize(("method", "path", "data", "needle"), [
    ("POST", "/api/v1/tokens", b'{"user": "viewer", "expires": 5}', b"'expires' must be a string"),
    ("POST", "/api/v1/tokens", b'{"user": "viewer", "label": {"a": 1}}', b"'label' must be a string"),
    ("POST", "/api/v1/tokens", b'{"user": "viewer", "expires": "1e400d"}', b"expires"),
    ("POST", "/api/v1/users", b'{"name": ["x"], "role": "viewer", "password": "12345678"}', b"'name' must be a string"),
    ("POST", "/api/v1/users", b'{"name": "x", "role": "viewer", "password": NaN}', b"not JSON"),
    ("POST", "/api/v1/users/viewer", b'{"role": 3}', b"'role' must be a string"),
    ("POST", "/api/v1/outputs", b'{"name": "o", "url": "https://h.invalid/", "options": [1, 2]}', b"options"),
    ("POST", "/api/v1/outputs", b'{"name": "o", "url": 7}', b"'url' must be a string"),
    ("PUT", "/api/v1/settings", b'{"session_idle_minutes": Infinity}', b"not JSON"),
    ("PUT", "/api/v1/settings", b'[]', b"JSON object"),
    ("PUT", "/api/v1/settings", b'{"session_idle_minutes": 1e400}', b"session_idle_minutes"),
    ("POST", "/api/v1/alerts/k-bad/comment", b'{"comment": 5}', b"'comment' must be a string"),
    ("POST", "/api/v1/alerts/k-bad/assign", b'{"assignee": {"x": 1}}', b"'assignee' must be a string"),
    ("POST", "/api/v1/alerts/k-bad/comment", b'{"comment": "x"' + b"]" * 100000, b"not JSON"),
    ("POST", "/api/v1/alerts/k-bad/comment", b"[" * 100000 + b"]" * 100000, b"not JSON"),
])
def test_bad_bodies_are_400(console: dict[str, Any], method: str, path: str, data: bytes, needle: bytes) -> None:
    status, _h, body = _post_raw(console, method, path, data)
    assert status == 400 and needle in body, (status, body[:300])


def test_nothing_was_a_500(console: dict[str, Any]) -> None:
    assert "request_failed" not in console["log"].read_text()
