"""Pure parts of the console and outputs: ATT&CK tags, CEF and RFC 5424 text, the chart, the outbox's transitions."""

from __future__ import annotations

import time
from pathlib import Path

from weightwarden.collector.outputs import outbox
from weightwarden.collector.outputs.base import OutputSpec
from weightwarden.collector.outputs.message import Notification, attack, cef, syslog_line
from weightwarden.collector.store import notifications
from weightwarden.collector.store.database import Store
from weightwarden.collector.store.rows import AlertDraftRow
from weightwarden.collector.store.verdicts import put_alert
from weightwarden.collector.web.chart import egress_svg


def note(kind: str = "exfiltration", port: int = 443, title: str = "t") -> Notification:
    return {"seq": 1, "id": "n1", "attempts": 0, "transition": "open", "alert": {
        "id": "a1", "host": "gpu|1", "kind": kind, "severity": "high", "state": "open", "title": title,
        "explanation": "read x=y\nthen sent", "last_ts": 1.0,
        "evidence": {"destinations": [{"address": "198.18.0.2", "port": port, "bytes": 5, "name": "up.example"}],
                     "process": {"pid": 7, "name": "curl", "user": "bob"}, "bytes_sent": 5, "files": ["/w"]}}}


def test_attack_tags_fit_the_kind_and_port() -> None:
    assert [t["technique"] for t in attack(note()["alert"])] == ["T1567"]
    assert [t["technique"] for t in attack(note(port=22)["alert"])] == ["T1048"]
    assert [t["technique"] for t in attack(note("staged_exfiltration", 22)["alert"])] == ["T1048", "T1074"]
    assert attack(note("cap_hit")["alert"]) == []


def test_cef_escapes_its_separators() -> None:
    text = cef(note(title="a|b"))
    assert text.startswith("CEF:0|weightwarden|collector|")
    assert "|a\\|b|8|" in text and "msg=read x\\=y\\nthen sent" in text  # a line break as CEF writes one
    assert "suser=bob" in text and "dhost=up.example" in text and "dvchost=gpu|1" in text


def test_syslog_line_is_rfc5424() -> None:
    line = syslog_line(note(), "collector-1")
    head, body = line.split(b"\xef\xbb\xbf", 1)
    assert head.startswith(b"<131>1 ") and b" collector-1 weightwarden-collector - open [weightwarden@32473 " in head
    assert b'host="gpu|1"' in head and body.startswith(b"{")


def test_chart_escapes_names_and_draws_caps() -> None:
    svg = egress_svg({"host": "<h>", "since": 0.0, "until": 60.0, "step": 60.0,
                      "caps": [{"name": "<cap>", "rate_bps": 8e6, "action": None}],
                      "series": [{"address": "<script>", "allowed": False, "bytes": 1, "bps": [1e6, 2e6]}]})
    assert "<script>" not in svg and "&lt;script&gt;" in svg and "&lt;cap&gt;" in svg
    assert svg.count('class="cap"') == 1 and svg.count("<polyline") == 1


def test_outbox_records_each_transition_once(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path}/c.db")
    draft: AlertDraftRow = {"key": "k1", "id": "i1", "host": "h", "kind": "exfiltration", "severity": "high", "title": "t",
             "explanation": "e", "evidence": {}, "first_ts": 1.0, "last_ts": 2.0}
    with store.tx() as conn:
        outbox.add_output(conn, OutputSpec("r", "syslog+udp://127.0.0.1:9", {"allow_local": True}), 0.0)
        put_alert(conn, draft, 10.0)
        assert not put_alert(conn, draft, 11.0)  # the same verdict: nothing written, nothing new
        put_alert(conn, {**draft, "severity": "critical"}, 12.0)
        put_alert(conn, {**draft, "severity": "high"}, 13.0)  # lowered by the facts: an escalation only goes up
        # A second collector that saw the same change records nothing more.
        assert notifications.alert_changed(conn, "k1", 14.0) is None
        Store.set_state(conn, "i1", "resolved", "x", 15.0)
        put_alert(conn, {**draft, "explanation": "more facts"}, 16.0)  # reopened by a new verdict
        rows = conn.exec_driver_sql("SELECT transition, epoch FROM alert_notifications ORDER BY seq").all()
        deliveries = conn.exec_driver_sql("SELECT count(*) FROM alert_deliveries WHERE output = 'r'").scalar()
    assert [tuple(r) for r in rows] == [("open", 0), ("escalate", 0), ("resolve", 0), ("open", 1)]
    assert deliveries == 4
    with store.tx() as conn:
        first = outbox.claim(conn, "r", "w1", time.time())
        assert len(first) == 4 and outbox.claim(conn, "r", "w2", time.time()) == []  # leased to w1


def test_sessions_expire_and_only_hashes_are_stored(tmp_path: Path) -> None:
    from weightwarden.collector.web import auth

    store = Store(f"sqlite:///{tmp_path}/c.db")
    with store.tx() as conn:
        auth.add_user(conn, "ann", "analyst", "long-enough-pw", 0.0)
        sid, csrf = auth.create_session(conn, "ann", ttl_s=3600, now=100.0)
        _tid, token = auth.create_token(conn, "ann", "ci", expires_at=200.0, now=100.0)
        assert auth.session_principal(conn, sid, idle_s=600, now=650.0) is not None  # used within the idle limit
        assert auth.session_principal(conn, sid, idle_s=600, now=650.0 + 601) is None  # idle too long
        assert auth.session_principal(conn, sid, idle_s=1e9, now=100.0 + 3601) is None  # past its life
        p = auth.token_principal(conn, token, now=150.0)
        assert p is not None and (p.name, p.role, p.may("triage"), p.may("admin")) == ("ann", "analyst", True, False)
        assert auth.token_principal(conn, token, now=201.0) is None  # expired
        dump = "\n".join(str(tuple(r)) for t in ("web_sessions", "api_tokens", "users")
                         for r in conn.exec_driver_sql(f"SELECT * FROM {t}"))
    assert sid not in dump and csrf in dump and token.split("_", 2)[2] not in dump and "long-enough-pw" not in dump
    assert "$argon2id$" in dump
