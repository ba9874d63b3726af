"""The audit trail: who did what, from where, when, and how it went. Append-only.

Every authentication (logins, failures, backoffs, logouts) and every
administration action (users, roles, passwords, tokens, outputs, settings),
from the console, the API or the CLI, is one row; so is every action on an
alert (ack, resolve, assign, comment, reopen). The table refuses UPDATE and
DELETE (triggers, migration 7), retention keeps it as it keeps alerts, and each
row is queued for the outputs that export the audit trail
(:func:`notifications.audit_recorded`).
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Connection, RowMapping, text

from weightwarden.collector.store.notifications import audit_recorded
from weightwarden.collector.store.rows import AuditRecord, SqlParams

# What is recorded (``action``). Alert actions are the triage verbs.
AUTH_ACTIONS = ("login", "login_failed", "login_backoff", "logout", "token_refused")
ADMIN_ACTIONS = ("user_add", "user_remove", "user_role", "user_password", "user_unlock", "token_create",
                 "token_revoke", "output_add", "output_remove", "output_migrate", "settings_change")
ALERT_ACTIONS = ("ack", "resolve", "assign", "comment", "reopen")
OUTCOMES = ("ok", "failed", "refused")
MAX_TEXT = 4000


@dataclass(frozen=True)
class AuditFilter:
    since: float | None = None
    until: float | None = None
    user: str | None = None
    action: str | None = None
    limit: int = 100
    offset: int = 0


def _cut(value: str | None, limit: int = MAX_TEXT) -> str | None:
    """Storable text (no NUL, no lone surrogate: PostgreSQL takes neither), at most ``limit`` characters.
    What it says is kept as it was: the console and the CLI make it safe to show."""
    if value is None:
        return None
    return value.encode("utf-8", "backslashreplace").decode("utf-8").replace("\x00", "\\x00")[:limit]


def record(conn: Connection, *, user: str, action: str, now: float, via: str | None = None,
           source: str | None = None, target: str | None = None, outcome: str = "ok", detail: str | None = None,
           comment: str | None = None, alert_key: str | None = None, alert_id: str | None = None) -> AuditRecord:
    """Append one entry, in the caller's transaction (an action that rolls back leaves no entry)."""
    assert outcome in OUTCOMES, outcome
    entry = AuditRecord(id=0, ts=now, user=_cut(user, 200) or "?", action=action, target=_cut(target, 500),
                        source=_cut(source, 200), via=_cut(via, 100), outcome=outcome, detail=_cut(detail),
                        comment=_cut(comment), alert_key=alert_key, alert_id=alert_id)
    new_id = conn.execute(text(
        "INSERT INTO audit(alert_key, alert_id, user_name, action, comment, detail, via, ts, source, target, outcome) "
        "VALUES (:alert_key, :alert_id, :user, :action, :comment, :detail, :via, :ts, :source, :target, :outcome) "
        "RETURNING id"), {k: v for k, v in entry.items() if k != "id"}).scalar()
    entry["id"] = int(new_id or 0)
    audit_recorded(conn, entry, now)
    return entry


_COLUMNS = ("id, ts, user_name AS user, action, target, source, via, outcome, detail, comment, alert_key, alert_id")


def _entry(r: RowMapping) -> AuditRecord:
    return AuditRecord(id=int(r["id"]), ts=float(r["ts"]), user=r["user"], action=r["action"], target=r["target"],
                       source=r["source"], via=r["via"], outcome=r["outcome"] or "ok", detail=r["detail"],
                       comment=r["comment"], alert_key=r["alert_key"], alert_id=r["alert_id"])


def entries(conn: Connection, f: AuditFilter) -> list[AuditRecord]:
    """Newest first."""
    where: list[str] = ["1=1"]
    params: SqlParams = {"lim": f.limit, "off": f.offset}
    if f.since is not None:
        where.append("ts >= :since")
        params["since"] = f.since
    if f.until is not None:
        where.append("ts <= :until")
        params["until"] = f.until
    if f.user:
        where.append("user_name = :user")
        params["user"] = f.user
    if f.action:
        where.append("action = :action")
        params["action"] = f.action
    rows = conn.execute(text(f"SELECT {_COLUMNS} FROM audit WHERE {' AND '.join(where)} "
                             "ORDER BY id DESC LIMIT :lim OFFSET :off"), params).mappings()
    return [_entry(r) for r in rows]


def of_alert(conn: Connection, alert_id: str) -> list[AuditRecord]:
    """An alert's trail, oldest first."""
    rows = conn.execute(text(f"SELECT {_COLUMNS} FROM audit WHERE alert_id = :a AND alert_key IS NOT NULL "
                             "ORDER BY id"), {"a": alert_id}).mappings()
    return [_entry(r) for r in rows]


__all__ = ["ADMIN_ACTIONS", "ALERT_ACTIONS", "AUTH_ACTIONS", "AuditFilter", "AuditRecord", "entries", "of_alert",
           "record"]
