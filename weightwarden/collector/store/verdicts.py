"""The verdicts detection writes: alerts as the facts say (replaced whole, or by the latest event),
withdrawn when the facts no longer support them, opened or resolved as an agent comes and goes.
Each change that an output should hear of is recorded (notifications.alert_changed)."""

from __future__ import annotations

import json
import time
from typing import cast

from sqlalchemy import Connection, text

from weightwarden.collector.store.database import SEVERITY_RANK
from weightwarden.collector.store.notifications import alert_changed
from weightwarden.collector.store.rows import AlertDraftRow, SqlParams, StoredAlert


def alerts_updated_since(conn: Connection, since: float, rules: list[str]) -> list[tuple[str, str]]:
    """(key, host) of the verdicts of ``rules`` (their names: the keys' first part) written at or after
    ``since`` (the collectors' clock)."""
    if not rules:
        return []
    params: SqlParams = {"s": since, **{f"r{i}": f"{r}:%" for i, r in enumerate(rules)}}
    likes = " OR ".join(f"key LIKE :r{i}" for i in range(len(rules)))
    return [(r[0], r[1]) for r in conn.execute(text(
        f"SELECT key, host FROM alerts WHERE updated_at >= :s AND ({likes}) ORDER BY key"), params)]


def existing_keys(conn: Connection, keys: list[str]) -> set[str]:
    found: set[str] = set()
    for i in range(0, len(keys), 500):
        params = {f"k{n}": k for n, k in enumerate(keys[i:i + 500])}
        found.update(conn.execute(text(f"SELECT key FROM alerts WHERE key IN ({', '.join(':' + k for k in params)})"),
                                  params).scalars())
    return found


def put_alert(conn: Connection, a: AlertDraftRow, now: float) -> bool:
    """Write a detection's verdict as it stands on the stored facts: the alert becomes exactly this
    draft (severity may go down as well as up). Nothing is written when nothing changed, so
    re-evaluating the same facts neither bumps the count nor reopens a resolved alert; a changed
    verdict reopens it, unless the draft says its state is the rule's to set (``reopen`` false). A draft
    that knows how often its incident happened (``count``, from the facts) sets the count instead."""
    params = {**a, "evidence": json.dumps(a["evidence"], default=str, sort_keys=True),
              "rank": SEVERITY_RANK[a["severity"]], "now": now, "reopen": 1 if a.get("reopen", True) else 0,
              "count": a.get("count")}
    res = conn.execute(text(
        "INSERT INTO alerts(key, id, host, kind, severity, severity_rank, state, title, explanation, evidence, "
        "first_ts, last_ts, created_at, updated_at, count) VALUES (:key, :id, :host, :kind, :severity, :rank, 'open', "
        ":title, :explanation, :evidence, :first_ts, :last_ts, :now, :now, COALESCE(CAST(:count AS BIGINT), 1)) "
        "ON CONFLICT (key) DO UPDATE SET kind = excluded.kind, severity = excluded.severity, "
        "severity_rank = excluded.severity_rank, title = excluded.title, explanation = excluded.explanation, "
        "evidence = excluded.evidence, first_ts = excluded.first_ts, last_ts = excluded.last_ts, "
        "updated_at = excluded.updated_at, count = COALESCE(CAST(:count AS BIGINT), alerts.count + 1), "
        "state = CASE WHEN alerts.state = 'resolved' AND :reopen = 1 THEN 'open' ELSE alerts.state END "
        "WHERE alerts.evidence <> excluded.evidence OR alerts.severity <> excluded.severity "
        "OR alerts.kind <> excluded.kind OR alerts.explanation <> excluded.explanation "
        "OR alerts.title <> excluded.title"), params)
    if res.rowcount:
        alert_changed(conn, a["key"], now)  # opened, escalated or reopened: notify the outputs
    return bool(res.rowcount)


def put_event_alert(conn: Connection, a: AlertDraftRow, order: str, now: float) -> None:
    """An alert one event decides (canary, cap, drift...). Repeats of the incident count up; its
    content is the latest event's by the event's own time (``order``), whatever arrived last."""
    params = {**a, "evidence": json.dumps(a["evidence"], default=str, sort_keys=True),
              "rank": SEVERITY_RANK[a["severity"]], "now": now, "order": order,
              "reopen": 1 if a.get("reopen", True) else 0}
    newer = "excluded.fact_order > COALESCE(alerts.fact_order, '')"
    conn.execute(text(
        "INSERT INTO alerts(key, id, host, kind, severity, severity_rank, state, title, explanation, evidence, "
        "first_ts, last_ts, created_at, updated_at, count, fact_order) VALUES (:key, :id, :host, :kind, :severity, "
        ":rank, 'open', :title, :explanation, :evidence, :first_ts, :last_ts, :now, :now, 1, :order) "
        "ON CONFLICT (key) DO UPDATE SET "
        + ", ".join(f"{c} = CASE WHEN {newer} THEN excluded.{c} ELSE alerts.{c} END"
                    for c in ("kind", "severity", "severity_rank", "title", "explanation", "evidence"))
        + ", first_ts = CASE WHEN alerts.first_ts < excluded.first_ts THEN alerts.first_ts ELSE excluded.first_ts END, "
        "last_ts = CASE WHEN alerts.last_ts > excluded.last_ts THEN alerts.last_ts ELSE excluded.last_ts END, "
        f"fact_order = CASE WHEN {newer} THEN excluded.fact_order ELSE alerts.fact_order END, "
        "updated_at = excluded.updated_at, count = alerts.count + 1, "
        "state = CASE WHEN alerts.state = 'resolved' AND :reopen = 1 THEN 'open' ELSE alerts.state END"), params)
    alert_changed(conn, a["key"], now)


def alert_keys(conn: Connection, host: str, prefix: str) -> list[str]:
    """Keys of a host's alerts that start with ``prefix`` (LIKE wildcards in it are taken literally)."""
    pattern = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
    return [str(k) for k in conn.execute(text("SELECT key FROM alerts WHERE host=:h AND key LIKE :p ESCAPE '\\'"),
                                         {"h": host, "p": pattern}).scalars()]


def withdraw(conn: Connection, keys: list[str], now: float | None = None) -> int:
    """Remove alerts the stored facts no longer support (an earlier view saw only part of them),
    unless a person has already acknowledged or resolved them. Outputs that were told the alert
    opened are told it is resolved."""
    n = 0
    for key in sorted(keys):
        res = conn.execute(text("UPDATE alerts SET state='resolved', resolved_by='collector: withdrawn, the facts no "
                                "longer support it', resolved_at=:t WHERE key=:k AND state='open' AND acked_by IS NULL"),
                           {"k": key, "t": now or time.time()})
        if res.rowcount:
            alert_changed(conn, key, now or time.time())
            n += int(conn.execute(text("DELETE FROM alerts WHERE key=:k"), {"k": key}).rowcount)
    return n


def set_auto_state(conn: Connection, key: str, open_: bool, why: str, now: float,
                   reopen_after: float | None = None) -> bool:
    """Open or resolve an alert as the facts say (an agent back, a sensor whole again). Resolving leaves
    an alert a person already resolved alone; reopening undoes only the collector's own resolution, or a
    person's made before ``reopen_after`` (a new episode began since). True if the state changed."""
    if open_:
        res = conn.execute(text(
            "UPDATE alerts SET state='open', resolved_by=NULL, resolved_at=NULL, updated_at=:t WHERE key=:k "
            "AND state='resolved' AND (resolved_by LIKE 'collector:%' OR resolved_at < :after)"),
            {"k": key, "t": now, "after": reopen_after if reopen_after is not None else -1.0})
    else:
        res = conn.execute(text("UPDATE alerts SET state='resolved', resolved_by=:w, resolved_at=:t, updated_at=:t "
                                "WHERE key=:k AND state <> 'resolved'"), {"k": key, "t": now, "w": f"collector: {why}"})
    if res.rowcount:
        alert_changed(conn, key, now)
    return bool(res.rowcount)


def alert_row(conn: Connection, key: str) -> StoredAlert | None:
    row = conn.execute(text("SELECT * FROM alerts WHERE key=:k"), {"k": key}).mappings().first()
    return cast(StoredAlert, dict(row)) if row else None
