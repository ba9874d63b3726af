"""Retention folds raw egress into per-minute rows: detection must read the same story from them."""

from __future__ import annotations

import time
from pathlib import Path

from sqlalchemy import text

from tests.collector.scenarios import MB, T0, Stream
from tests.collector.test_detections import Clock
from weightwarden.collector.detect.common import Tuning
from weightwarden.collector.ingest.pipeline import Pipeline
from weightwarden.collector.store.database import Store
from weightwarden.collector.store.retention import Retention, fold_egress, run


def _verdicts(store: Store) -> list[tuple[str, str, str]]:
    return sorted((a["key"], a["kind"], a["severity"]) for a in store.alerts() if a["state"] != "withdrawn")


def test_folded_egress_keeps_what_detection_reads(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path}/c.db")
    pipe = Pipeline(store, Tuning(), clock=Clock(T0 + 600))
    s = Stream()
    s.read(T0 + 1, pid=400, nbytes=256 * MB, start=T0 - 10)
    for i in range(20):  # 20 samples inside one minute, with exact send times and a reply mixed in
        s.send(T0 + 10 + i, pid=400, nbytes=10 * MB, start=T0 - 10, protocol="tcp",
               span=(T0 + 9.5 + i, T0 + 9.9 + i), accepted=(i == 3) or None)
    s.send(T0 + 40, pid=401, nbytes=2 * MB, start=T0 - 5, accepted=True)  # a server's replies
    assert pipe.ingest(s.messages())["rejected"] == 0 and not pipe.errors
    before = _verdicts(store)
    assert any(kind == "exfiltration" and sev in ("high", "critical") for _k, kind, sev in before), before
    with store.tx() as conn:
        raw = [dict(r) for r in conn.execute(text("SELECT * FROM egress_raw WHERE pid=400")).mappings()]
    assert fold_egress(store, time.time() + 1) == 21
    assert store.count("egress_raw") == 0
    with store.tx() as conn:
        rows = [dict(r) for r in conn.execute(text("SELECT * FROM egress ORDER BY pid, ts")).mappings()]
    assert {r["pid"] for r in rows} == {400, 401} and len(rows) <= 3  # samples may straddle a minute
    server = rows[-1]
    thief = {**rows[0], "bytes": sum(r["bytes"] for r in rows[:-1]), "ts": rows[-2]["ts"],
             "accepted": min(r["accepted"] for r in rows[:-1]), "exact": min(r["exact"] for r in rows[:-1])}
    assert thief["bytes"] == sum(r["bytes"] for r in raw) == 200 * MB
    assert thief["start_time"] == T0 - 10 and thief["protocol"] == "tcp"
    assert thief["first_ts"] == min(r["first_ts"] for r in raw) and thief["ts"] == max(r["ts"] for r in raw)
    assert thief["accepted"] == 0, "one reply among uploads does not make the minute replies"
    assert [r["samples"] for r in _minutes(store) if r["pid"] == 400] and all(r["exact"] == 1 for r in rows[:-1])
    assert thief["exact"] == 1
    assert server["accepted"] == 1 and server["exact"] == 0
    # Judged again from the folded rows alone: the same verdicts.
    with store.tx() as conn:
        exfiltration = pipe.detector.by_name["exfiltration"]
        exfiltration.judge(pipe.detector, conn, ("gpu-1", 400), None, T0 + 700)
    assert _verdicts(store) == before


def _minutes(store: Store) -> list[dict[str, object]]:
    with store.tx() as conn:
        return [dict(r) for r in conn.execute(text("SELECT * FROM egress_minute")).mappings()]


def test_relays_and_minutes_go_when_detections_no_longer_look_back(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path}/c.db")
    t = time.time() - 60  # retention folds and deletes by arrival (wall clock)
    pipe = Pipeline(store, Tuning(), clock=Clock(t + 60))
    s = Stream()
    s.hand(t, pid=500, to_pid=501, nbytes=5 * MB)
    s.send(t, pid=501, nbytes=5 * MB, exe="/usr/bin/socat")
    assert pipe.ingest(s.messages())["rejected"] == 0
    assert store.count("relays") == 1
    keep = Retention(egress_s=Tuning().looks_back_s() + 3600)
    run(store, keep, now=t + 86400)
    assert store.count("relays") == 1 and store.count("egress_raw") == 0 and store.count("egress_minute") == 1
    gone = run(store, keep, now=t + keep.egress_s + 7200)
    assert gone["relays"] == 1 and store.count("relays") == 0 and store.count("egress_minute") == 0


def test_facts_delivered_late_are_kept_until_they_have_been_stored_long_enough(tmp_path: Path) -> None:
    """An agent's spool delivered a month late (or an agent with its clock set back): its facts carry
    old times but were stored just now, and retention must not purge them before detection judged them."""
    store = Store(f"sqlite:///{tmp_path}/c.db")
    now = time.time()
    t = now - 30 * 86400
    pipe = Pipeline(store, Tuning(), clock=Clock(now))
    s = Stream()
    s.read(t, pid=500, nbytes=2000 * MB)
    s.hand(t + 5, pid=500, to_pid=501, nbytes=5 * MB)
    s.send(t + 5, pid=501, nbytes=5 * MB, exe="/usr/bin/socat")
    assert pipe.ingest(s.messages())["rejected"] == 0
    counts = {t: store.count(t) for t in ("relays", "weight_reads", "events")}
    assert all(counts.values()), counts
    keep = Retention(egress_s=Tuning().looks_back_s() + 3600, events_s=7 * 86400)
    gone = run(store, keep, now=now + 60)
    assert {t: store.count(t) for t in counts} == counts, gone
    assert store.count("egress_raw") + store.count("egress_minute") >= 1
    run(store, keep, now=now + 8 * 86400 + keep.egress_s)  # stored long enough: now they go
    assert store.count("relays") == 0 and store.count("weight_reads") == 0 and store.count("events") == 0


def test_expired_sessions_and_superseded_notifications_go_the_audit_trail_stays(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path}/c.db")
    now = time.time()
    with store.tx() as conn:
        for sid, expires in (("old", now - 10), ("live", now + 3600)):
            conn.execute(text("INSERT INTO web_sessions(id_hash, user_name, csrf, created_at, expires_at, last_seen) "
                              "VALUES (:i, 'alice', 'x', :c, :e, :c)"), {"i": sid, "c": now - 100, "e": expires})
        # Alert k: an old notification and a newer one; alert k2, open for 40 days: only an old one.
        for nid, key, created in (("n-old", "k", now - 40 * 86400), ("n-new", "k", now - 60),
                                  ("n-k2", "k2", now - 40 * 86400)):
            conn.execute(text("INSERT INTO alert_notifications(id, alert_key, alert_id, host, transition, epoch, "
                              "severity_rank, payload, created_at) VALUES (:i, :k, 'a', 'h', 'open', 1, 4, '{}', :c)"),
                         {"i": nid, "k": key, "c": created})
            conn.execute(text("INSERT INTO alert_deliveries(notification_seq, output, state, next_at) SELECT seq, "
                              "'siem', 'delivered', 0 FROM alert_notifications WHERE id = :i"), {"i": nid})
        conn.execute(text("INSERT INTO audit(alert_key, alert_id, user_name, action, ts) VALUES "
                          "('k', 'a', 'alice', 'ack', :t)"), {"t": now - 40 * 86400})
    gone = run(store, Retention(), now=now)
    assert gone["web_sessions"] == 1 and gone["alert_notifications"] == 1
    with store.tx() as conn:
        assert conn.execute(text("SELECT id_hash FROM web_sessions")).scalars().all() == ["live"]
        assert sorted(conn.execute(text("SELECT id FROM alert_notifications")).scalars()) == ["n-k2", "n-new"]
        assert conn.execute(text("SELECT count(*) FROM alert_deliveries")).scalar() == 2
        assert conn.execute(text("SELECT count(*) FROM audit")).scalar() == 1
