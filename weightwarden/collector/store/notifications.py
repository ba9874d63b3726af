"""The outbox's write side: a notification recorded in the same transaction as what it announces.

An alert's state changes (opened, escalated, resolved, reopened) are recorded
here by whoever changes the alert (the detector's writers in :mod:`facts`, the
store's own, triage), so a rolled-back batch notifies nobody and a committed
one cannot be forgotten by a crash. Each notification has a deterministic id
(alert key, epoch, transition, severity); collectors that see the same change
insert it once (``ON CONFLICT DO NOTHING``). Each receiver gets its own
delivery row; :mod:`weightwarden.collector.outputs` claims and sends them.

Audit entries (who did what in the console, the API and the CLI) go through
the same outbox to the outputs that asked for them (``alert_outputs.audit``).

This module is the store's: the outputs read what it writes, the store never
imports the outputs.
"""

from __future__ import annotations

import hashlib
import json
import time

from sqlalchemy import Connection, text

from weightwarden.collector.store.rows import AuditRecord

TRANSITIONS = ("open", "escalate", "resolve")
AUDIT_KEY = "(audit)"  # the alert_key of audit notifications: one series, so retention keeps only its latest


def alert_changed(conn: Connection, key_or_id: str, now: float) -> str | None:
    """Record a notification if the alert's state differs from what was last notified.

    Returns the transition recorded (``open``, ``escalate``, ``resolve``) or None.
    The last notification of an alert is its notified state: an open alert whose last
    notification is a resolve (or none) has been opened; a higher severity than last
    notified is an escalation; a resolved alert last notified open has been resolved.
    An alert opened or escalated is raised: ``raised_at`` (the collector's clock, whatever
    time the agent wrote on its events) is when, and what the queue sorts by.
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
    if transition != "resolve":
        conn.execute(text("UPDATE alerts SET raised_at = :now WHERE key = :k"), {"now": now, "k": row["key"]})
    conn.execute(text("INSERT INTO alert_deliveries(notification_seq, output, state, attempts, next_at) "
                      "SELECT :s, name, 'pending', 0, :now FROM alert_outputs WHERE enabled = 1"),
                 {"s": seq, "now": now})
    return transition


def audit_recorded(conn: Connection, entry: AuditRecord, now: float | None = None) -> None:
    """Queue one audit entry (as :mod:`audit` wrote it, with its id) for the outputs that export the audit."""
    now = time.time() if now is None else now
    nid = "audit-" + hashlib.sha256(f"audit|{entry['id']}".encode()).hexdigest()[:18]
    seq = conn.execute(text(
        "INSERT INTO alert_notifications(id, alert_key, alert_id, host, transition, epoch, severity_rank, payload, "
        "created_at) VALUES (:id, :k, :aid, 'collector', 'audit', 0, 0, :p, :now) ON CONFLICT (id) DO NOTHING "
        "RETURNING seq"),
        {"id": nid, "k": AUDIT_KEY, "aid": str(entry["id"]), "now": now,
         "p": json.dumps({"transition": "audit", "audit": entry}, default=str)}).scalar()
    if seq is not None:
        conn.execute(text("INSERT INTO alert_deliveries(notification_seq, output, state, attempts, next_at) "
                          "SELECT :s, name, 'pending', 0, :now FROM alert_outputs WHERE enabled = 1 AND audit = 1"),
                     {"s": seq, "now": now})


__all__ = ["AUDIT_KEY", "TRANSITIONS", "alert_changed", "audit_recorded"]
