"""The alerts as the CLI, the tests and the collector's own alerts use them (detection writes its
verdicts through :mod:`verdicts`): mixed into :class:`~database.Store`."""

from __future__ import annotations

import hashlib
import json
from contextlib import AbstractContextManager
from typing import Any

from sqlalchemy import Connection, text

from weightwarden.collector.store.notifications import alert_changed
from weightwarden.collector.store.rows import AlertDraftRow, Evidence, SqlParams

SEVERITY_RANK = {"low": 1, "medium": 2, "high": 3, "critical": 4}
BACKDATED_S = 86400.0  # an event dated longer than this before it arrived is backdated (ingest/validate.py)


class AlertStore:
    """Alert reads and writes of :class:`~database.Store`, which provides ``tx``."""

    def tx(self) -> AbstractContextManager[Connection]:
        raise NotImplementedError

    @staticmethod
    def upsert_alert(conn: Connection, a: AlertDraftRow, now: float) -> None:
        params = {**a, "evidence": json.dumps(a["evidence"], default=str), "rank": SEVERITY_RANK[a["severity"]],
                  "now": now}
        conn.execute(text(
            "INSERT INTO alerts(key, id, host, kind, severity, severity_rank, state, title, explanation, evidence, "
            "first_ts, last_ts, created_at, updated_at, count) VALUES (:key, :id, :host, :kind, :severity, :rank, 'open', "
            ":title, :explanation, :evidence, :first_ts, :last_ts, :now, :now, 1) "
            "ON CONFLICT (key) DO UPDATE SET "
            "severity = CASE WHEN alerts.severity_rank >= excluded.severity_rank THEN alerts.severity "
            "  ELSE excluded.severity END, "
            "severity_rank = CASE WHEN alerts.severity_rank >= excluded.severity_rank THEN alerts.severity_rank "
            "  ELSE excluded.severity_rank END, "
            "title = excluded.title, explanation = excluded.explanation, evidence = excluded.evidence, "
            "last_ts = CASE WHEN alerts.last_ts > excluded.last_ts THEN alerts.last_ts ELSE excluded.last_ts END, "
            "updated_at = excluded.updated_at, count = alerts.count + 1, "
            # A resolved incident that happens again is open again.
            "state = CASE WHEN alerts.state = 'resolved' AND :reopen = 1 THEN 'open' ELSE alerts.state END"),
            {**params, "reopen": 1 if a.get("reopen", True) else 0})
        alert_changed(conn, a["key"], now)  # opened, escalated or reopened: notify the outputs

    @staticmethod
    def collector_alert(conn: Connection, key: str, host: str, kind: str, severity: str, title: str, explanation: str,
                        evidence: Evidence, now: float) -> str:
        """An alert the collector raises about itself (its broker session taken over): repeats count up
        one alert, a resolved one opens again. Returns its id."""
        alert_id = hashlib.sha256(key.encode()).hexdigest()[:16]
        AlertStore.upsert_alert(conn, {"key": key, "id": alert_id, "host": host, "kind": kind, "severity": severity,
                                  "title": title, "explanation": explanation,
                                  "evidence": {"process": None, "files": [], "destinations": [], **evidence},
                                  "first_ts": now, "last_ts": now}, now)
        return alert_id

    @staticmethod
    def set_state(conn: Connection, key_or_id: str, state: str, who: str, now: float) -> int:
        col = "acked" if state == "acknowledged" else "resolved"
        res = conn.execute(text(f"UPDATE alerts SET state=:s, {col}_by=:w, {col}_at=:t, updated_at=:t "
                                "WHERE id=:k OR key=:k"), {"s": state, "w": who, "t": now, "k": key_or_id})
        alert_changed(conn, key_or_id, now)
        return int(res.rowcount)

    @staticmethod
    def resolve_kind(conn: Connection, host: str, kind: str, who: str, now: float) -> None:
        keys = conn.execute(text("UPDATE alerts SET state='resolved', resolved_by=:w, resolved_at=:t, updated_at=:t "
                                 "WHERE host=:h AND kind=:k AND state != 'resolved' RETURNING key"),
                            {"w": who, "t": now, "h": host, "k": kind}).scalars().all()
        for key in keys:
            alert_changed(conn, key, now)

    def alerts(self, state: str | None = None, host: str | None = None, min_severity: str | None = None
               ) -> list[dict[str, Any]]:
        sql = "SELECT * FROM alerts WHERE 1=1"
        params: SqlParams = {}
        if state:
            sql += " AND state = :state"
            params["state"] = state
        if host:
            sql += " AND host = :host"
            params["host"] = host
        if min_severity:
            sql += " AND severity_rank >= :rank"
            params["rank"] = SEVERITY_RANK[min_severity]
        # By when the collector raised them: an agent's clock (or a backdated event) does not move an alert down.
        sql += " ORDER BY severity_rank DESC, raised_at DESC"
        with self.tx() as conn:
            return [_alert(dict(r)) for r in conn.execute(text(sql), params).mappings()]

    def alert(self, key_or_id: str) -> dict[str, Any] | None:
        with self.tx() as conn:
            row = conn.execute(text("SELECT * FROM alerts WHERE id=:k OR key=:k"), {"k": key_or_id}).mappings().first()
        return _alert(dict(row)) if row else None


def backdated_by(ts: float, received_at: float) -> float:
    """How far before its arrival an event is dated, when that makes it backdated; 0 otherwise."""
    lag = received_at - ts
    return lag if lag > BACKDATED_S else 0.0


def _alert(row: dict[str, Any]) -> dict[str, Any]:
    """An alert for the CLI and the tests: its evidence parsed (free-form JSON, read by key), the rank dropped.
    Kept loosely typed: readers outside the collector dig into the evidence as they please."""
    row["evidence"] = json.loads(row["evidence"])
    row.pop("severity_rank", None)
    # Flagged: the newest event it rests on is dated long before the collector raised it.
    raised = row.get("raised_at") or row.get("created_at") or 0
    row["backdated"] = backdated_by(float(row.get("last_ts") or 0), float(raised)) or None
    return row
