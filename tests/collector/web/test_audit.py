"""Every authentication and administration action is in the audit trail: who, what, from where, when.

Against a real ``serve`` and the real CLI: each administration action done over the API, from the
console's admin page and from the CLI appears once in ``GET /api/v1/audit`` (admins only) and on the
admin page; the trail is append-only (the database refuses UPDATE and DELETE), retention keeps it, and
an output that asked for it is sent every entry while one that did not is sent none.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.exc import DBAPIError

from tests.helpers.console import Client, ConsoleServer, add_users, cli, login, page_csrf
from weightwarden.collector.store.database import Store
from weightwarden.collector.store.retention import Retention, run


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("audit")
    db = f"sqlite:///{tmp}/collector.db"
    Store(db)
    tokens = add_users(db)
    # Two outputs: one asked for the audit trail, one did not (nothing listens: deliveries stay pending).
    cli("outputs", "add", "siem", "syslog+udp://198.18.0.77:514", "--audit", "--db", db)
    cli("outputs", "add", "alerts-only", "syslog+udp://198.18.0.78:514", "--db", db)
    server = ConsoleServer(db, tmp / "serve.log")
    try:
        yield {"db": db, "tokens": tokens, "base": server.base}
    finally:
        server.stop()


def trail(console: dict[str, Any], query: str = "") -> list[dict[str, Any]]:
    status, rows = Client(console["base"]).json("GET", f"/api/v1/audit?limit=1000{query}", console["tokens"]["admin"])
    assert status == 200, rows
    return rows  # type: ignore[no-any-return]


def test_every_admin_action_is_audited(console: dict[str, Any]) -> None:
    admin, base, db = console["tokens"]["admin"], console["base"], console["db"]
    c = Client(base)
    started = time.time()
    # Over the API (a token).
    assert c.json("POST", "/api/v1/users", admin, {"name": "api-user", "role": "viewer", "password": "pw-12345678"})[0] == 201
    assert c.json("POST", "/api/v1/users/api-user", admin, {"role": "analyst"})[0] == 200
    assert c.json("POST", "/api/v1/users/api-user", admin, {"password": "pw-87654321"})[0] == 200
    assert c.json("POST", "/api/v1/users/api-user", admin, {"unlock": True})[0] == 200
    status, tok = c.json("POST", "/api/v1/tokens", admin, {"user": "api-user", "label": "ci", "expires": "1d"})
    assert status == 201
    assert c.json("DELETE", f"/api/v1/tokens/{tok['id']}", admin)[0] == 200
    assert c.json("POST", "/api/v1/outputs", admin, {"name": "hook", "url": "https://hooks.invalid/x"})[0] == 201
    assert c.json("DELETE", "/api/v1/outputs/hook", admin)[0] == 200
    assert c.json("PUT", "/api/v1/settings", admin, {"session_idle_minutes": 45})[0] == 200
    assert c.json("DELETE", "/api/v1/users/api-user", admin)[0] == 200
    # From the console's admin page (a session, with its CSRF token).
    page = Client(base)
    assert login(page, "admin", "admin-pass-1") == 303
    csrf = page_csrf(page, "/admin")
    for what, form in (("user-add", {"name": "page-user", "role": "viewer", "password": "pw-12345678"}),
                       ("user-role", {"name": "page-user", "role": "analyst"}),
                       ("token-create", {"user": "page-user", "label": "x"}),
                       ("output-add", {"name": "page-hook", "url": "https://hooks.invalid/y", "format": ""}),
                       ("output-remove", {"name": "page-hook"}),
                       ("settings", {"session_idle_minutes": "30", "metrics_requires_token": "on"}),
                       ("user-remove", {"name": "page-user"})):
        status = page.request("POST", f"/admin/{what}", form={"csrf": csrf, **form})[0]
        assert status in (200, 303), (what, status)
    assert page.request("POST", "/logout", form={"csrf": csrf})[0] == 303
    # From the CLI.
    cli("users", "add", "cli-user", "--role", "viewer", "--db", db, stdin="pw-12345678\n")
    cli("users", "passwd", "cli-user", "--db", db, stdin="pw-87654321\n")
    cli("users", "role", "cli-user", "analyst", "--db", db)
    cli("users", "unlock", "cli-user", "--db", db)
    token_id = cli("tokens", "create", "cli-user", "--db", db).stdout.split()[1]
    cli("tokens", "revoke", token_id, "--db", db)
    cli("outputs", "remove", "alerts-only", "--db", db)
    cli("users", "remove", "cli-user", "--db", db)

    rows = [r for r in trail(console) if r["ts"] >= started - 1]
    done = {(r["action"], r["via"], r["target"]) for r in rows}
    expected = {
        ("user_add", "api:token", "api-user"), ("user_role", "api:token", "api-user"),
        ("user_password", "api:token", "api-user"), ("user_unlock", "api:token", "api-user"),
        ("token_create", "api:token", tok["id"]), ("token_revoke", "api:token", tok["id"]),
        ("output_add", "api:token", "hook"), ("output_remove", "api:token", "hook"),
        ("settings_change", "api:token", None), ("user_remove", "api:token", "api-user"),
        ("login", "console", None), ("user_add", "console", "page-user"), ("user_role", "console", "page-user"),
        ("output_add", "console", "page-hook"), ("output_remove", "console", "page-hook"),
        ("settings_change", "console", None), ("user_remove", "console", "page-user"), ("logout", "console", None),
        ("user_add", "cli", "cli-user"), ("user_password", "cli", "cli-user"), ("user_role", "cli", "cli-user"),
        ("user_unlock", "cli", "cli-user"), ("token_create", "cli", token_id), ("token_revoke", "cli", token_id),
        ("output_remove", "cli", "alerts-only"), ("user_remove", "cli", "cli-user"),
    }
    assert expected <= done, sorted(expected - done, key=str)
    assert any(r["action"] == "token_create" and r["via"] == "console" for r in rows)
    for r in rows:
        assert r["user"] and r["ts"] and r["outcome"] == "ok", r
        assert r["source"] == ("cli" if r["via"] == "cli" else "127.0.0.1"), r
    settings = [r for r in rows if r["action"] == "settings_change" and r["via"] == "api:token"]
    assert settings[0]["detail"] == "session_idle_minutes: 30 -> 45", settings
    assert all(r["user"] == "admin" for r in rows if r["via"] != "cli")
    assert all(r["user"].startswith("cli:") for r in rows if r["via"] == "cli")


def test_only_admins_read_it_and_the_admin_page_shows_it(console: dict[str, Any]) -> None:
    c = Client(console["base"])
    assert c.json("GET", "/api/v1/audit", console["tokens"]["analyst"])[0] == 403
    assert c.json("GET", "/api/v1/audit")[0] == 401
    assert c.json("GET", "/api/v1/audit?since=nan", console["tokens"]["admin"])[0] == 400
    assert login(c, "admin", "admin-pass-1") == 303
    _s, _h, body = c.request("GET", "/admin")
    assert b'id="audit-trail"' in body and b"login" in body


def test_append_only_kept_by_retention_and_exported(console: dict[str, Any]) -> None:
    store = Store(console["db"], read_only=False, migrate=False)
    with store.tx() as conn:
        before = conn.exec_driver_sql("SELECT count(*) FROM audit").scalar()
    for sql in ("UPDATE audit SET user_name = 'nobody'", "DELETE FROM audit"):
        with pytest.raises(DBAPIError, match="append-only"), store.tx() as conn:
            conn.exec_driver_sql(sql)
    run(store, Retention(events_s=1, raw_egress_s=600, egress_s=1), now=time.time() + 400 * 86400)
    with store.tx() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM audit").scalar() == before
        # Every entry was queued for the output that asked for the audit trail, none for the other.
        queued = conn.exec_driver_sql(
            "SELECT d.output, count(*) FROM alert_deliveries d JOIN alert_notifications n "
            "ON n.seq = d.notification_seq WHERE n.transition = 'audit' GROUP BY d.output").all()
        payload = conn.exec_driver_sql("SELECT payload FROM alert_notifications WHERE transition = 'audit' "
                                       "ORDER BY seq DESC LIMIT 1").scalar()
    counts = {str(r[0]): int(r[1]) for r in queued}
    assert counts.get("siem", 0) >= 1 and "alerts-only" not in counts, counts
    assert json.loads(str(payload))["audit"]["action"]


def test_alert_actions_are_in_the_same_trail(console: dict[str, Any], tmp_path: Path) -> None:
    from weightwarden.collector.web import triage

    store = Store(console["db"], read_only=False, migrate=False)
    with store.tx() as conn:
        Store.collector_alert(conn, "k-audit", "gpu-a", "canary_read", "critical", "t", "e", {}, time.time())
        triage.act(conn, "k-audit", "comment", "analyst", time.time(), comment="looking", via="api:token",
                   source="198.18.0.9")
    rows = trail(console, "&action=comment")
    assert rows[0]["user"] == "analyst" and rows[0]["source"] == "198.18.0.9" and rows[0]["alert_key"] == "k-audit"
