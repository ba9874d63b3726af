"""The outbox's reading side, and the outputs' configuration: which receivers there are, and what they are owed.

Notifications are written by the store (:mod:`weightwarden.collector.store.notifications`), in
the transaction of the change they announce; each receiver gets its own delivery row, claimed here
with a lease, so several dispatchers share the work without sending twice, and a receiver that is
down holds back only its own rows.

An output is stored as :class:`~base.OutputSpec`: its URL (no password in it), plain options, sealed
secrets (``{"v": 2, "options": ..., "secrets": ...}`` in ``alert_outputs.options``). A row written by
an older collector (flat options: secrets in clear, files named) is read as ``legacy`` and not used
until ``weightwarden-collector outputs migrate`` rewrites it (docs/outputs.md).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TypedDict, cast

from sqlalchemy import Connection, RowMapping, text

from weightwarden.collector.outputs.base import OutputSpec
from weightwarden.collector.outputs.message import Notification
from weightwarden.jsontypes import JsonObject
from weightwarden.mqtt import redact

LEASE_S = 60.0
MAX_ATTEMPTS = 15  # backoff doubles from 2 s, capped at 10 min: about 1.5 hours of retries
STORED_VERSION = 2


@dataclass(frozen=True)
class StoredOutput:
    """An output as read back: its spec, whether it is enabled, whether an older collector wrote it."""

    spec: OutputSpec
    enabled: bool
    legacy: bool
    created_at: float

    @property
    def name(self) -> str:
        return self.spec.name

    def shown(self) -> JsonObject:
        out = self.spec.shown()
        if self.legacy:
            # An older row may hold a secret in clear: show the option names only.
            out["options"] = {k: ("***" if k in ("secret", "password") else v) for k, v in self.spec.options.items()}
        return {**out, "enabled": self.enabled, "legacy": self.legacy, "created_at": self.created_at}


# -- receivers' configuration ----------------------------------------------------


def add_output(conn: Connection, spec: OutputSpec, now: float) -> None:
    stored = json.dumps({"v": STORED_VERSION, "options": dict(spec.options), "secrets": dict(spec.secrets)})
    conn.execute(text("INSERT INTO alert_outputs(name, url, options, enabled, created_at, audit) "
                      "VALUES (:n, :u, :o, 1, :t, :a) ON CONFLICT (name) DO UPDATE SET url = excluded.url, "
                      "options = excluded.options, enabled = 1, audit = excluded.audit"),
                 {"n": spec.name, "u": spec.url, "o": stored, "t": now, "a": int(spec.audit)})


def remove_output(conn: Connection, name: str) -> bool:
    conn.execute(text("DELETE FROM alert_deliveries WHERE output = :n AND state = 'pending'"), {"n": name})
    return bool(conn.execute(text("DELETE FROM alert_outputs WHERE name = :n"), {"n": name}).rowcount)


def _stored(row: RowMapping) -> StoredOutput:
    doc = json.loads(row["options"])
    legacy = not (isinstance(doc, dict) and doc.get("v") == STORED_VERSION)
    options, secrets = (doc, {}) if legacy else (doc.get("options") or {}, doc.get("secrets") or {})
    spec = OutputSpec(row["name"], row["url"], options, secrets, bool(row["audit"]))
    return StoredOutput(spec, bool(row["enabled"]), legacy, float(row["created_at"]))


def outputs(conn: Connection) -> list[StoredOutput]:
    rows = conn.execute(text("SELECT name, url, options, enabled, created_at, audit FROM alert_outputs "
                             "ORDER BY name")).mappings()
    return [_stored(r) for r in rows]


def output(conn: Connection, name: str) -> StoredOutput | None:
    row = conn.execute(text("SELECT name, url, options, enabled, created_at, audit FROM alert_outputs "
                            "WHERE name = :n"), {"n": name}).mappings().first()
    return _stored(row) if row else None


class DeliveryCount(TypedDict):
    output: str
    state: str
    count: int


def delivery_counts(conn: Connection) -> list[DeliveryCount]:
    rows = conn.execute(text("SELECT output, state, count(*) AS n FROM alert_deliveries GROUP BY output, state"))
    return [{"output": r[0], "state": r[1], "count": int(r[2])} for r in rows]


# -- the dispatcher's side ---------------------------------------------------------


def claim(conn: Connection, output: str, worker: str, now: float, limit: int = 50) -> list[Notification]:
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
    # The payload is what notifications.alert_changed / audit_recorded wrote: a transition and its alert or entry.
    return [cast(Notification, {"seq": int(r["seq"]), "id": r["id"], "attempts": int(r["attempts"]),
                                **json.loads(r["payload"])}) for r in rows]


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
                 {"st": state, "n": now + delay, "e": redact(error)[:500], "s": seq, "o": output, "w": worker})
    return state
