"""Storage: SQLite (WAL) by default, PostgreSQL with the same SQL (SQLAlchemy Core).

Everything correlation needs lives here, not in a collector's memory, so
several collectors sharing one PostgreSQL reach the same alerts. Writes are
idempotent: an event is stored once by id; weight reads and alerts are
upserts keyed by what they describe.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event, text

from weightwarden.collector.outputs.outbox import alert_changed
from weightwarden.events import Event

SEVERITY_RANK = {"low": 1, "medium": 2, "high": 3, "critical": 4}
_NEWER_READ = ("(excluded.ts > weight_reads.ts OR (excluded.ts = weight_reads.ts AND (excluded.bytes > weight_reads.bytes "
               "OR (excluded.bytes = weight_reads.bytes AND excluded.event_id > weight_reads.event_id))))")

MIGRATIONS: list[list[str]] = [
    [  # 1: the first schema
        """CREATE TABLE events (id TEXT PRIMARY KEY, host TEXT NOT NULL, seq BIGINT NOT NULL,
             ts DOUBLE PRECISION NOT NULL, type TEXT NOT NULL, data TEXT NOT NULL, received_at DOUBLE PRECISION NOT NULL)""",
        "CREATE INDEX events_host_seq ON events(host, seq)",
        "CREATE INDEX events_ts ON events(ts)",
        """CREATE TABLE dead_letters (id {serial}, received_at DOUBLE PRECISION NOT NULL, topic TEXT,
             reason TEXT NOT NULL, payload TEXT)""",
        """CREATE TABLE hosts (host TEXT PRIMARY KEY, first_seen DOUBLE PRECISION, last_seen DOUBLE PRECISION,
             status TEXT, seq_max BIGINT DEFAULT 0, seq_contig BIGINT DEFAULT 0, gap_seen_at DOUBLE PRECISION,
             policy TEXT, policy_digest TEXT, backend TEXT, rules_in_force INTEGER, caps INTEGER,
             egress_bps DOUBLE PRECISION DEFAULT 0, weights_bytes BIGINT DEFAULT 0,
             last_heartbeat DOUBLE PRECISION, heartbeat_interval DOUBLE PRECISION, lost_at DOUBLE PRECISION)""",
        """CREATE TABLE weight_reads (host TEXT NOT NULL, pid BIGINT NOT NULL, ppid BIGINT, exe TEXT, name TEXT,
             uid BIGINT, path TEXT NOT NULL, kind TEXT NOT NULL, bytes BIGINT NOT NULL, first_ts DOUBLE PRECISION NOT NULL,
             ts DOUBLE PRECISION NOT NULL, staged_of TEXT, event_id TEXT, pipes TEXT,
             PRIMARY KEY (host, pid, path, kind, first_ts))""",
        "CREATE INDEX weight_reads_host_ts ON weight_reads(host, ts)",
        """CREATE TABLE egress (host TEXT NOT NULL, pid BIGINT NOT NULL, ppid BIGINT, exe TEXT, name TEXT,
             uid BIGINT, address TEXT NOT NULL, port INTEGER, allowed INTEGER NOT NULL, bytes BIGINT NOT NULL,
             ts DOUBLE PRECISION NOT NULL, rate_bps DOUBLE PRECISION, event_id TEXT NOT NULL, pipes TEXT,
             received_at DOUBLE PRECISION)""",
        "CREATE INDEX egress_host_ts ON egress(host, ts)",
        "CREATE INDEX egress_received ON egress(received_at)",
        "CREATE INDEX egress_host_pid ON egress(host, pid)",
        """CREATE TABLE history (host TEXT NOT NULL, exe TEXT NOT NULL, address TEXT NOT NULL,
             first_seen DOUBLE PRECISION NOT NULL, PRIMARY KEY (host, exe, address))""",
        """CREATE TABLE alerts (key TEXT PRIMARY KEY, id TEXT NOT NULL, host TEXT NOT NULL, kind TEXT NOT NULL,
             severity TEXT NOT NULL, severity_rank INTEGER NOT NULL, state TEXT NOT NULL, title TEXT NOT NULL,
             explanation TEXT NOT NULL, evidence TEXT NOT NULL, first_ts DOUBLE PRECISION NOT NULL,
             last_ts DOUBLE PRECISION NOT NULL, created_at DOUBLE PRECISION NOT NULL,
             updated_at DOUBLE PRECISION NOT NULL, count INTEGER NOT NULL DEFAULT 1,
             acked_by TEXT, acked_at DOUBLE PRECISION, resolved_by TEXT, resolved_at DOUBLE PRECISION)""",
        "CREATE INDEX alerts_state ON alerts(state, severity_rank)",
        "CREATE TABLE counters (name TEXT PRIMARY KEY, value BIGINT NOT NULL)",
    ],
    [  # 2: the security operations console (users, tokens, sessions, audit) and the alert outbox
        "ALTER TABLE alerts ADD COLUMN assignee TEXT",
        "CREATE INDEX alerts_id ON alerts(id)",
        "CREATE INDEX alerts_rank_last ON alerts(severity_rank, last_ts)",
        "CREATE INDEX alerts_state_rank_last ON alerts(state, severity_rank, last_ts)",
        "CREATE INDEX alerts_host_rank_last ON alerts(host, severity_rank, last_ts)",
        "CREATE INDEX alerts_last ON alerts(last_ts)",
        # The console reads a host's latest heartbeat and policy; egress samples, the bulk of
        # events, stay out of this index so ingest does not pay for it.
        "CREATE INDEX events_host_type_seq ON events(host, type, seq) WHERE type <> 'egress_sample'",
        """CREATE TABLE users (name TEXT PRIMARY KEY, role TEXT NOT NULL, password_hash TEXT NOT NULL,
             created_at DOUBLE PRECISION NOT NULL, failed_logins INTEGER NOT NULL DEFAULT 0,
             locked_until DOUBLE PRECISION, last_login DOUBLE PRECISION)""",
        """CREATE TABLE api_tokens (id TEXT PRIMARY KEY, user_name TEXT NOT NULL, label TEXT, token_hash TEXT NOT NULL,
             created_at DOUBLE PRECISION NOT NULL, expires_at DOUBLE PRECISION, last_used DOUBLE PRECISION,
             revoked_at DOUBLE PRECISION)""",
        """CREATE TABLE web_sessions (id_hash TEXT PRIMARY KEY, user_name TEXT NOT NULL, csrf TEXT NOT NULL,
             created_at DOUBLE PRECISION NOT NULL, expires_at DOUBLE PRECISION NOT NULL,
             last_seen DOUBLE PRECISION NOT NULL)""",
        """CREATE TABLE audit (id {serial}, alert_key TEXT, alert_id TEXT, user_name TEXT NOT NULL,
             action TEXT NOT NULL, comment TEXT, detail TEXT, via TEXT, ts DOUBLE PRECISION NOT NULL)""",
        "CREATE INDEX audit_alert ON audit(alert_id, id)",
        "CREATE TABLE settings (name TEXT PRIMARY KEY, value TEXT NOT NULL)",
        """CREATE TABLE alert_outputs (name TEXT PRIMARY KEY, url TEXT NOT NULL, options TEXT NOT NULL,
             enabled INTEGER NOT NULL DEFAULT 1, created_at DOUBLE PRECISION NOT NULL)""",
        """CREATE TABLE alert_notifications (seq {serial}, id TEXT NOT NULL UNIQUE, alert_key TEXT NOT NULL,
             alert_id TEXT NOT NULL, host TEXT NOT NULL, transition TEXT NOT NULL, epoch INTEGER NOT NULL,
             severity_rank INTEGER NOT NULL, payload TEXT NOT NULL, created_at DOUBLE PRECISION NOT NULL)""",
        "CREATE INDEX alert_notifications_key ON alert_notifications(alert_key, seq)",
        """CREATE TABLE alert_deliveries (notification_seq BIGINT NOT NULL, output TEXT NOT NULL, state TEXT NOT NULL,
             attempts INTEGER NOT NULL DEFAULT 0, next_at DOUBLE PRECISION NOT NULL, claimed_by TEXT,
             claimed_until DOUBLE PRECISION, last_error TEXT, delivered_at DOUBLE PRECISION,
             PRIMARY KEY (notification_seq, output))""",
        "CREATE INDEX alert_deliveries_due ON alert_deliveries(output, state, next_at)",
        """CREATE TABLE collector_status (client_id TEXT PRIMARY KEY, hostname TEXT, pid BIGINT,
             started_at DOUBLE PRECISION, updated_at DOUBLE PRECISION NOT NULL, received BIGINT NOT NULL DEFAULT 0,
             backlog BIGINT NOT NULL DEFAULT 0, ingest_rate DOUBLE PRECISION NOT NULL DEFAULT 0)""",
    ],
    [  # 3 (detection): exact process identity, when bytes left, how, and local relays
        # egress.ts is the last send of a row and first_ts its first: "sent after the read" is exact.
        "ALTER TABLE egress ADD COLUMN start_time DOUBLE PRECISION",
        "ALTER TABLE egress ADD COLUMN first_ts DOUBLE PRECISION",
        "ALTER TABLE egress ADD COLUMN protocol TEXT",
        "ALTER TABLE egress ADD COLUMN accepted INTEGER",
        "ALTER TABLE egress ADD COLUMN container TEXT",
        "ALTER TABLE egress ADD COLUMN cmd_hash TEXT",
        "ALTER TABLE egress ADD COLUMN exact INTEGER",  # 1: first_ts/ts are this destination's own sends
        "ALTER TABLE weight_reads ADD COLUMN start_time DOUBLE PRECISION",
        "ALTER TABLE weight_reads ADD COLUMN size BIGINT",
        "ALTER TABLE weight_reads ADD COLUMN how TEXT",
        "ALTER TABLE weight_reads ADD COLUMN container TEXT",
        "ALTER TABLE weight_reads ADD COLUMN cmd_hash TEXT",
        "ALTER TABLE weight_reads ADD COLUMN remote TEXT",
        "ALTER TABLE weight_reads ADD COLUMN derivative INTEGER",
        "ALTER TABLE weight_reads ADD COLUMN received_at DOUBLE PRECISION",
        "CREATE INDEX weight_reads_received ON weight_reads(received_at)",
        "CREATE INDEX weight_reads_host_pid ON weight_reads(host, pid)",
        # One row per sample and local peer: src sent bytes to dst over a unix socket or loopback.
        """CREATE TABLE relays (host TEXT NOT NULL, src_pid BIGINT NOT NULL, src_start DOUBLE PRECISION,
             src_exe TEXT, src_name TEXT, dst_pid BIGINT NOT NULL, dst_start DOUBLE PRECISION, dst_exe TEXT,
             dst_name TEXT, via TEXT NOT NULL, bytes BIGINT NOT NULL, first_ts DOUBLE PRECISION NOT NULL,
             ts DOUBLE PRECISION NOT NULL, event_id TEXT NOT NULL, received_at DOUBLE PRECISION)""",
        "CREATE INDEX relays_dst ON relays(host, dst_pid)",
        "CREATE INDEX relays_src ON relays(host, src_pid)",
        "CREATE INDEX relays_received ON relays(received_at)",
        # For alerts one event decides: the content of the latest event by its own time, whatever the arrival order.
        "ALTER TABLE alerts ADD COLUMN fact_order TEXT",
        # The weights' size as of the latest report by the agent's own clock, not the latest to arrive.
        "ALTER TABLE hosts ADD COLUMN weights_at DOUBLE PRECISION",
    ],
]


def normalize_url(url: str) -> str:
    """sqlite:///PATH as is; postgresql:// goes through psycopg 3."""
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


class Store:
    def __init__(self, url: str) -> None:
        self.url = url
        if url.startswith("sqlite:///") and not url.startswith("sqlite:///:memory:"):
            Path(url[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
        self.engine: Engine = create_engine(normalize_url(url), pool_pre_ping=True)
        self.dialect = self.engine.dialect.name
        if self.dialect == "sqlite":
            @event.listens_for(self.engine, "connect")
            def _pragmas(dbapi_conn: Any, _record: Any) -> None:
                cur = dbapi_conn.cursor()
                cur.execute("PRAGMA journal_mode=WAL")
                cur.execute("PRAGMA synchronous=NORMAL")
                cur.execute("PRAGMA busy_timeout=10000")
                cur.close()
        self.migrate()

    def migrate(self) -> None:
        serial = "BIGSERIAL PRIMARY KEY" if self.dialect == "postgresql" else "INTEGER PRIMARY KEY AUTOINCREMENT"
        with self.engine.begin() as conn:
            if self.dialect == "postgresql":
                # Two collectors starting together must not both migrate.
                conn.execute(text("SELECT pg_advisory_xact_lock(7757)"))
            conn.execute(text("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)"))
            row = conn.execute(text("SELECT max(version) FROM schema_version")).scalar()
            current = int(row or 0)
            for number, statements in enumerate(MIGRATIONS, start=1):
                if number <= current:
                    continue
                for stmt in statements:
                    conn.execute(text(stmt.format(serial=serial)))
                conn.execute(text("INSERT INTO schema_version(version) VALUES (:v)"), {"v": number})

    @contextmanager
    def tx(self) -> Iterator[Connection]:
        with self.engine.begin() as conn:
            yield conn

    # -- ingest ------------------------------------------------------------

    @staticmethod
    def existing_ids(conn: Connection, ids: list[str]) -> set[str]:
        found: set[str] = set()
        for i in range(0, len(ids), 500):
            chunk = ids[i:i + 500]
            params = {f"i{n}": v for n, v in enumerate(chunk)}
            found.update(conn.execute(text(f"SELECT id FROM events WHERE id IN ({', '.join(':' + k for k in params)})"),
                                      params).scalars())
        return found

    @staticmethod
    def insert_events(conn: Connection, events: list[Event], now: float) -> None:
        """Many at once (one pipelined executemany); ids already present are left alone."""
        if events:
            conn.execute(text(
                "INSERT INTO events(id, host, seq, ts, type, data, received_at) "
                "VALUES (:id, :host, :seq, :ts, :type, :data, :now) ON CONFLICT (id) DO NOTHING"),
                [{"id": e.id, "host": e.host, "seq": e.seq, "ts": e.ts, "type": e.type,
                  "data": e.data.model_dump_json(exclude_none=True), "now": now} for e in events])

    @staticmethod
    def touch_hosts(conn: Connection, rows: list[dict[str, Any]], now: float) -> None:
        """touch_host for many hosts at once: rows of {host, seq, egress_bps}."""
        if rows:
            conn.execute(text(
                "INSERT INTO hosts(host, first_seen, last_seen, status, seq_max, seq_contig, egress_bps) "
                "VALUES (:h, :now, :now, 'online', :seq, 0, :bps) ON CONFLICT (host) DO UPDATE SET "
                "last_seen = :now, seq_max = CASE WHEN hosts.seq_max > :seq THEN hosts.seq_max ELSE :seq END, "
                "egress_bps = CASE WHEN :bps IS NULL THEN hosts.egress_bps ELSE :bps END"),
                [{"h": r["host"], "seq": r["seq"], "bps": r.get("egress_bps"), "now": now} for r in rows])

    @staticmethod
    def dead_letter(conn: Connection, topic: str, reason: str, payload: bytes, now: float) -> None:
        conn.execute(text("INSERT INTO dead_letters(received_at, topic, reason, payload) VALUES (:t, :topic, :r, :p)"),
                     {"t": now, "topic": topic[:300], "r": reason[:500],
                      "p": payload[:1000].decode("utf-8", errors="replace")})

    @staticmethod
    def bump(conn: Connection, name: str, by: int = 1) -> None:
        conn.execute(text("INSERT INTO counters(name, value) VALUES (:n, :v) "
                          "ON CONFLICT (name) DO UPDATE SET value = counters.value + excluded.value"),
                     {"n": name, "v": by})

    def counters(self) -> dict[str, int]:
        with self.tx() as conn:
            return {r[0]: int(r[1]) for r in conn.execute(text("SELECT name, value FROM counters"))}

    @staticmethod
    def touch_host(conn: Connection, host: str, seq: int, ts: float, now: float,
                   egress_bps: float | None = None) -> None:
        conn.execute(text(
            "INSERT INTO hosts(host, first_seen, last_seen, status, seq_max, seq_contig, egress_bps) "
            "VALUES (:h, :now, :now, 'online', :seq, 0, :bps) ON CONFLICT (host) DO UPDATE SET "
            "last_seen = :now, seq_max = CASE WHEN hosts.seq_max > :seq THEN hosts.seq_max ELSE :seq END, "
            "egress_bps = CASE WHEN :bps IS NULL THEN hosts.egress_bps ELSE :bps END"),
            {"h": host, "now": now, "seq": seq, "bps": egress_bps})

    @staticmethod
    def update_host(conn: Connection, host: str, **fields: Any) -> None:
        allowed = {"status", "policy", "policy_digest", "backend", "rules_in_force", "caps", "egress_bps",
                   "weights_bytes", "last_heartbeat", "heartbeat_interval", "lost_at", "seq_contig", "gap_seen_at"}
        sets = [k for k in fields if k in allowed]
        if sets:
            conn.execute(text(f"UPDATE hosts SET {', '.join(f'{k} = :{k}' for k in sets)} WHERE host = :h"),
                         {"h": host, **{k: fields[k] for k in sets}})

    @staticmethod
    def host(conn: Connection, host: str) -> dict[str, Any] | None:
        row = conn.execute(text("SELECT * FROM hosts WHERE host = :h"), {"h": host}).mappings().first()
        return dict(row) if row else None

    def hosts(self) -> list[dict[str, Any]]:
        with self.tx() as conn:
            return [dict(r) for r in conn.execute(text("SELECT * FROM hosts ORDER BY host")).mappings()]

    # -- correlation state --------------------------------------------------

    @staticmethod
    def add_read(conn: Connection, host: str, r: dict[str, Any]) -> None:
        conn.execute(text(
            "INSERT INTO weight_reads(host, pid, ppid, exe, name, uid, path, kind, bytes, first_ts, ts, staged_of, "
            "event_id, pipes, start_time, size, how, container, cmd_hash, remote, derivative, received_at) "
            "VALUES (:host, :pid, :ppid, :exe, :name, :uid, :path, :kind, :bytes, :first_ts, :ts, "
            ":staged_of, :event_id, :pipes, :start_time, :size, :how, :container, :cmd_hash, :remote, :derivative, "
            ":received_at) "
            "ON CONFLICT (host, pid, path, kind, first_ts) DO UPDATE SET "
            # Reports of one read session (progress, then final): the latest report by its own time
            # describes it, whatever order they arrived in.
            + ", ".join(f"{c} = CASE WHEN {_NEWER_READ} THEN excluded.{c} ELSE weight_reads.{c} END"
                        for c in ("event_id", "pipes", "how", "container", "cmd_hash", "staged_of", "ppid", "exe",
                                  "name", "uid", "start_time", "remote", "derivative"))
            + ", bytes = CASE WHEN weight_reads.bytes > excluded.bytes THEN weight_reads.bytes ELSE excluded.bytes END, "
            "size = CASE WHEN weight_reads.size > excluded.size THEN weight_reads.size ELSE excluded.size END, "
            "received_at = excluded.received_at, "
            "ts = CASE WHEN weight_reads.ts > excluded.ts THEN weight_reads.ts ELSE excluded.ts END"),
            {"start_time": None, "size": None, "how": None, "container": None, "cmd_hash": None, "remote": None,
             "derivative": 0, "received_at": time.time(), "host": host, **r})

    @staticmethod
    def add_egress(conn: Connection, host: str, rows: list[dict[str, Any]]) -> None:
        Store.add_egress_rows(conn, [{"host": host, **r} for r in rows])

    @staticmethod
    def add_egress_rows(conn: Connection, rows: list[dict[str, Any]]) -> None:
        """Egress rows that each carry their host."""
        if rows:
            received = time.time()
            conn.execute(text(
                "INSERT INTO egress(host, pid, ppid, exe, name, uid, address, port, allowed, bytes, ts, rate_bps, "
                "event_id, pipes, received_at, start_time, first_ts, protocol, accepted, container, cmd_hash, exact) "
                "VALUES (:host, :pid, :ppid, :exe, :name, :uid, :address, :port, "
                ":allowed, :bytes, :ts, :rate_bps, :event_id, :pipes, :received_at, :start_time, :first_ts, "
                ":protocol, :accepted, :container, :cmd_hash, :exact)"),
                [{**_EGRESS_DETECTION_DEFAULTS, "received_at": received, **r} for r in rows])

    @staticmethod
    def first_contact(conn: Connection, host: str, exe: str, address: str, ts: float) -> bool:
        res = conn.execute(text("INSERT INTO history(host, exe, address, first_seen) VALUES (:h, :e, :a, :t) "
                                "ON CONFLICT (host, exe, address) DO NOTHING"), {"h": host, "e": exe, "a": address, "t": ts})
        return bool(res.rowcount)

    @staticmethod
    def first_seen(conn: Connection, host: str, exe: str, address: str) -> float | None:
        return conn.execute(text("SELECT first_seen FROM history WHERE host=:h AND exe=:e AND address=:a"),
                            {"h": host, "e": exe, "a": address}).scalar()

    @staticmethod
    def reads_for(conn: Connection, host: str, pids: list[int], since: float) -> list[dict[str, Any]]:
        if not pids:
            return []
        params = {f"p{i}": p for i, p in enumerate(pids)}
        rows = conn.execute(text(
            f"SELECT * FROM weight_reads WHERE host = :h AND ts >= :since AND pid IN ({', '.join(':' + k for k in params)}) "
            "ORDER BY first_ts"), {"h": host, "since": since, **params}).mappings()
        return [dict(r) for r in rows]

    @staticmethod
    def pipe_partners(conn: Connection, host: str, table: str, pipes: str | None, since: float) -> list[int]:
        """Pids in ``table`` that share a pipe with these (``tar cf - w | curl -T -``)."""
        assert table in ("weight_reads", "egress")
        inodes = [p for p in (pipes or "").split("|") if p]
        if not inodes:
            return []
        params = {f"p{i}": f"%|{n}|%" for i, n in enumerate(inodes[:20])}
        cond = " OR ".join(f"pipes LIKE :{k}" for k in params)
        rows = conn.execute(text(f"SELECT DISTINCT pid FROM {table} WHERE host=:h AND ts>=:s AND ({cond})"),
                            {"h": host, "s": since, **params}).scalars()
        return [int(p) for p in rows]

    @staticmethod
    def children(conn: Connection, host: str, ppid: int, since: float) -> list[int]:
        rows = conn.execute(text("SELECT DISTINCT pid FROM egress WHERE host=:h AND ppid=:p AND ts>=:s"),
                            {"h": host, "p": ppid, "s": since}).scalars()
        return [int(p) for p in rows]

    @staticmethod
    def egress_where(conn: Connection, host: str, column: str, value: Any, since: float) -> list[dict[str, Any]]:
        """Non-allowlisted egress of a host since ``since`` where ``column`` (pid, exe, address) equals ``value``."""
        assert column in ("pid", "exe", "address")
        rows = conn.execute(text(f"SELECT * FROM egress WHERE host=:h AND {column}=:v AND allowed=0 AND ts>=:s "
                                 "ORDER BY ts"), {"h": host, "v": value, "s": since}).mappings()
        return [dict(r) for r in rows]

    @staticmethod
    def has_reads(conn: Connection, host: str, since: float) -> bool:
        return conn.execute(text("SELECT 1 FROM weight_reads WHERE host=:h AND ts>=:s LIMIT 1"),
                            {"h": host, "s": since}).first() is not None

    @staticmethod
    def reads_on_host(conn: Connection, host: str, since: float) -> list[dict[str, Any]]:
        rows = conn.execute(text("SELECT * FROM weight_reads WHERE host=:h AND ts>=:s ORDER BY first_ts"),
                            {"h": host, "s": since}).mappings()
        return [dict(r) for r in rows]

    @staticmethod
    def recent_senders(conn: Connection, received_since: float, reads_since: float) -> list[tuple[str, int, str, float]]:
        """(host, pid, exe, latest ts) of non-allowlisted egress that arrived recently, on hosts with weight reads."""
        rows = conn.execute(text(
            "SELECT e.host, e.pid, e.exe, max(e.ts) FROM egress e WHERE e.allowed=0 AND e.received_at>=:r "
            "AND EXISTS (SELECT 1 FROM weight_reads w WHERE w.host=e.host AND w.ts>=:w) GROUP BY e.host, e.pid, e.exe"),
            {"r": received_since, "w": reads_since})
        return [(r[0], int(r[1]), r[2] or "", float(r[3])) for r in rows]

    @staticmethod
    def events_of(conn: Connection, host: str, type_: str, since: float) -> list[dict[str, Any]]:
        rows = conn.execute(text("SELECT id, seq, ts, data FROM events WHERE host=:h AND type=:t AND ts>=:s ORDER BY seq"),
                            {"h": host, "t": type_, "s": since}).mappings()
        return [{"id": r["id"], "seq": r["seq"], "ts": r["ts"], "data": json.loads(r["data"])} for r in rows]

    @staticmethod
    def seqs_after(conn: Connection, host: str, after: int) -> list[int]:
        return [int(s) for s in conn.execute(text("SELECT DISTINCT seq FROM events WHERE host=:h AND seq>:a ORDER BY seq"),
                                              {"h": host, "a": after}).scalars()]

    # -- alerts ------------------------------------------------------------

    @staticmethod
    def upsert_alert(conn: Connection, a: dict[str, Any], now: float) -> None:
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
        params: dict[str, Any] = {}
        if state:
            sql += " AND state = :state"
            params["state"] = state
        if host:
            sql += " AND host = :host"
            params["host"] = host
        if min_severity:
            sql += " AND severity_rank >= :rank"
            params["rank"] = SEVERITY_RANK[min_severity]
        sql += " ORDER BY severity_rank DESC, last_ts DESC"
        with self.tx() as conn:
            return [_alert(dict(r)) for r in conn.execute(text(sql), params).mappings()]

    def alert(self, key_or_id: str) -> dict[str, Any] | None:
        with self.tx() as conn:
            row = conn.execute(text("SELECT * FROM alerts WHERE id=:k OR key=:k"), {"k": key_or_id}).mappings().first()
        return _alert(dict(row)) if row else None

    # -- housekeeping --------------------------------------------------------

    def purge(self, horizon_s: float, now: float | None = None) -> dict[str, int]:
        cutoff = (now or time.time()) - horizon_s
        out = {}
        with self.tx() as conn:
            for table, col in (("events", "ts"), ("egress", "ts"), ("weight_reads", "ts"), ("relays", "ts"),
                               ("dead_letters", "received_at")):
                out[table] = int(conn.execute(text(f"DELETE FROM {table} WHERE {col} < :c"), {"c": cutoff}).rowcount)
        return out

    def count(self, table: str) -> int:
        assert table in {"events", "dead_letters", "alerts", "egress", "weight_reads", "hosts"}
        with self.tx() as conn:
            return int(conn.execute(text(f"SELECT count(*) FROM {table}")).scalar() or 0)


def _alert(row: dict[str, Any]) -> dict[str, Any]:
    row["evidence"] = json.loads(row["evidence"])
    row.pop("severity_rank", None)
    return row


# ---------------------------------------------------------------------------------------------------
# Detection (H3): the facts detection reads and the alerts it writes, all through these functions.
# Retention and rollups must keep each query answerable over the look-back it is called with
# (Tuning.link_window_s for a process's reads and relays, slow_window_s and burst_s for egress).
# ---------------------------------------------------------------------------------------------------

_EGRESS_DETECTION_DEFAULTS: dict[str, Any] = {
    "start_time": None, "first_ts": None, "protocol": None, "accepted": None, "container": None, "cmd_hash": None,
    "exact": 0}
# Bytes that may carry data off the host: not allowlisted, or DNS, which carries names wherever it goes
# (a tunnel through an allowlisted resolver is still a tunnel).
OUTWARD = "(allowed = 0 OR port = 53)"
_ORDER = "ORDER BY ts, first_ts, event_id, address, port"


def _rows(conn: Connection, sql: str, params: dict[str, Any]) -> list[dict[str, Any]]:
    return [dict(r) for r in conn.execute(text(sql), params).mappings()]


def flows_of(conn: Connection, host: str, pid: int, since: float) -> list[dict[str, Any]]:
    """A process's outward egress rows (every start_time that pid had) whose last byte left at or after ``since``."""
    return _rows(conn, f"SELECT * FROM egress WHERE host=:h AND pid=:p AND ts>=:s AND {OUTWARD} {_ORDER}",
                 {"h": host, "p": pid, "s": since})


def flows_between(conn: Connection, host: str, pid: int, lo: float, hi: float) -> list[dict[str, Any]]:
    """A process's outward and accepted rows whose last byte left in [lo, hi)."""
    return _rows(conn, f"SELECT * FROM egress WHERE host=:h AND pid=:p AND ts>=:lo AND ts<:hi AND {OUTWARD} {_ORDER}",
                 {"h": host, "p": pid, "lo": lo, "hi": hi})


def recent_flows(conn: Connection, host: str, pid: int, received_since: float) -> list[dict[str, Any]]:
    return _rows(conn, f"SELECT * FROM egress WHERE host=:h AND pid=:p AND received_at>=:r AND {OUTWARD} {_ORDER}",
                 {"h": host, "p": pid, "r": received_since})


def recent_relay_targets(conn: Connection, received_since: float) -> list[tuple[str, int]]:
    return [(r[0], int(r[1])) for r in conn.execute(text(
        "SELECT DISTINCT host, dst_pid FROM relays WHERE received_at>=:r AND bytes>0"), {"r": received_since})]


def read_as_stored(conn: Connection, host: str, r: dict[str, Any]) -> dict[str, Any] | None:
    """The stored version of a weight read (same process, file, kind and start), if any."""
    row = conn.execute(text("SELECT bytes, size, ts FROM weight_reads WHERE host=:h AND pid=:p AND path=:path "
                            "AND kind=:k AND first_ts=:f"),
                       {"h": host, "p": r["pid"], "path": r["path"], "k": r["kind"], "f": r["first_ts"]}).mappings().first()
    return dict(row) if row else None


def outward_rows(conn: Connection, host: str, lo: float, hi: float) -> list[dict[str, Any]]:
    """Every outward egress row of a host whose last byte left in [lo, hi)."""
    return _rows(conn, f"SELECT * FROM egress WHERE host=:h AND ts>=:lo AND ts<:hi AND {OUTWARD} {_ORDER}",
                 {"h": host, "lo": lo, "hi": hi})


def last_outward(conn: Connection, host: str, pid: int) -> float | None:
    value = conn.execute(text(f"SELECT max(ts) FROM egress WHERE host=:h AND pid=:p AND {OUTWARD}"),
                         {"h": host, "p": pid}).scalar()
    return None if value is None else float(value)


def recent_span(conn: Connection, host: str, received_since: float) -> tuple[float, float] | None:
    """When the outward bytes of a host that arrived since ``received_since`` (wall clock) left."""
    row = conn.execute(text(f"SELECT min(ts), max(ts) FROM egress WHERE host=:h AND received_at>=:r AND {OUTWARD}"),
                       {"h": host, "r": received_since}).first()
    return None if row is None or row[0] is None else (float(row[0]), float(row[1]))


def outward_senders(conn: Connection, host: str, since: float) -> list[int]:
    """Pids that sent outward since ``since`` (pid 0 stands for bytes with no named process)."""
    rows = conn.execute(text(f"SELECT DISTINCT pid FROM egress WHERE host=:h AND ts>=:s AND pid>0 AND {OUTWARD}"),
                        {"h": host, "s": since}).scalars()
    return sorted(int(p) for p in rows)


def reads_of(conn: Connection, host: str, pid: int, since: float) -> list[dict[str, Any]]:
    """Weight reads, holdings and copies of one pid (every start_time) still active at or after ``since``."""
    return _rows(conn, "SELECT * FROM weight_reads WHERE host=:h AND pid=:p AND ts>=:s ORDER BY first_ts, path, kind",
                 {"h": host, "p": pid, "s": since})


def reads_between(conn: Connection, host: str, lo: float, hi: float) -> list[dict[str, Any]]:
    """Weight reads and holdings on a host active at some time in [lo, hi) (copies are not reads)."""
    return _rows(conn, "SELECT * FROM weight_reads WHERE host=:h AND ts>=:lo AND first_ts<:hi AND kind <> 'copy' "
                       "ORDER BY first_ts, pid, path, kind", {"h": host, "lo": lo, "hi": hi})


def pipe_writers(conn: Connection, host: str, inode: str, since: float) -> list[dict[str, Any]]:
    """Weight reads by processes that hold the write end (only) of pipe ``inode``."""
    return _rows(conn, "SELECT * FROM weight_reads WHERE host=:h AND ts>=:s AND pipes LIKE :p "
                       "ORDER BY first_ts, pid, path, kind", {"h": host, "s": since, "p": f"%|{inode}:w|%"})


def relays_into(conn: Connection, host: str, pid: int, since: float) -> list[dict[str, Any]]:
    """Local hand-overs to ``pid`` (any start_time) that ended at or after ``since``."""
    return _rows(conn, "SELECT * FROM relays WHERE host=:h AND dst_pid=:p AND ts>=:s AND bytes>0 "
                       "ORDER BY ts, first_ts, event_id, src_pid", {"h": host, "p": pid, "s": since})


def relay_targets(conn: Connection, host: str, pid: int, since: float) -> list[int]:
    rows = conn.execute(text("SELECT DISTINCT dst_pid FROM relays WHERE host=:h AND src_pid=:p AND ts>=:s AND bytes>0"),
                        {"h": host, "p": pid, "s": since}).scalars()
    return sorted(int(p) for p in rows)


def add_relays(conn: Connection, rows: list[dict[str, Any]]) -> None:
    if rows:
        received = time.time()
        conn.execute(text(
            "INSERT INTO relays(host, src_pid, src_start, src_exe, src_name, dst_pid, dst_start, dst_exe, dst_name, via, "
            "bytes, first_ts, ts, event_id, received_at) VALUES (:host, :src_pid, :src_start, :src_exe, :src_name, "
            ":dst_pid, :dst_start, :dst_exe, :dst_name, :via, :bytes, :first_ts, :ts, :event_id, :received_at)"),
            [{"received_at": received, **r} for r in rows])


def first_contacts(conn: Connection, rows: list[tuple[str, str, str, float]]) -> None:
    """(host, exe, address, ts): remember the earliest time each program contacted each address.
    The minimum, not the first to arrive, so the answer does not depend on arrival order."""
    if rows:  # sorted: one lock order for every collector
        conn.execute(text(
            "INSERT INTO history(host, exe, address, first_seen) VALUES (:h, :e, :a, :t) "
            "ON CONFLICT (host, exe, address) DO UPDATE SET first_seen = excluded.first_seen "
            "WHERE history.first_seen > excluded.first_seen"),
            [{"h": host, "e": exe, "a": address, "t": ts} for host, exe, address, ts in sorted(rows)])


def contacted_since(conn: Connection, host: str, exe: str, addresses: list[str]) -> dict[str, float]:
    """When ``exe`` first contacted each of ``addresses`` on ``host`` (missing: never)."""
    if not addresses:
        return {}
    params = {f"a{i}": a for i, a in enumerate(addresses)}
    rows = conn.execute(text(f"SELECT address, first_seen FROM history WHERE host=:h AND exe=:e AND address IN "
                             f"({', '.join(':' + k for k in params)})"), {"h": host, "e": exe, **params})
    return {r[0]: float(r[1]) for r in rows}


def recent_units(conn: Connection, received_since: float, reads_since: float) -> tuple[
        list[tuple[str, int]], list[tuple[str, float, float]], list[tuple[str, str, float, float, float]]]:
    """What facts arrived lately (wall clock) touch: outward senders on hosts with weight reads,
    hosts with new weight reads (and the span of those reads), and outward destinations."""
    senders = [(r[0], int(r[1])) for r in conn.execute(text(
        f"SELECT DISTINCT e.host, e.pid FROM egress e WHERE e.received_at>=:r AND e.pid>0 AND {OUTWARD} "
        "AND EXISTS (SELECT 1 FROM weight_reads w WHERE w.host=e.host AND w.ts>=:w)"),
        {"r": received_since, "w": reads_since})]
    reads = [(r[0], float(r[1]), float(r[2])) for r in conn.execute(text(
        "SELECT host, min(first_ts), max(ts) FROM weight_reads WHERE received_at>=:r GROUP BY host"),
        {"r": received_since})]
    destinations = [(r[0], r[1], float(r[2]), float(r[3]), float(r[4])) for r in conn.execute(text(
        f"SELECT host, address, min(ts), max(ts), max(received_at) FROM egress WHERE received_at>=:r AND {OUTWARD} "
        "AND COALESCE(accepted, 0) = 0 AND address NOT IN ('(other)', '(unowned)') GROUP BY host, address"),
        {"r": received_since})]
    return sorted(set(senders)), sorted(reads), sorted(destinations)


def hourly_to(conn: Connection, host: str, address: str, lo: float, hi: float) -> list[dict[str, Any]]:
    """Outward bytes to one address per hour (by last send) in [lo, hi), with the first and last send."""
    return _rows(conn, f"SELECT CAST(ts / 3600 AS BIGINT) AS hour, sum(bytes) AS bytes, min(COALESCE(first_ts, ts)) "
                       f"AS first_ts, max(ts) AS ts FROM egress WHERE host=:h AND address=:a AND ts>=:lo AND ts<:hi "
                       f"AND {OUTWARD} AND COALESCE(accepted, 0) = 0 GROUP BY CAST(ts / 3600 AS BIGINT) ORDER BY 1",
                 {"h": host, "a": address, "lo": lo, "hi": hi})


def hourly_to_many(conn: Connection, pairs: list[tuple[str, str]], lo: float, hi: float) -> list[dict[str, Any]]:
    """hourly_to for many (host, address) pairs in one statement per 400 pairs."""
    out: list[dict[str, Any]] = []
    for i in range(0, len(pairs), 400):
        chunk = pairs[i:i + 400]
        params: dict[str, Any] = {"lo": lo, "hi": hi}
        values = []
        for n, (host, address) in enumerate(chunk):
            params[f"h{n}"], params[f"a{n}"] = host, address
            values.append(f"(:h{n}, :a{n})")
        out += _rows(conn, f"SELECT host, address, CAST(ts / 3600 AS BIGINT) AS hour, sum(bytes) AS bytes, "
                           f"min(COALESCE(first_ts, ts)) AS first_ts, max(ts) AS ts FROM egress "
                           f"WHERE (host, address) IN (VALUES {', '.join(values)}) AND ts>=:lo AND ts<:hi "
                           f"AND {OUTWARD} AND COALESCE(accepted, 0) = 0 "
                           f"GROUP BY host, address, CAST(ts / 3600 AS BIGINT) ORDER BY 1, 2, 3", params)
    return out


def existing_keys(conn: Connection, keys: list[str]) -> set[str]:
    found: set[str] = set()
    for i in range(0, len(keys), 500):
        params = {f"k{n}": k for n, k in enumerate(keys[i:i + 500])}
        found.update(conn.execute(text(f"SELECT key FROM alerts WHERE key IN ({', '.join(':' + k for k in params)})"),
                                  params).scalars())
    return found


def weights_of(conn: Connection, hosts: list[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for i in range(0, len(hosts), 500):
        params = {f"h{n}": h for n, h in enumerate(hosts[i:i + 500])}
        out.update({r[0]: int(r[1] or 0) for r in conn.execute(text(
            f"SELECT host, weights_bytes FROM hosts WHERE host IN ({', '.join(':' + k for k in params)})"), params)})
    return out


def senders_to(conn: Connection, host: str, address: str, lo: float, hi: float) -> list[dict[str, Any]]:
    """Who sent outward to one address in [lo, hi), biggest first."""
    return _rows(conn, f"SELECT pid, exe, name, sum(bytes) AS bytes, min(event_id) AS event_id FROM egress "
                       f"WHERE host=:h AND address=:a AND ts>=:lo AND ts<:hi AND {OUTWARD} "
                       f"AND COALESCE(accepted, 0) = 0 GROUP BY pid, exe, name ORDER BY 4 DESC, 1 LIMIT 20",
                 {"h": host, "a": address, "lo": lo, "hi": hi})


def seq_runs(conn: Connection, host: str, after: int, limit: int = 1000) -> list[tuple[int, int]]:
    """The host's stored sequence numbers above ``after`` as [first, last] runs, computed in the
    database: a jump of millions costs one row, not millions."""
    rows = conn.execute(text(
        "SELECT min(seq), max(seq) FROM (SELECT seq, seq - ROW_NUMBER() OVER (ORDER BY seq) AS g FROM "
        "(SELECT DISTINCT seq FROM events WHERE host=:h AND seq>:a) d) r GROUP BY g ORDER BY 1 LIMIT :n"),
        {"h": host, "a": after, "n": limit})
    return [(int(r[0]), int(r[1])) for r in rows]


def min_seq(conn: Connection, host: str) -> int | None:
    value = conn.execute(text("SELECT min(seq) FROM events WHERE host=:h AND seq>0"), {"h": host}).scalar()
    return None if value is None else int(value)


def set_weights_total(conn: Connection, host: str, total: int, ts: float) -> bool:
    """Record the host's weights size as of ``ts``; True if the size in force changed."""
    before = conn.execute(text("SELECT weights_bytes FROM hosts WHERE host=:h"), {"h": host}).scalar()
    res = conn.execute(text("UPDATE hosts SET weights_bytes=:b, weights_at=:t WHERE host=:h "
                            "AND (weights_at IS NULL OR weights_at < :t OR (weights_at = :t AND weights_bytes < :b))"),
                       {"h": host, "b": total, "t": ts})
    return bool(res.rowcount) and before != total


def put_alert(conn: Connection, a: dict[str, Any], now: float) -> bool:
    """Write a detection's verdict as it stands on the stored facts: the alert becomes exactly this
    draft (severity may go down as well as up). Nothing is written when nothing changed, so
    re-evaluating the same facts neither bumps the count nor reopens a resolved alert."""
    params = {**a, "evidence": json.dumps(a["evidence"], default=str, sort_keys=True),
              "rank": SEVERITY_RANK[a["severity"]], "now": now}
    res = conn.execute(text(
        "INSERT INTO alerts(key, id, host, kind, severity, severity_rank, state, title, explanation, evidence, "
        "first_ts, last_ts, created_at, updated_at, count) VALUES (:key, :id, :host, :kind, :severity, :rank, 'open', "
        ":title, :explanation, :evidence, :first_ts, :last_ts, :now, :now, 1) "
        "ON CONFLICT (key) DO UPDATE SET kind = excluded.kind, severity = excluded.severity, "
        "severity_rank = excluded.severity_rank, title = excluded.title, explanation = excluded.explanation, "
        "evidence = excluded.evidence, first_ts = excluded.first_ts, last_ts = excluded.last_ts, "
        "updated_at = excluded.updated_at, count = alerts.count + 1, "
        "state = CASE WHEN alerts.state = 'resolved' THEN 'open' ELSE alerts.state END "
        "WHERE alerts.evidence <> excluded.evidence OR alerts.severity <> excluded.severity "
        "OR alerts.kind <> excluded.kind OR alerts.explanation <> excluded.explanation "
        "OR alerts.title <> excluded.title"), params)
    if res.rowcount:
        alert_changed(conn, a["key"], now)  # opened, escalated or reopened: notify the outputs
    return bool(res.rowcount)


def put_event_alert(conn: Connection, a: dict[str, Any], order: str, now: float) -> None:
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
