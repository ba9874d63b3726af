"""Storage: SQLite (WAL) by default, PostgreSQL with the same SQL (SQLAlchemy Core).

Everything correlation needs lives here, not in a collector's memory, so
several collectors sharing one PostgreSQL reach the same alerts. Writes are
idempotent: an event is stored once by id; weight reads and alerts are
upserts keyed by what they describe.

Egress is kept twice over: raw rows (``egress_raw``: one per sample, process
and destination) for a short window, then one row per minute, host, process
and destination (``egress_minute``, folded by :mod:`retention`). Queries read
the view ``egress``, both at once, so detections see the same totals whichever
form the rows are in; only ingest writes ``egress_raw``.
Schema and migrations: :mod:`schema`; retention: :mod:`retention`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import cast

from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import DBAPIError, DisconnectionError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from weightwarden.collector.store import bulk, schema

# Re-exported: the alert scale and what counts as backdated are asked of this module.
from weightwarden.collector.store.alert_store import BACKDATED_S as BACKDATED_S
from weightwarden.collector.store.alert_store import SEVERITY_RANK as SEVERITY_RANK
from weightwarden.collector.store.alert_store import AlertStore
from weightwarden.collector.store.alert_store import backdated_by as backdated_by
from weightwarden.collector.store.host_rows import (
    CollectorStatus,
    ExportedEvent,
    HostRow,
    HostTouch,
    ProcessInfo,
    ProcessRow,
    StoredEvent,
)
from weightwarden.collector.store.rows import EgressRow, ReadRow, SqlParams, SqlValue
from weightwarden.collector.store.schema import StoreError, normalize_url, private_files, safe_url
from weightwarden.events import Event

# Columns written in bulk (weightwarden/collector/store/bulk.py), with their PostgreSQL types.
T, BIG, DBL, INT = "text", "bigint", "double precision", "integer"
EVENT_COLUMNS = (("id", T), ("host", T), ("seq", BIG), ("ts", DBL), ("type", T), ("data", T), ("received_at", DBL))
HOST_COLUMNS = (("host", T), ("first_seen", DBL), ("last_seen", DBL), ("status", T), ("seq_max", BIG),
                ("seq_contig", BIG), ("egress_bps", DBL), ("policy", T), ("policy_digest", T), ("backend", T),
                ("rules_in_force", INT), ("caps", INT), ("last_heartbeat", DBL), ("weights_bytes", BIG))
DEAD_LETTER_COLUMNS = (("received_at", DBL), ("topic", T), ("reason", T), ("payload", T), ("code", T), ("size", BIG))
PROCESS_COLUMNS = (("host", T), ("pid", BIG), ("exe", T), ("ppid", BIG), ("name", T), ("uid", BIG), ("user_name", T),
                   ("cmdline", T), ("cgroup", T), ("container", T), ("start_time", DBL), ("first_seen", DBL),
                   ("last_seen", DBL))
EGRESS_RAW_COLUMNS = (("host", T), ("pid", BIG), ("ppid", BIG), ("exe", T), ("name", T), ("uid", BIG), ("address", T),
                      ("port", INT), ("allowed", INT), ("bytes", BIG), ("ts", DBL), ("rate_bps", DBL),
                      ("event_id", T), ("pipes", T), ("received_at", DBL), ("dns_name", T), ("user_name", T),
                      ("start_time", DBL), ("first_ts", DBL), ("protocol", T), ("accepted", INT), ("container", T),
                      ("cmd_hash", T), ("exact", INT), ("complete", INT))
HISTORY_COLUMNS = (("host", T), ("exe", T), ("address", T), ("first_seen", DBL), ("last_seen", DBL))
_NEWER_READ = ("(excluded.ts > weight_reads.ts OR (excluded.ts = weight_reads.ts AND (excluded.bytes > weight_reads.bytes "
               "OR (excluded.bytes = weight_reads.bytes AND excluded.event_id > weight_reads.event_id))))")
DEAD_LETTER_MAX_ROWS = 10_000
DEAD_LETTER_MAX_BYTES = 8 << 20


class Store(AlertStore):
    """One database. ``Store(url)`` creates and migrates (the collector, tests); read commands
    use ``Store(url, read_only=True, migrate=False)``, which creates nothing and refuses a schema
    it does not know. Errors in opening are :class:`StoreError` with a one-line message."""

    def __init__(self, url: str, *, read_only: bool = False, migrate: bool = True) -> None:
        self.url = url
        self.read_only = read_only
        if not read_only:
            private_files(url, create=migrate)
        self.engine: Engine = schema.make_engine(url, read_only=read_only, create=migrate and not read_only)
        self.dialect = self.engine.dialect.name
        if migrate and not read_only:
            schema.migrate(self.engine, url)
        else:
            schema.check_version(self.engine, url)

    def __repr__(self) -> str:
        return f"Store({safe_url(self.url)!r})"

    def migrate(self) -> tuple[int, int]:
        return schema.migrate(self.engine, self.url)

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def tx(self) -> Iterator[Connection]:
        with self.engine.begin() as conn:
            yield conn

    # -- is the database there? ----------------------------------------------

    @staticmethod
    def is_outage(exc: BaseException) -> bool:
        """Errors that say the database is away or busy (worth retrying), as opposed to errors
        a particular statement's data caused. Operational errors can be either (SQLite's "too
        many SQL variables" is one): :meth:`reachable` tells them apart."""
        if isinstance(exc, (DisconnectionError, PoolTimeout, InterfaceError)):
            return True
        return isinstance(exc, DBAPIError) and bool(exc.connection_invalidated)

    def reachable(self) -> bool:
        """Can we write at all right now? (A read alone would pass while another writer holds SQLite.)"""
        try:
            with self.engine.begin() as conn:
                conn.execute(text("INSERT INTO meta(key, value) VALUES ('probe', '0') "
                                  "ON CONFLICT (key) DO UPDATE SET value = meta.value"))
            return True
        except Exception:  # noqa: BLE001 - any failure here means "not now"
            return False

    def transient(self, exc: BaseException) -> bool:
        """Retry the batch (True) or look for the event that cannot be stored (False)."""
        if self.is_outage(exc):
            return True
        if isinstance(exc, OperationalError):
            return not self.reachable()
        return False

    # -- ingest ------------------------------------------------------------

    @staticmethod
    def existing_ids(conn: Connection, ids: list[str]) -> set[str]:
        if not ids:
            return set()
        cond, params = bulk.in_list(conn, ids)
        return set(conn.execute(text(f"SELECT id FROM events WHERE id {cond}"), params).scalars())

    @staticmethod
    def insert_events(conn: Connection, events: list[Event], now: float) -> None:
        """Many at once (one statement); ids already present are left alone."""
        unique = {e.id: e for e in events}
        bulk.insert(conn, "events", EVENT_COLUMNS, [
            (e.id, e.host, e.seq, e.ts, e.type, e.data.model_dump_json(exclude_none=True), now)
            for e in unique.values()], "ON CONFLICT (id) DO NOTHING")

    @staticmethod
    def touch_hosts(conn: Connection, rows: list[HostTouch], now: float) -> None:
        """Hosts heard from, all in one statement: rows of {host, seq, egress_bps?} and, from a heartbeat,
        its fields ({policy, policy_digest, backend, rules_in_force, caps, last_heartbeat, weights_bytes}:
        the host is then online). A later row of the same host wins, field by field; None changes nothing."""
        merged: dict[str, dict[str, object]] = {}
        for r in rows:
            m = merged.setdefault(r["host"], {"seq": 0})
            m["seq"] = max(cast(int, m["seq"]), r["seq"])
            m.update({k: v for k, v in r.items() if v is not None and k not in ("host", "seq")})
        bulk.insert(conn, "hosts", HOST_COLUMNS, [
            (h, now, now, "online", m["seq"], 0, *(m.get(c) for c, _ in HOST_COLUMNS[6:]))
            for h, m in sorted(merged.items())],
            "ON CONFLICT (host) DO UPDATE SET last_seen = excluded.last_seen, "
            "seq_max = CASE WHEN hosts.seq_max > excluded.seq_max THEN hosts.seq_max ELSE excluded.seq_max END, "
            "status = CASE WHEN excluded.last_heartbeat IS NULL THEN hosts.status ELSE 'online' END, "
            + ", ".join(f"{c} = coalesce(excluded.{c}, hosts.{c})" for c, _ in HOST_COLUMNS[6:]))

    @staticmethod
    def dead_letters(conn: Connection, rows: list[tuple[str, str, bytes, str]], now: float) -> None:
        """Rejected messages as (topic, reason, payload, code): what was wrong, and the start of
        the payload, made storable (no NUL, no invalid UTF-8: PostgreSQL TEXT takes neither)."""
        bulk.insert(conn, "dead_letters", DEAD_LETTER_COLUMNS, [
            (now, _printable(topic, 300), _printable(reason, 500), _printable(payload[:1000], 4000), code, len(payload))
            for topic, reason, payload, code in rows])

    @staticmethod
    def trim_dead_letters(conn: Connection, max_rows: int = DEAD_LETTER_MAX_ROWS,
                          max_bytes: int = DEAD_LETTER_MAX_BYTES) -> int:
        """Keep the newest dead letters within both bounds; the rest go (and are counted)."""
        cut = conn.execute(text("SELECT id FROM dead_letters ORDER BY id DESC LIMIT 1 OFFSET :n"),
                           {"n": max_rows}).scalar()
        over = conn.execute(text(
            "SELECT max(id) FROM (SELECT id, sum(length(payload) + length(reason) + coalesce(length(topic), 0)) "
            "OVER (ORDER BY id DESC) AS total FROM dead_letters) t WHERE total > :b"), {"b": max_bytes}).scalar()
        limit = max(int(cut or 0), int(over or 0))
        if not limit:
            return 0
        gone = int(conn.execute(text("DELETE FROM dead_letters WHERE id <= :i"), {"i": limit}).rowcount or 0)
        if gone:
            Store.bump(conn, "dead_letters_pruned", gone)
        return gone

    @staticmethod
    def bump(conn: Connection, name: str, by: int = 1, part: str = "") -> None:
        """Add to a counter. ``part``: whose share (a collector's id), so collectors sharing a database
        never wait for each other on one row; ``counters`` (a view) sums the shares."""
        conn.execute(text("INSERT INTO counter_parts(name, part, value) VALUES (:n, :p, :v) ON CONFLICT (name, part) "
                          "DO UPDATE SET value = counter_parts.value + excluded.value"), {"n": name, "p": part, "v": by})

    def counters(self) -> dict[str, int]:
        with self.tx() as conn:
            return {r[0]: int(r[1]) for r in conn.execute(text("SELECT name, value FROM counters"))}

    @staticmethod
    def touch_host(conn: Connection, host: str, seq: int, ts: float, now: float,
                   egress_bps: float | None = None) -> None:
        Store.touch_hosts(conn, [{"host": host, "seq": seq, "egress_bps": egress_bps}], now)

    @staticmethod
    def update_host(conn: Connection, host: str, **fields: SqlValue) -> None:
        allowed = {"status", "policy", "policy_digest", "backend", "rules_in_force", "caps", "egress_bps",
                   "weights_bytes", "last_heartbeat", "heartbeat_interval", "lost_at", "seq_contig", "gap_seen_at",
                   "policy_version", "policy_source"}
        sets = [k for k in fields if k in allowed]
        if sets:
            conn.execute(text(f"UPDATE hosts SET {', '.join(f'{k} = :{k}' for k in sets)} WHERE host = :h"),
                         {"h": host, **{k: fields[k] for k in sets}})

    @staticmethod
    def host(conn: Connection, host: str) -> HostRow | None:
        row = conn.execute(text("SELECT * FROM hosts WHERE host = :h"), {"h": host}).mappings().first()
        return cast(HostRow, dict(row)) if row else None

    def export_events(self, host: str, since: float, until: float, types: list[str]) -> Iterator[ExportedEvent]:
        """A host's events in [since, until] of these types, oldest first, as the agent sent them."""
        params: SqlParams = {"h": host, "u": until, **{f"t{i}": t for i, t in enumerate(types)}}
        in_types = ", ".join(f":t{i}" for i in range(len(types)))
        after: tuple[float, str] = (since, "")
        while True:  # in pages, so a day of 1 Hz samples never sits in memory at once
            with self.tx() as conn:
                rows = list(conn.execute(text(
                    f"SELECT id, seq, ts, type, data FROM events WHERE host = :h AND ts <= :u AND type IN ({in_types}) "
                    "AND (ts > :ats OR (ts = :ats AND id > :aid)) ORDER BY ts, id LIMIT 5000"),
                    {**params, "ats": after[0], "aid": after[1]}).mappings())
            for r in rows:
                yield {"schema": 1, "id": r["id"], "host": host, "seq": r["seq"], "ts": r["ts"], "type": r["type"],
                       "data": json.loads(r["data"])}
            if len(rows) < 5000:
                return
            after = (rows[-1]["ts"], rows[-1]["id"])

    def hosts(self) -> list[HostRow]:
        with self.tx() as conn:
            return [cast(HostRow, dict(r)) for r in conn.execute(text("SELECT * FROM hosts ORDER BY host")).mappings()]

    @staticmethod
    def upsert_processes(conn: Connection, rows: list[ProcessRow]) -> None:
        """Who each process is (user, command line, container), once per process, not per sample:
        rows of {host, pid, exe, ppid, name, uid, user_name, cmdline, cgroup, container, start_time, ts}."""
        unique = {(r["host"], r["pid"], r["exe"]): r for r in rows}
        bulk.insert(conn, "processes", PROCESS_COLUMNS, [
            (r["host"], r["pid"], r["exe"], r["ppid"], r["name"], r["uid"], r["user_name"], r["cmdline"], r["cgroup"],
             r["container"], r["start_time"], r["ts"], r["ts"]) for _, r in sorted(unique.items())],
            "ON CONFLICT (host, pid, exe) DO UPDATE SET "
            "ppid = excluded.ppid, name = excluded.name, uid = excluded.uid, "
            "user_name = coalesce(excluded.user_name, processes.user_name), "
            "cmdline = coalesce(excluded.cmdline, processes.cmdline), "
            "cgroup = coalesce(excluded.cgroup, processes.cgroup), "
            "container = coalesce(excluded.container, processes.container), "
            "start_time = coalesce(excluded.start_time, processes.start_time), "
            "last_seen = CASE WHEN processes.last_seen > excluded.last_seen THEN processes.last_seen "
            "  ELSE excluded.last_seen END")

    @staticmethod
    def process(conn: Connection, host: str, pid: int, exe: str | None = None) -> ProcessInfo | None:
        """A process's user, command line (a list) and container, as last reported."""
        sql = "SELECT * FROM processes WHERE host=:h AND pid=:p" + (" AND exe=:e" if exe is not None else "")
        row = conn.execute(text(sql + " ORDER BY last_seen DESC LIMIT 1"), {"h": host, "p": pid, "e": exe}
                           ).mappings().first()
        if row is None:
            return None
        out = dict(row)
        out["cmdline"] = json.loads(out["cmdline"]) if out.get("cmdline") else []
        out["container"] = json.loads(out["container"]) if out.get("container") else None
        return cast(ProcessInfo, out)

    # -- correlation state --------------------------------------------------

    @staticmethod
    def add_read(conn: Connection, host: str, r: ReadRow) -> None:
        conn.execute(text(
            "INSERT INTO weight_reads(host, pid, ppid, exe, name, uid, path, kind, bytes, first_ts, ts, staged_of, "
            "event_id, pipes, start_time, size, how, container, cmd_hash, remote, derivative, received_at, inode, dev) "
            "VALUES (:host, :pid, :ppid, :exe, :name, :uid, :path, :kind, :bytes, :first_ts, :ts, "
            ":staged_of, :event_id, :pipes, :start_time, :size, :how, :container, :cmd_hash, :remote, :derivative, "
            ":received_at, :inode, :dev) "
            "ON CONFLICT (host, pid, path, kind, first_ts) DO UPDATE SET "
            # Reports of one read session (progress, then final): the latest report by its own time
            # describes it, whatever order they arrived in.
            + ", ".join(f"{c} = CASE WHEN {_NEWER_READ} THEN excluded.{c} ELSE weight_reads.{c} END"
                        for c in ("event_id", "pipes", "how", "container", "cmd_hash", "staged_of", "ppid", "exe",
                                  "name", "uid", "start_time", "remote", "derivative", "inode", "dev"))
            + ", bytes = CASE WHEN weight_reads.bytes > excluded.bytes THEN weight_reads.bytes ELSE excluded.bytes END, "
            "size = CASE WHEN weight_reads.size > excluded.size THEN weight_reads.size ELSE excluded.size END, "
            "received_at = excluded.received_at, "
            "ts = CASE WHEN weight_reads.ts > excluded.ts THEN weight_reads.ts ELSE excluded.ts END"),
            {"start_time": None, "size": None, "how": None, "container": None, "cmd_hash": None, "remote": None,
             "derivative": 0, "received_at": time.time(), "inode": None, "dev": None, "host": host, **r})

    @staticmethod
    def add_egress_rows(conn: Connection, rows: list[EgressRow]) -> None:
        """Egress rows that each carry their host."""
        now = time.time()
        bulk.copy(conn, "egress_raw", EGRESS_RAW_COLUMNS, [
            (r["host"], r["pid"], r.get("ppid"), r.get("exe"), r.get("name"), r.get("uid"), r["address"], r.get("port"),
             r["allowed"], r["bytes"], r["ts"], r.get("rate_bps"), r["event_id"], r.get("pipes"), now,
             r.get("dns_name"), r.get("user_name"), r.get("start_time"), r.get("first_ts"), r.get("protocol"),
             r.get("accepted"), r.get("container"), r.get("cmd_hash"), r.get("exact") or 0, r.get("complete"))
            for r in rows])

    @staticmethod
    def touch_contacts(conn: Connection, rows: list[tuple[str, str, str, float, float]]) -> None:
        """(host, exe, address, first ts, last ts) of contacts: new ones recorded, known ones' first_seen
        moved back (an earlier sample arriving late) and last_seen moved on (retention keeps them)."""
        unique: dict[tuple[str, str, str], tuple[float, float]] = {}
        for h, e, a, first, last in rows:
            f0, l0 = unique.get((h, e, a), (first, last))
            unique[(h, e, a)] = (min(f0, first), max(l0, last))
        bulk.insert(conn, "history", HISTORY_COLUMNS, [(*k, f, last) for k, (f, last) in sorted(unique.items())],
                    "ON CONFLICT (host, exe, address) DO UPDATE SET "
                    "first_seen = CASE WHEN history.first_seen < excluded.first_seen THEN history.first_seen "
                    "  ELSE excluded.first_seen END, "
                    "last_seen = CASE WHEN history.last_seen > excluded.last_seen THEN history.last_seen "
                    "  ELSE excluded.last_seen END")

    @staticmethod
    def reads_for(conn: Connection, host: str, pids: list[int], since: float) -> list[ReadRow]:
        if not pids:
            return []
        params = {f"p{i}": p for i, p in enumerate(pids)}
        rows = conn.execute(text(
            f"SELECT * FROM weight_reads WHERE host = :h AND ts >= :since AND pid IN ({', '.join(':' + k for k in params)}) "
            "ORDER BY first_ts"), {"h": host, "since": since, **params}).mappings()
        return [cast(ReadRow, dict(r)) for r in rows]

    @staticmethod
    def events_of(conn: Connection, host: str, type_: str, since: float) -> list[StoredEvent]:
        rows = conn.execute(text("SELECT id, seq, ts, data FROM events WHERE host=:h AND type=:t AND ts>=:s ORDER BY seq"),
                            {"h": host, "t": type_, "s": since}).mappings()
        return [{"id": r["id"], "seq": r["seq"], "ts": r["ts"], "data": json.loads(r["data"])} for r in rows]

    # -- housekeeping --------------------------------------------------------

    def count(self, table: str) -> int:
        assert table in {"events", "dead_letters", "alerts", "egress", "egress_raw", "egress_minute", "weight_reads", "hosts",
                         "history", "processes", "relays", "pipe_ends", "raw_sockets", "relinks", "blind_spans",
                         "sensors", "lifecycle"}
        with self.tx() as conn:
            return int(conn.execute(text(f"SELECT count(*) FROM {table}")).scalar() or 0)

    # -- collectors --------------------------------------------------------------

    @staticmethod
    def report_collector(conn: Connection, status: CollectorStatus) -> None:
        """A running collector's own numbers (backlog, rate), for `stats`, /metrics and the console."""
        cols = ("client_id", "hostname", "pid", "version", "started_at", "updated_at", "received", "stored",
                "backlog", "backlog_bytes", "backlog_s", "paused", "ingest_rate", "batch")
        conn.execute(text(f"INSERT INTO collector_status({', '.join(cols)}) VALUES ({', '.join(':' + c for c in cols)}) "
                          f"ON CONFLICT (client_id) DO UPDATE SET "
                          f"{', '.join(f'{c} = excluded.{c}' for c in cols[1:])}"),
                     {c: status.get(c) for c in cols})

    def collectors(self) -> list[CollectorStatus]:
        with self.tx() as conn:
            rows = conn.execute(text("SELECT * FROM collector_status ORDER BY client_id")).mappings()
            return [cast(CollectorStatus, dict(r)) for r in rows]


def _printable(value: str | bytes, limit: int) -> str:
    """Text any database takes: invalid UTF-8 and NULs escaped, then cut to ``limit``."""
    if isinstance(value, bytes):
        value = value.decode("utf-8", "backslashreplace")
    else:
        value = value.encode("utf-8", "backslashreplace").decode("utf-8")  # lone surrogates
    return value.replace("\x00", "\\x00")[:limit]


__all__ = ["BACKDATED_S", "SEVERITY_RANK", "Store", "backdated_by", "StoreError", "normalize_url", "private_files", "safe_url"]
