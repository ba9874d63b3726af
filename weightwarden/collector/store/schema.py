"""The collector's database schema, its migrations, and opening a database the right way.

Only ``weightwarden-collector run`` and ``weightwarden-collector db upgrade``
migrate. Every other command opens an existing database, refuses one whose
schema is newer than this binary knows (an older collector must not write
into a schema it does not understand), and says in one line what is wrong.
Read commands open read-only and never create a file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event, make_url, text
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError

# The columns of the ``egress`` view: raw rows and per-minute rows alike. A migration that adds an
# egress column adds it to both tables and recreates the view (DROP VIEW egress; egress_view()).
EGRESS_COLUMNS_V5 = ("host", "pid", "ppid", "exe", "name", "uid", "address", "port", "allowed", "bytes", "ts",
                     "rate_bps", "event_id", "pipes", "received_at", "dns_name", "user_name", "start_time", "first_ts",
                     "protocol", "accepted", "container", "cmd_hash", "exact")
# 8: ``complete``: 1 when the sample's attribution was whole (eBPF path, sensor not degraded, no unowned or
# unexplained bytes), 0 when not, NULL from an agent that does not say.
EGRESS_COLUMNS = (*EGRESS_COLUMNS_V5, "complete")
# One per-minute row per (host, minute, process, destination).
MINUTE_KEY = ("host", "minute", "pid", "exe", "address", "port")


def egress_view(columns: tuple[str, ...] = EGRESS_COLUMNS) -> str:
    cols = ", ".join(columns)
    return f"CREATE VIEW egress AS SELECT {cols} FROM egress_raw UNION ALL SELECT {cols} FROM egress_minute"


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
    [  # 4: which version of a centrally published policy each host runs, and from where (file or mqtt)
        "ALTER TABLE hosts ADD COLUMN policy_version BIGINT",
        "ALTER TABLE hosts ADD COLUMN policy_source TEXT",
    ],
    [  # 5: bounded storage; who sent (user, command line) and to which name
        # The DNS name a destination was looked up by, and the sender's user, on every egress row.
        "ALTER TABLE egress ADD COLUMN dns_name TEXT",
        "ALTER TABLE egress ADD COLUMN user_name TEXT",
        # Raw egress rows (egress_raw) are kept for a short window; older ones are folded into one row
        # per minute, host, process and destination (egress_minute), kept as long as detections look
        # back. ``egress`` becomes a view of both, so every query reads the same totals either way.
        "ALTER TABLE egress RENAME TO egress_raw",
        f"""CREATE TABLE egress_minute (host TEXT NOT NULL, minute BIGINT NOT NULL, pid BIGINT NOT NULL,
             exe TEXT NOT NULL, address TEXT NOT NULL, port INTEGER NOT NULL, ppid BIGINT, name TEXT, uid BIGINT,
             allowed INTEGER NOT NULL, bytes BIGINT NOT NULL, ts DOUBLE PRECISION NOT NULL, rate_bps DOUBLE PRECISION,
             event_id TEXT NOT NULL, pipes TEXT, received_at DOUBLE PRECISION, dns_name TEXT, user_name TEXT,
             start_time DOUBLE PRECISION, first_ts DOUBLE PRECISION, protocol TEXT, accepted INTEGER, container TEXT,
             cmd_hash TEXT, exact INTEGER, samples BIGINT NOT NULL, PRIMARY KEY ({', '.join(MINUTE_KEY)}))""",
        "CREATE INDEX egress_minute_host_ts ON egress_minute(host, ts)",
        "CREATE INDEX egress_minute_host_pid ON egress_minute(host, pid)",
        "CREATE INDEX egress_minute_received ON egress_minute(received_at)",
        "CREATE INDEX egress_minute_minute ON egress_minute(minute)",
        egress_view(EGRESS_COLUMNS_V5),
        # One row per process: its user and command line, which every sample would otherwise repeat.
        """CREATE TABLE processes (host TEXT NOT NULL, pid BIGINT NOT NULL, exe TEXT NOT NULL, ppid BIGINT,
             name TEXT, uid BIGINT, user_name TEXT, cmdline TEXT, cgroup TEXT, container TEXT,
             start_time DOUBLE PRECISION, first_seen DOUBLE PRECISION NOT NULL, last_seen DOUBLE PRECISION NOT NULL,
             PRIMARY KEY (host, pid, exe))""",
        "CREATE INDEX processes_last_seen ON processes(last_seen)",
        "ALTER TABLE history ADD COLUMN last_seen DOUBLE PRECISION",
        "UPDATE history SET last_seen = first_seen",
        "CREATE INDEX history_last_seen ON history(last_seen)",
        "ALTER TABLE dead_letters ADD COLUMN code TEXT",
        "ALTER TABLE dead_letters ADD COLUMN size BIGINT",
        # What each running collector says about itself, beside its backlog in messages: in bytes, in
        # seconds (how long the oldest message it holds has waited), whether it stopped reading, its batch.
        "ALTER TABLE collector_status ADD COLUMN version TEXT",
        "ALTER TABLE collector_status ADD COLUMN stored BIGINT",
        "ALTER TABLE collector_status ADD COLUMN backlog_bytes BIGINT",
        "ALTER TABLE collector_status ADD COLUMN backlog_s DOUBLE PRECISION",
        "ALTER TABLE collector_status ADD COLUMN paused INTEGER",
        "ALTER TABLE collector_status ADD COLUMN batch BIGINT",
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
        # Counters in shares, one per collector (a row every batch of every collector would update is a
        # row they would queue for); ``counters`` stays readable as before, as a view of the sums.
        """CREATE TABLE counter_parts (name TEXT NOT NULL, part TEXT NOT NULL, value BIGINT NOT NULL,
             PRIMARY KEY (name, part))""",
        "INSERT INTO counter_parts(name, part, value) SELECT name, '', value FROM counters",
        "DROP TABLE counters",
        "CREATE VIEW counters AS SELECT name, sum(value) AS value FROM counter_parts GROUP BY name",
    ],
    [  # 6: retention by when a fact was stored, not by the time its agent wrote on it (a spool delivered
        # late, or a clock set back, must not be purged as it arrives, before anything judged it)
        "CREATE INDEX events_received ON events(received_at)",
    ],
    [  # 7 (security): alerts sorted by when the collector raised them; one append-only audit trail of
        # every authentication and administration action; login limits shared by every `serve`; outputs
        # that export the audit trail
        "ALTER TABLE alerts ADD COLUMN raised_at DOUBLE PRECISION",
        "UPDATE alerts SET raised_at = created_at",
        "CREATE INDEX alerts_rank_raised ON alerts(severity_rank, raised_at)",
        "CREATE INDEX alerts_state_rank_raised ON alerts(state, severity_rank, raised_at)",
        "CREATE INDEX alerts_host_rank_raised ON alerts(host, severity_rank, raised_at)",
        "CREATE INDEX alerts_updated ON alerts(updated_at)",
        # Who did what, from where, with what outcome (alert actions keep alert_key/alert_id).
        "ALTER TABLE audit ADD COLUMN source TEXT",
        "ALTER TABLE audit ADD COLUMN target TEXT",
        "ALTER TABLE audit ADD COLUMN outcome TEXT",
        "UPDATE audit SET outcome = 'ok', target = alert_id",
        "CREATE INDEX audit_ts ON audit(ts)",
        "CREATE INDEX audit_user ON audit(user_name, id)",
        # Append-only: the record of who did what is never rewritten or deleted, not even by a bug.
        "{audit_guard_1}",
        "{audit_guard_2}",
        # Failed logins per user, per (user, address) and per address: counted atomically, in the database.
        """CREATE TABLE login_limits (key TEXT PRIMARY KEY, failures INTEGER NOT NULL DEFAULT 0,
             blocked_until DOUBLE PRECISION, updated_at DOUBLE PRECISION NOT NULL)""",
        "CREATE INDEX login_limits_updated ON login_limits(updated_at)",
        "ALTER TABLE alert_outputs ADD COLUMN audit INTEGER NOT NULL DEFAULT 0",
    ],
    [  # 8 (detection): the sensor's state, the agents' lifecycle, pipeline stages, and the new agent events' facts
        # Whether a sample's attribution was whole (eBPF, sensor not degraded, nothing unowned or unexplained).
        "ALTER TABLE egress_raw ADD COLUMN complete INTEGER",
        "ALTER TABLE egress_minute ADD COLUMN complete INTEGER",
        "DROP VIEW egress",
        egress_view(),
        # A weight file's identity: a later read of a relinked file is known by its inode.
        "ALTER TABLE weight_reads ADD COLUMN inode TEXT",
        "ALTER TABLE weight_reads ADD COLUMN dev TEXT",
        "CREATE INDEX weight_reads_inode ON weight_reads(host, inode)",
        # One row per process and pipe end it holds, for processes that read a pipe (senders, pipeline
        # stages): who reads what a weights reader writes, through any number of stages.
        """CREATE TABLE pipe_ends (host TEXT NOT NULL, inode TEXT NOT NULL, side TEXT NOT NULL, pid BIGINT NOT NULL,
             start_time DOUBLE PRECISION, name TEXT, exe TEXT, pipes TEXT, first_ts DOUBLE PRECISION NOT NULL,
             ts DOUBLE PRECISION NOT NULL, event_id TEXT NOT NULL, received_at DOUBLE PRECISION)""",
        "CREATE INDEX pipe_ends_inode ON pipe_ends(host, inode, side)",
        "CREATE INDEX pipe_ends_pid ON pipe_ends(host, pid)",
        "CREATE INDEX pipe_ends_received ON pipe_ends(received_at)",
        # The sensor's state per host, as of the latest report by the agent's clock; when it was last whole
        # and last degraded (the degraded state itself), so the alert follows the facts in any order.
        """CREATE TABLE sensors (host TEXT PRIMARY KEY, state TEXT, state_at DOUBLE PRECISION,
             whole_at DOUBLE PRECISION, degraded_at DOUBLE PRECISION, degraded TEXT)""",
        # The agent's lifecycle: its latest start, clean stop and heartbeat (its clock); its latest Last-Will (by
        # the connection it belonged to), when that arrived and when the agent was last heard from before it, and
        # when the collector found it silent (the collector's clock); its heartbeat interval.
        """CREATE TABLE lifecycle (host TEXT PRIMARY KEY, started_at DOUBLE PRECISION, stopped_at DOUBLE PRECISION,
             stop_reason TEXT, lost_conn DOUBLE PRECISION, lost_at DOUBLE PRECISION, lost_seen DOUBLE PRECISION,
             silent_from DOUBLE PRECISION, beat_at DOUBLE PRECISION, beat_gap DOUBLE PRECISION)""",
        # Packet sockets that sent (raw_socket events), weight files given new names (weights_relinked),
        # and spans the sensor may have been blind in (sensor_tampered).
        """CREATE TABLE raw_sockets (host TEXT NOT NULL, pid BIGINT NOT NULL, start_time DOUBLE PRECISION,
             name TEXT, exe TEXT, uid BIGINT, container TEXT, ppid BIGINT, pipes TEXT, cmd_hash TEXT,
             family TEXT NOT NULL, interface TEXT, bypass INTEGER, allowed INTEGER NOT NULL,
             tx_bytes BIGINT NOT NULL, tx_packets BIGINT, action TEXT, killed INTEGER, escaped_bytes BIGINT,
             first_ts DOUBLE PRECISION NOT NULL, ts DOUBLE PRECISION NOT NULL, event_id TEXT NOT NULL,
             received_at DOUBLE PRECISION)""",
        "CREATE INDEX raw_sockets_pid ON raw_sockets(host, pid)",
        "CREATE INDEX raw_sockets_received ON raw_sockets(received_at)",
        """CREATE TABLE relinks (host TEXT NOT NULL, inode TEXT NOT NULL, dev TEXT, how TEXT NOT NULL,
             from_path TEXT NOT NULL, to_path TEXT NOT NULL, outside_tree INTEGER NOT NULL, size BIGINT,
             pid BIGINT, start_time DOUBLE PRECISION, name TEXT, exe TEXT, uid BIGINT, ts DOUBLE PRECISION NOT NULL,
             event_id TEXT NOT NULL, received_at DOUBLE PRECISION)""",
        "CREATE INDEX relinks_inode ON relinks(host, inode)",
        "CREATE INDEX relinks_received ON relinks(received_at)",
        """CREATE TABLE blind_spans (host TEXT NOT NULL, first_ts DOUBLE PRECISION NOT NULL,
             ts DOUBLE PRECISION NOT NULL, event_id TEXT NOT NULL, received_at DOUBLE PRECISION)""",
        "CREATE INDEX blind_spans_host ON blind_spans(host, ts)",
    ],
]
SCHEMA_VERSION = len(MIGRATIONS)
# Where SQLite and PostgreSQL need different words (triggers), a migration names the statement
# ("{audit_guard_1}") and each dialect says it here.
DIALECT_SQL: dict[str, dict[str, str]] = {
    "sqlite": {
        "audit_guard_1": "CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit "
                         "BEGIN SELECT RAISE(ABORT, 'the audit trail is append-only'); END",
        "audit_guard_2": "CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit "
                         "BEGIN SELECT RAISE(ABORT, 'the audit trail is append-only'); END",
    },
    "postgresql": {
        "audit_guard_1": "CREATE FUNCTION audit_append_only() RETURNS trigger LANGUAGE plpgsql AS "
                         "'BEGIN RAISE EXCEPTION ''the audit trail is append-only''; END'",
        "audit_guard_2": "CREATE TRIGGER audit_append_only BEFORE UPDATE OR DELETE ON audit "
                         "FOR EACH ROW EXECUTE FUNCTION audit_append_only()",
    },
}


class StoreError(Exception):
    """A database that cannot be used; the message names the problem in one line, never a password."""


def safe_url(url: str) -> str:
    """The URL with any password hidden, for messages and logs."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):
        return "<unparsable database URL>"


def normalize_url(url: str) -> str:
    """sqlite:///PATH as is; postgresql:// goes through psycopg 3."""
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


def sqlite_path(url: str) -> Path | None:
    """The file of a sqlite:/// URL (None for :memory: and other schemes)."""
    if url.startswith("sqlite:///") and not url.startswith("sqlite:///:memory:"):
        return Path(url[len("sqlite:///"):].split("?", 1)[0])
    return None


def check_url(url: str) -> None:
    if not url.startswith(("sqlite:///", "postgresql://", "postgres://", "postgresql+psycopg://")):
        raise StoreError(f"--db {safe_url(url)!r} is not a database URL: use sqlite:///PATH or "
                         "postgresql://USER@HOST/DB")


def make_engine(url: str, *, read_only: bool, create: bool) -> Engine:
    """An engine for ``url``. SQLite files are created only when ``create``; read-only
    engines cannot write (SQLite mode=ro, PostgreSQL default_transaction_read_only)."""
    check_url(url)
    path = sqlite_path(url)
    connect_args: dict[str, Any] = {}
    target = normalize_url(url)
    if path is not None:
        if not path.exists():
            if not create:
                raise StoreError(f"no database at {path} (the collector creates it on its first run)")
            path.parent.mkdir(parents=True, exist_ok=True)
        if read_only:
            target = f"sqlite:///file:{path.resolve()}?mode=ro&uri=true"
    elif url.startswith(("postgresql", "postgres")):
        connect_args["connect_timeout"] = 10
        if read_only:
            connect_args["options"] = "-c default_transaction_read_only=on"
    try:
        # hide_parameters: a failing statement's log line must not carry event contents.
        engine = create_engine(target, pool_pre_ping=True, hide_parameters=True, connect_args=connect_args)
    except (ArgumentError, NoSuchModuleError, ValueError) as exc:
        raise StoreError(f"--db {safe_url(url)!r}: {exc}") from None
    if engine.dialect.name == "sqlite":
        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            if not read_only:
                cur.execute("PRAGMA journal_mode=WAL")
                cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA busy_timeout=10000")
            cur.close()
    return engine


def connect_error(url: str, exc: BaseException) -> StoreError:
    """One line for a database that cannot be reached or read (no traceback, no password)."""
    orig = getattr(exc, "orig", None) or exc
    first = (str(orig).strip().splitlines() or [type(orig).__name__])[0]
    try:
        password = make_url(normalize_url(url)).password
    except (ArgumentError, ValueError):
        password = None
    if password:
        first = first.replace(str(password), "***")  # drivers may repeat what they were given
    return StoreError(f"cannot use database {safe_url(url)}: {first}")


def current_version(conn: Connection) -> int:
    """The schema version of a database: 0 for an empty one."""
    exists = conn.execute(text(
        "SELECT 1 FROM sqlite_master WHERE type='table' AND name='schema_version'" if conn.dialect.name == "sqlite"
        else "SELECT 1 FROM information_schema.tables WHERE table_name='schema_version' "
             "AND table_schema = current_schema()")).first()
    if exists is None:
        return 0
    return int(conn.execute(text("SELECT max(version) FROM schema_version")).scalar() or 0)


def too_new(found: int) -> StoreError:
    return StoreError(f"the database's schema is version {found}, newer than this collector's "
                      f"({SCHEMA_VERSION}): upgrade weightwarden-collector before using it")


def check_version(engine: Engine, url: str) -> int:
    """Refuse a schema this binary does not know (newer) or one that needs `db upgrade` (older)."""
    try:
        with engine.connect() as conn:
            found = current_version(conn)
    except DBAPIError as exc:
        raise connect_error(url, exc) from None
    if found > SCHEMA_VERSION:
        raise too_new(found)
    if found == 0:
        raise StoreError(f"{safe_url(url)} holds no collector database (run the collector, or "
                         "`weightwarden-collector db upgrade --db URL`, to create one)")
    if found < SCHEMA_VERSION:
        raise StoreError(f"the database's schema is version {found}, this collector needs {SCHEMA_VERSION}: "
                         "run `weightwarden-collector db upgrade --db URL` (or start the collector) first")
    return found


def migrate(engine: Engine, url: str) -> tuple[int, int]:
    """Bring the schema up to date; returns (version before, version after)."""
    serial = "BIGSERIAL PRIMARY KEY" if engine.dialect.name == "postgresql" else "INTEGER PRIMARY KEY AUTOINCREMENT"
    try:
        with engine.begin() as conn:
            if engine.dialect.name == "postgresql":
                # Two collectors starting together must not both migrate.
                conn.execute(text("SELECT pg_advisory_xact_lock(7757)"))
            before = current_version(conn)
            if before > SCHEMA_VERSION:
                raise too_new(before)
            conn.execute(text("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)"))
            for number, statements in enumerate(MIGRATIONS, start=1):
                if number <= before:
                    continue
                for stmt in statements:
                    conn.execute(text(stmt.format(serial=serial, **DIALECT_SQL[engine.dialect.name])))
                conn.execute(text("INSERT INTO schema_version(version) VALUES (:v)"), {"v": number})
    except DBAPIError as exc:
        raise connect_error(url, exc) from None
    return before, SCHEMA_VERSION


def default_db_url() -> str:
    """The systemd unit's database, or $WEIGHTWARDEN_DB."""
    return os.environ.get("WEIGHTWARDEN_DB", DEFAULT_DB)


DEFAULT_DB = "sqlite:////var/lib/weightwarden-collector/collector.db"
