"""Working an alert: acknowledge, resolve, assign, comment. Each step is written to the audit trail.

The CLI (``alerts ack ID --by NAME``), the API and the console all come here,
so every change of an alert says who made it, how (cli, api, console) and why.
"""

from __future__ import annotations

from typing import TypedDict, cast

from sqlalchemy import Connection, text

from weightwarden.collector.store import audit as trail
from weightwarden.collector.store.database import Store
from weightwarden.collector.store.notifications import alert_changed

ACTIONS = ("ack", "resolve", "assign", "comment", "reopen")
STATE_OF = {"ack": "acknowledged", "resolve": "resolved"}
MAX_COMMENT = 4000


class TriageError(ValueError):
    """An action that cannot be done (unknown alert, bad assignee); the message says which."""


class AlertRef(TypedDict):
    key: str
    id: str
    state: str
    assignee: str | None


class Action(TypedDict):
    """One action as the API returns it (the audit entry it made)."""

    alert_key: str
    alert_id: str
    user: str
    action: str
    comment: str | None
    detail: str | None
    via: str
    ts: float
    source: str | None
    id: int


class TrailEntry(TypedDict):
    user: str
    action: str
    comment: str | None
    detail: str | None
    via: str | None
    ts: float
    source: str | None


def find(conn: Connection, ref: str) -> AlertRef | None:
    row = conn.execute(text("SELECT key, id, state, assignee FROM alerts WHERE id = :k OR key = :k"),
                       {"k": ref}).mappings().first()
    return cast(AlertRef, dict(row)) if row else None


def act(conn: Connection, ref: str, action: str, user: str, now: float, comment: str | None = None,
        assignee: str | None = None, via: str = "api", source: str | None = None) -> Action:
    """Apply one action to alert ``ref`` (id or key) and audit it; returns the audit record."""
    if action not in ACTIONS:
        raise TriageError(f"unknown action {action!r}: one of {', '.join(ACTIONS)}")
    alert = find(conn, ref)
    if alert is None:
        raise TriageError(f"no alert {ref!r}")
    comment = (comment or "").strip()[:MAX_COMMENT] or None
    detail = None
    if action in STATE_OF:
        Store.set_state(conn, alert["key"], STATE_OF[action], user, now)
        detail = f"{alert['state']} -> {STATE_OF[action]}"
    elif action == "reopen":
        conn.execute(text("UPDATE alerts SET state = 'open', updated_at = :t WHERE key = :k"), {"t": now, "k": alert["key"]})
        alert_changed(conn, alert["key"], now)
        detail = f"{alert['state']} -> open"
    elif action == "assign":
        assignee = (assignee or "").strip() or None
        if assignee is not None and not conn.execute(text("SELECT 1 FROM users WHERE name = :n"), {"n": assignee}).first():
            raise TriageError(f"no user {assignee!r} to assign to")
        conn.execute(text("UPDATE alerts SET assignee = :a, updated_at = :t WHERE key = :k"),
                     {"a": assignee, "t": now, "k": alert["key"]})
        detail = f"assigned to {assignee}" if assignee else "unassigned"
    elif comment is None:
        raise TriageError("a comment needs text")
    entry = trail.record(conn, user=user, action=action, now=now, via=via, source=source, target=alert["id"],
                         detail=detail, comment=comment, alert_key=alert["key"], alert_id=alert["id"])
    return {"alert_key": alert["key"], "alert_id": alert["id"], "user": user, "action": action,
            "comment": entry["comment"], "detail": detail, "via": via, "ts": now, "source": source, "id": entry["id"]}


def audit(conn: Connection, alert_id: str) -> list[TrailEntry]:
    """An alert's trail, oldest first: {user, action, comment, detail, via, ts, source}."""
    return [{"user": e["user"], "action": e["action"], "comment": e["comment"], "detail": e["detail"],
             "via": e["via"], "ts": e["ts"], "source": e["source"]} for e in trail.of_alert(conn, alert_id)]
