"""The console's API and its guards, against a real ``serve`` process and the real CLI."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.collector.scenarios import MB, Stream
from tests.helpers.console import (
    PASSWORDS,
    Client,
    ConsoleServer,
    add_users,
    cli,
    login,
    login_response,
    make_cert,
    page_csrf,
)
from weightwarden.collector.ingest.pipeline import Pipeline
from weightwarden.collector.store.database import Store


def theft(host: str = "gpu-api", pid: int = 4242) -> Stream:
    now = time.time()
    s = Stream(host=host)
    s.started(now - 600)
    s.read(now - 300, pid, 200 * MB)
    for i in range(3):
        s.send(now - 250 + i * 10, pid, 40 * MB, address="198.18.9.9", port=9000)
    return s


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("console")
    db = f"sqlite:///{tmp}/collector.db"
    pipeline = Pipeline(Store(db))
    pipeline.ingest(theft().messages())
    pipeline.ingest(theft("gpu-other", 777).messages())
    tokens = add_users(db)
    server = ConsoleServer(db, tmp / "serve.log")
    try:
        yield {"db": db, "tokens": tokens, "base": server.base, "tmp": tmp}
    finally:
        server.stop()


def first_alert(console: dict[str, Any], host: str = "gpu-api") -> dict[str, Any]:
    status, alerts = Client(console["base"]).json("GET", f"/api/v1/alerts?host={host}", console["tokens"]["viewer"])
    assert status == 200 and alerts, alerts
    return alerts[0]  # type: ignore[no-any-return]


def test_no_token_is_401_and_a_forged_one_too(console: dict[str, Any]) -> None:
    c = Client(console["base"])
    assert c.json("GET", "/api/v1/alerts")[0] == 401
    forged = console["tokens"]["admin"][:-4] + "AAAA"
    assert c.json("GET", "/api/v1/alerts", forged)[0] == 401
    assert c.json("POST", f"/api/v1/alerts/{first_alert(console)['id']}/ack", None, {"comment": "x"})[0] == 401


def test_alert_list_has_the_fields_of_the_cli(console: dict[str, Any]) -> None:
    status, api = Client(console["base"]).json("GET", "/api/v1/alerts", console["tokens"]["viewer"])
    listed = json.loads(cli("alerts", "list", "--json", "--db", console["db"]).stdout)
    assert status == 200
    assert {a["id"] for a in api} == {a["id"] for a in listed} and len(api) == 2
    by_id = {a["id"]: a for a in listed}
    for a in api:
        assert set(a) == set(by_id[a["id"]]), set(a) ^ set(by_id[a["id"]])
        assert a["evidence"]["bytes_sent"] == by_id[a["id"]]["evidence"]["bytes_sent"]
    # Filters narrow it.
    c = Client(console["base"])
    assert [a["host"] for a in c.json("GET", "/api/v1/alerts?host=gpu-other", console["tokens"]["viewer"])[1]] == ["gpu-other"]
    assert c.json("GET", "/api/v1/alerts?q=GPU-OTHER", console["tokens"]["viewer"])[1][0]["host"] == "gpu-other"
    assert c.json("GET", "/api/v1/alerts?state=resolved", console["tokens"]["viewer"])[1] == []
    assert c.json("GET", "/api/v1/alerts?state=bogus", console["tokens"]["viewer"])[0] == 400


def test_viewer_may_read_but_not_write(console: dict[str, Any]) -> None:
    c = Client(console["base"])
    alert = first_alert(console)
    status, doc = c.json("GET", f"/api/v1/alerts/{alert['id']}", console["tokens"]["viewer"])
    assert status == 200 and doc["story"]["destinations"][0]["address"] == "198.18.9.9"
    for action in ("ack", "resolve", "assign", "comment"):
        status, body = c.json("POST", f"/api/v1/alerts/{alert['id']}/{action}", console["tokens"]["viewer"],
                              {"comment": "no"})
        assert status == 403, (action, body)
    assert c.json("GET", "/api/v1/users", console["tokens"]["analyst"])[0] == 403
    assert c.json("GET", "/api/v1/users", console["tokens"]["admin"])[0] == 200


def test_analyst_ack_is_audited_with_the_users_name(console: dict[str, Any]) -> None:
    c = Client(console["base"])
    alert = first_alert(console)
    status, body = c.json("POST", f"/api/v1/alerts/{alert['id']}/ack", console["tokens"]["analyst"],
                          {"comment": "on it: the upload goes to a lab box"})
    assert status == 200, body
    status, doc = c.json("GET", f"/api/v1/alerts/{alert['id']}", console["tokens"]["viewer"])
    assert doc["state"] == "acknowledged"
    assert [(a["user"], a["action"], a["comment"]) for a in doc["audit"]] == [
        ("analyst", "ack", "on it: the upload goes to a lab box")]
    assert doc["audit"][0]["ts"] > time.time() - 60
    # The CLI's ack is audited too, under --by.
    cli("alerts", "ack", alert["id"], "--by", "carol", "--comment", "seen from the shell", "--db", console["db"])
    doc = c.json("GET", f"/api/v1/alerts/{alert['id']}", console["tokens"]["viewer"])[1]
    assert [(a["user"], a["via"]) for a in doc["audit"]][-1] == ("carol", "cli")
    # Assign to a user that exists; a name that does not is refused.
    assert c.json("POST", f"/api/v1/alerts/{alert['id']}/assign", console["tokens"]["analyst"],
                  {"assignee": "analyst"})[0] == 200
    assert c.json("POST", f"/api/v1/alerts/{alert['id']}/assign", console["tokens"]["analyst"],
                  {"assignee": "nobody-here"})[0] == 400
    assert c.json("GET", f"/api/v1/alerts/{alert['id']}", console["tokens"]["viewer"])[1]["assignee"] == "analyst"


def test_form_posts_without_csrf_are_refused(console: dict[str, Any]) -> None:
    c = Client(console["base"])
    assert login(c, "analyst", PASSWORDS["analyst"]) == 303
    session = c.cookie("ww_session")
    assert session is not None and session.has_nonstandard_attr("HttpOnly") and not session.secure
    alert = first_alert(console, "gpu-other")
    path = f"/alerts/{alert['id']}/comment"
    status, _h, body = c.request("POST", path, form={"comment": "forged"})
    assert status == 403 and b"CSRF" in body
    assert c.request("POST", path, form={"comment": "forged", "csrf": "wrong"})[0] == 403
    # The API with a session cookie needs the header as well.
    assert c.json("POST", f"/api/v1/alerts/{alert['id']}/comment", None, {"comment": "forged"})[0] == 403
    csrf = page_csrf(c, f"/alerts/{alert['id']}")
    # Right token, foreign origin: refused.
    assert c.request("POST", path, form={"comment": "x", "csrf": csrf}, headers={"Origin": "http://evil.example"})[0] == 403
    assert c.request("POST", path, form={"comment": "from the console", "csrf": csrf})[0] == 303
    audit = c.json("GET", f"/api/v1/alerts/{alert['id']}", console["tokens"]["viewer"])[1]["audit"]
    assert [(a["user"], a["action"], a["comment"]) for a in audit] == [("analyst", "comment", "from the console")]


def test_wrong_passwords_back_off_the_same_for_any_name(console: dict[str, Any]) -> None:
    """Five wrong passwords, then every attempt waits (5 s, doubling), the right password too; a name
    that does not exist is answered the same way; `users unlock` ends the wait. No lock anyone can set."""
    db = console["db"]
    cli("users", "add", "mallory-target", "--role", "viewer", "--db", db, stdin="right-password\n")
    c = Client(console["base"])
    for _ in range(4):
        assert login(c, "mallory-target", "wrong-password") == 401
    assert login(c, "mallory-target", "right-password") == 303  # 4 wrong, then right: fine, and the count resets
    answers = {}
    for name in ("mallory-target", "no-such-user"):
        for _ in range(5):
            assert login(c, name, "wrong-password") == 401
        status, headers, body = login_response(c, name, "right-password")
        answers[name] = (status, re.sub(rb"\d+", b"N", body.split(b'id="login-error"', 1)[-1].split(b"</", 1)[0]))
        assert status == 429 and int(headers["retry-after"]) >= 1, (name, status)
    # The refusal says nothing about whether the account exists.
    assert answers["mallory-target"] == answers["no-such-user"], answers
    listed = [u for u in json.loads(cli("users", "list", "--json", "--db", db).stdout) if u["name"] == "mallory-target"]
    assert listed[0]["locked_until"] > time.time()
    cli("users", "unlock", "mallory-target", "--db", db)
    assert login(c, "mallory-target", "right-password") == 303
    # All of it is in the audit trail: who, what, from where.
    status, trail = c.json("GET", "/api/v1/audit?user=mallory-target&limit=50", console["tokens"]["admin"])
    assert status == 200
    actions = [e["action"] for e in trail]
    assert actions.count("login_failed") == 9 and actions.count("login") == 2 and "login_backoff" in actions
    assert all(e["source"] == "127.0.0.1" and e["via"] == "console" for e in trail if e["action"].startswith("login"))
    assert any(e["action"] == "user_unlock" for e in c.json("GET", "/api/v1/audit?action=user_unlock",
                                                             console["tokens"]["admin"])[1])


def test_metrics_need_no_token_and_count_alerts(console: dict[str, Any]) -> None:
    status, headers, body = Client(console["base"]).request("GET", "/metrics")
    text = body.decode()
    assert status == 200 and headers["content-type"].startswith("text/plain")
    assert 'weightwarden_alerts{kind="exfiltration",severity="critical",state=' in text
    assert 'weightwarden_host_last_seen_age_seconds{host="gpu-api"}' in text
    stored = [line for line in text.splitlines() if line.startswith("weightwarden_events_stored_total ")]
    assert stored and int(float(stored[0].split()[1])) == len(theft().events) * 2
    assert "weightwarden_db_latency_seconds " in text


def test_tls_serves_secure_cookies(console: dict[str, Any], tmp_path: Path) -> None:
    cert, key = make_cert(tmp_path)
    server = ConsoleServer(console["db"], tmp_path / "tls.log", (cert, key))
    try:
        c = Client(server.base, cafile=cert)
        assert c.json("GET", "/api/v1/me", console["tokens"]["viewer"]) == (
            200, {"name": "viewer", "role": "viewer", "via": "token", "permissions": ["read"]})
        assert login(c, "viewer", PASSWORDS["viewer"]) == 303
        session = c.cookie("ww_session")
        assert session is not None and session.secure
        assert c.request("GET", "/")[1].get("strict-transport-security")
    finally:
        server.stop()
