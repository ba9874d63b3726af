"""The alert outbox: one notification per state change, one delivery per receiver, all in the database.

An alert's state changes (opened, escalated, resolved, reopened) are recorded
in the same transaction as the change itself, so a rolled-back batch notifies
nobody and a committed one cannot be forgotten by a crash. Each notification
has a deterministic id (alert key, epoch, transition, severity); collectors
that see the same change insert it once (``ON CONFLICT DO NOTHING``). Each
receiver gets its own delivery row, claimed with a lease, so several
dispatchers share the work without sending twice, and a receiver that is down
holds back only its own rows.

No import of the store here: the store calls :func:`alert_changed`.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from sqlalchemy import Connection, text

LEASE_S = 60.0
MAX_ATTEMPTS = 15  # backoff doubles from 2 s, capped at 10 min: about 1.5 hours of retries
TRANSITIONS = ("open", "escalate", "resolve")


def alert_changed(conn: Connection, key_or_id: str, now: float) -> str | None:
    """Record a notification if the alert's state differs from what was last notified.

    Returns the transition recorded (``open``, ``escalate``, ``resolve``) or None.
    The last notification of an alert is its notified state: an open alert whose last
    notification is a resolve (or none) has been opened; a higher severity than last
    notified is an escalation; a resolved alert last notified open has been resolved.
    """
    row = conn.execute(text("SELECT * FROM alerts WHERE key = :k OR id = :k"), {"k": key_or_id}).mappings().first()
    if row is None:
        return None
    last = conn.execute(text("SELECT transition, epoch, severity_rank FROM alert_notifications WHERE alert_key = :k "
                             "ORDER BY seq DESC LIMIT 1"), {"k": row["key"]}).mappings().first()
    epoch = int(last["epoch"]) if last else 0
    rank = int(row["severity_rank"])
    transition: str | None = None
    if row["state"] == "resolved":
        if last is not None and last["transition"] != "resolve":
            transition = "resolve"
    elif last is None:
        transition = "open"
    elif last["transition"] == "resolve":
        transition, epoch = "open", epoch + 1
    elif rank > int(last["severity_rank"]):
        transition = "escalate"
    if transition is None:
        return None
    dedup = f"{row['key']}|{epoch}|{transition}|{rank if transition == 'escalate' else ''}"
    nid = hashlib.sha256(dedup.encode()).hexdigest()[:24]
    alert = dict(row)
    alert.pop("severity_rank", None)
    alert["evidence"] = json.loads(alert["evidence"])
    payload = json.dumps({"transition": transition, "epoch": epoch, "alert": alert}, default=str)
    seq = conn.execute(text(
        "INSERT INTO alert_notifications(id, alert_key, alert_id, host, transition, epoch, severity_rank, payload, "
        "created_at) VALUES (:id, :k, :aid, :h, :t, :e, :r, :p, :now) ON CONFLICT (id) DO NOTHING RETURNING seq"),
        {"id": nid, "k": row["key"], "aid": row["id"], "h": row["host"], "t": transition, "e": epoch, "r": rank,
         "p": payload, "now": now}).scalar()
    if seq is None:
        return None  # another collector recorded this very change
    conn.execute(text("INSERT INTO alert_deliveries(notification_seq, output, state, attempts, next_at) "
                      "SELECT :s, name, 'pending', 0, :now FROM alert_outputs WHERE enabled = 1"),
                 {"s": seq, "now": now})
    return transition


# -- receivers' configuration ----------------------------------------------------


def add_output(conn: Connection, name: str, url: str, options: dict[str, Any], now: float) -> None:
    conn.execute(text("INSERT INTO alert_outputs(name, url, options, enabled, created_at) VALUES (:n, :u, :o, 1, :t) "
                      "ON CONFLICT (name) DO UPDATE SET url = excluded.url, options = excluded.options, enabled = 1"),
                 {"n": name, "u": url, "o": json.dumps(options), "t": now})


def remove_output(conn: Connection, name: str) -> bool:
    conn.execute(text("DELETE FROM alert_deliveries WHERE output = :n AND state = 'pending'"), {"n": name})
    return bool(conn.execute(text("DELETE FROM alert_outputs WHERE name = :n"), {"n": name}).rowcount)


def outputs(conn: Connection) -> list[dict[str, Any]]:
    rows = conn.execute(text("SELECT name, url, options, enabled, created_at FROM alert_outputs ORDER BY name")).mappings()
    return [{**dict(r), "options": json.loads(r["options"]), "enabled": bool(r["enabled"])} for r in rows]


def delivery_counts(conn: Connection) -> list[dict[str, Any]]:
    rows = conn.execute(text("SELECT output, state, count(*) AS n FROM alert_deliveries GROUP BY output, state"))
    return [{"output": r[0], "state": r[1], "count": int(r[2])} for r in rows]


# -- the dispatcher's side ---------------------------------------------------------


def claim(conn: Connection, output: str, worker: str, now: float, limit: int = 50) -> list[dict[str, Any]]:
    """Due deliveries for one receiver, leased to ``worker`` (a row another worker holds is skipped).

    Each row is taken by a conditional UPDATE, so two dispatchers racing for it
    cannot both win, on SQLite or PostgreSQL alike.
    """
    due = conn.execute(text(
        "SELECT d.notification_seq FROM alert_deliveries d WHERE d.output = :o AND d.state = 'pending' "
        "AND d.next_at <= :now AND (d.claimed_until IS NULL OR d.claimed_until < :now) "
        "ORDER BY d.notification_seq LIMIT :lim"), {"o": output, "now": now, "lim": limit}).scalars().all()
    taken: list[int] = []
    for seq in due:
        res = conn.execute(text(
            "UPDATE alert_deliveries SET claimed_by = :w, claimed_until = :until WHERE notification_seq = :s "
            "AND output = :o AND state = 'pending' AND (claimed_until IS NULL OR claimed_until < :now)"),
            {"w": worker, "until": now + LEASE_S, "s": seq, "o": output, "now": now})
        if res.rowcount:
            taken.append(int(seq))
    if not taken:
        return []
    params = {f"s{i}": s for i, s in enumerate(taken)}
    rows = conn.execute(text(
        "SELECT n.seq, n.id, n.payload, d.attempts FROM alert_notifications n JOIN alert_deliveries d "
        f"ON d.notification_seq = n.seq AND d.output = :o WHERE n.seq IN ({', '.join(':' + k for k in params)}) "
        "ORDER BY n.seq"), {"o": output, **params}).mappings()
    return [{"seq": int(r["seq"]), "id": r["id"], "attempts": int(r["attempts"]), **json.loads(r["payload"])}
            for r in rows]


def delivered(conn: Connection, output: str, seq: int, worker: str, now: float) -> None:
    conn.execute(text("UPDATE alert_deliveries SET state = 'delivered', delivered_at = :t, attempts = attempts + 1, "
                      "claimed_until = NULL, last_error = NULL WHERE notification_seq = :s AND output = :o "
                      "AND claimed_by = :w"), {"t": now, "s": seq, "o": output, "w": worker})


def failed(conn: Connection, output: str, seq: int, worker: str, error: str, attempts: int, now: float) -> str:
    """Schedule a retry with exponential backoff, or give up after MAX_ATTEMPTS (kept, counted, shown)."""
    state = "failed" if attempts + 1 >= MAX_ATTEMPTS else "pending"
    delay = min(600.0, 2.0 * 2 ** attempts)
    conn.execute(text("UPDATE alert_deliveries SET state = :st, attempts = attempts + 1, next_at = :n, "
                      "claimed_until = NULL, last_error = :e WHERE notification_seq = :s AND output = :o "
                      "AND claimed_by = :w"),
                 {"st": state, "n": now + delay, "e": error[:500], "s": seq, "o": output, "w": worker})
    return state
