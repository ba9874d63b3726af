"""Retention: fold old raw egress into per-minute rows, and delete what is past its time.

Time here is when a fact was stored (``received_at``), never the time its agent wrote on it: an
agent's spool delivered days late, or an agent whose clock is wrong, must not have its facts purged
as they arrive, before detection has judged them.

Raw egress rows (one per sample, process and destination: ~86 M a day at
1,000 hosts) are kept for a short window (``raw_egress_s``, default 1 h), then
folded into ``egress_minute``: one row per minute, host, process and
destination, kept as long as detections look back (``egress_s``). Egress
sample events go with their raw rows; other events, weight reads and
contacts are kept for ``events_s``.

Every step works in short transactions (a few seconds of arrivals, or a
few thousand rows, at a time), so on SQLite ingest waits at most for one of
them, and on PostgreSQL it never waits: deletes of old rows and inserts of
new ones do not touch the same rows. Collectors sharing a PostgreSQL fold
under an advisory lock, so no minute is counted twice.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from sqlalchemy import Connection, text

from weightwarden.collector.store.database import DEAD_LETTER_MAX_BYTES, DEAD_LETTER_MAX_ROWS, Store

FOLD_SLICE_S = 10.0  # arrivals folded per transaction
DELETE_BATCH = 5000
MIN_RAW_EGRESS_S = 600.0  # an agent replays what it sent in the last 30 s: ids must outlive that


@dataclass(frozen=True)
class Retention:
    events_s: float = 30 * 86400.0  # events (but egress samples), weight reads, contacts, processes, dead letters
    raw_egress_s: float = 3600.0  # raw egress rows and egress_sample events
    egress_s: float = 8 * 86400.0  # per-minute egress, relays, pipe ends...: at least as long as detections look back
    dead_letter_rows: int = DEAD_LETTER_MAX_ROWS
    dead_letter_bytes: int = DEAD_LETTER_MAX_BYTES
    history_per_host: int = 100_000  # (program, destination) pairs remembered per host


def _minute(conn: Connection) -> str:
    # ts >= 0 (the event models say so): truncation is floor.
    return "CAST(ts / 60 AS INTEGER) * 60" if conn.dialect.name == "sqlite" else "CAST(floor(ts / 60) AS BIGINT) * 60"


def fold_egress(store: Store, before: float) -> int:
    """Fold raw egress rows that arrived before ``before`` into per-minute rows; returns rows folded."""
    folded = 0
    while True:
        with store.tx() as conn:
            if conn.dialect.name == "postgresql" and not conn.execute(
                    text("SELECT pg_try_advisory_xact_lock(7758)")).scalar():
                return folded  # another collector is folding
            low = conn.execute(text("SELECT min(received_at) FROM egress_raw")).scalar()
            if low is None or low >= before:
                return folded
            upto = min(before, float(low) + FOLD_SLICE_S)
            minute = _minute(conn)
            conn.execute(text(
                "INSERT INTO egress_minute(host, minute, pid, exe, address, port, ppid, name, uid, allowed, bytes, ts, "
                "rate_bps, event_id, pipes, received_at, dns_name, user_name, start_time, first_ts, protocol, accepted, "
                "container, cmd_hash, exact, complete, samples) "
                f"SELECT host, {minute}, pid, coalesce(exe, ''), address, coalesce(port, 0), max(ppid), max(name), "
                "max(uid), min(allowed), sum(bytes), max(ts), max(rate_bps), max(event_id), max(pipes), "
                "max(received_at), max(dns_name), max(user_name), max(start_time), min(coalesce(first_ts, ts)), "
                # Accepted (replies to clients) only if every folded row said so (unknown is not); exact likewise.
                "max(protocol), min(coalesce(accepted, 0)), max(container), max(cmd_hash), min(coalesce(exact, 0)), "
                # Whole attribution only if every folded row says so (unknown is not).
                "min(coalesce(complete, 0)), count(*) FROM egress_raw WHERE received_at < :u "
                f"GROUP BY host, {minute}, pid, coalesce(exe, ''), address, coalesce(port, 0) "
                "ON CONFLICT (host, minute, pid, exe, address, port) DO UPDATE SET "
                "bytes = egress_minute.bytes + excluded.bytes, samples = egress_minute.samples + excluded.samples, "
                "ts = CASE WHEN egress_minute.ts > excluded.ts THEN egress_minute.ts ELSE excluded.ts END, "
                # Not allowlisted wins: a policy change within the minute must not hide bytes from detection.
                "allowed = CASE WHEN egress_minute.allowed < excluded.allowed THEN egress_minute.allowed "
                "  ELSE excluded.allowed END, "
                "rate_bps = CASE WHEN egress_minute.rate_bps > excluded.rate_bps THEN egress_minute.rate_bps "
                "  ELSE excluded.rate_bps END, "
                "received_at = excluded.received_at, event_id = excluded.event_id, "
                "pipes = coalesce(excluded.pipes, egress_minute.pipes), "
                "dns_name = coalesce(excluded.dns_name, egress_minute.dns_name), "
                "user_name = coalesce(excluded.user_name, egress_minute.user_name), "
                "start_time = coalesce(excluded.start_time, egress_minute.start_time), "
                "first_ts = CASE WHEN egress_minute.first_ts < excluded.first_ts THEN egress_minute.first_ts "
                "  ELSE excluded.first_ts END, "
                "protocol = coalesce(excluded.protocol, egress_minute.protocol), "
                "accepted = CASE WHEN egress_minute.accepted < excluded.accepted THEN egress_minute.accepted "
                "  ELSE excluded.accepted END, "
                "container = coalesce(excluded.container, egress_minute.container), "
                "cmd_hash = coalesce(excluded.cmd_hash, egress_minute.cmd_hash), "
                "exact = CASE WHEN egress_minute.exact < excluded.exact THEN egress_minute.exact ELSE excluded.exact END, "
                "complete = CASE WHEN coalesce(egress_minute.complete, 0) < excluded.complete "
                "  THEN coalesce(egress_minute.complete, 0) ELSE excluded.complete END"),
                {"u": upto})
            folded += int(conn.execute(text("DELETE FROM egress_raw WHERE received_at < :u"), {"u": upto}).rowcount or 0)


def _delete_batched(store: Store, table: str, key: str, where: str, params: dict[str, float]) -> int:
    """DELETE in batches of DELETE_BATCH rows, one short transaction each."""
    gone = 0
    while True:
        with store.tx() as conn:
            n = int(conn.execute(text(f"DELETE FROM {table} WHERE {key} IN (SELECT {key} FROM {table} WHERE {where} "
                                      f"LIMIT {DELETE_BATCH})"), params).rowcount or 0)
        gone += n
        if n < DELETE_BATCH:
            return gone


def _cap_history(conn: Connection, cap: int) -> int:
    """A host that contacts more distinct (program, destination) pairs than ``cap`` forgets the
    ones it used least recently (their next contact counts as new again)."""
    gone = 0
    over = conn.execute(text("SELECT host FROM history GROUP BY host HAVING count(*) > :c"), {"c": cap}).scalars()
    for host in list(over):
        edge = conn.execute(text("SELECT last_seen FROM history WHERE host=:h ORDER BY last_seen DESC LIMIT 1 OFFSET :c"),
                            {"h": host, "c": cap}).scalar()
        gone += int(conn.execute(text("DELETE FROM history WHERE host=:h AND last_seen <= :e"),
                                 {"h": host, "e": edge}).rowcount or 0)
    return gone


def run(store: Store, ret: Retention, now: float | None = None) -> dict[str, int]:
    """One retention pass; returns rows removed (or folded) per table."""
    now = time.time() if now is None else now
    raw_cut, old_cut = now - ret.raw_egress_s, now - ret.events_s
    out = {"egress": fold_egress(store, raw_cut)}
    # Egress samples leave with their raw rows, but never ahead of the sequence-gap check.
    out["events"] = _delete_batched(
        store, "events", "id",
        "type = 'egress_sample' AND received_at < :c AND "
        "seq <= coalesce((SELECT seq_contig FROM hosts h WHERE h.host = events.host), 0)", {"c": raw_cut})
    out["events"] += _delete_batched(store, "events", "id", "received_at < :c", {"c": old_cut})
    minute_cut = now - ret.egress_s
    row = "rowid" if store.dialect == "sqlite" else "ctid"
    out["egress_minute"] = _delete_batched(store, "egress_minute", row, "received_at < :c OR received_at IS NULL AND "
                                           "ts < :c", {"c": minute_cut})
    # Local hand-overs (one row per sample and peer), pipe ends, packet sockets, relinks and blind spans
    # matter only as long as detections look back.
    for table in ("relays", "pipe_ends", "raw_sockets", "relinks", "blind_spans"):
        out[table] = _delete_batched(store, table, row, "received_at < :c OR received_at IS NULL AND ts < :c",
                                     {"c": minute_cut})
    with store.tx() as conn:
        for table, where in (("weight_reads", "received_at < :c OR received_at IS NULL AND ts < :c"),
                             ("history", "last_seen < :c"), ("processes", "last_seen < :c"),
                             ("dead_letters", "received_at < :c")):
            out[table] = int(conn.execute(text(f"DELETE FROM {table} WHERE {where}"), {"c": old_cut}).rowcount or 0)
        out["dead_letters"] += store.trim_dead_letters(conn, ret.dead_letter_rows, ret.dead_letter_bytes)
        out["history"] += _cap_history(conn, ret.history_per_host)
        # Console sessions past their expiry, and alert notifications (with their deliveries) as old as
        # the events they announced, but never an alert's latest: that is what receivers were last told
        # (outbox.py), and without it a month-old open alert would be announced as opened again. The
        # audit trail is kept: it is the record of who did what.
        out["web_sessions"] = int(conn.execute(text("DELETE FROM web_sessions WHERE expires_at < :n"),
                                               {"n": now}).rowcount or 0)
        superseded = ("SELECT seq FROM alert_notifications n WHERE n.created_at < :c AND n.seq < "
                      "(SELECT max(m.seq) FROM alert_notifications m WHERE m.alert_key = n.alert_key)")
        conn.execute(text(f"DELETE FROM alert_deliveries WHERE notification_seq IN ({superseded})"), {"c": old_cut})
        out["alert_notifications"] = int(conn.execute(text(f"DELETE FROM alert_notifications WHERE seq IN ({superseded})"),
                                                      {"c": old_cut}).rowcount or 0)
    return out


def purge(store: Store, horizon_s: float, now: float | None = None) -> dict[str, int]:
    """Everything older than ``horizon_s`` (events, reads, egress in either form, dead letters), in short
    batches: one horizon for all, for tests and one-off clean-ups (the collector's own schedule is :func:`run`)."""
    return run(store, Retention(events_s=horizon_s, raw_egress_s=horizon_s, egress_s=horizon_s), now)
