"""The collector's schema as the list of its migrations, oldest first: each a list of statements
applied in one transaction (``schema.migrate``). A migration is never edited once released; a
change is a new one at the end. ``{serial}`` and the names in :data:`DIALECT_SQL` are filled in
per database."""

from __future__ import annotations

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
