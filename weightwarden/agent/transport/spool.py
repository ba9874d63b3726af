"""A durable queue of events between the daemon and the broker (SQLite, WAL).

Events are written here before any publish, and deleted only once the broker
acknowledged them (QoS 1 PUBACK). With ``keep_acked_s`` an acknowledged event
stays a while longer, marked acknowledged, so it can be sent again after a
reconnect: Mosquitto acknowledges before it saves to disk, and a broker that
crashes loses what it took since its last save. The file is bounded: when it passes
``max_bytes``, the oldest low-value events (egress samples, heartbeats) go
first, then the oldest of anything, and an ``events_dropped`` event records
what went: how many, which sequence numbers, and a summary of the bytes the
dropped samples reported. A gap is never silent.

A spool file that is truncated or corrupt is moved aside (``.corrupt-TS``),
a fresh one is started, and the loss is reported; the agent does not crash-loop.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict

from weightwarden.agent.daemon.paths import private_dir, private_file
from weightwarden.events import Event, seq_ranges

LOW_VALUE = ("egress_sample", "heartbeat")
DROP_BATCH = 500

SCHEMA = """
CREATE TABLE IF NOT EXISTS events (seq INTEGER PRIMARY KEY, id TEXT NOT NULL, type TEXT NOT NULL,
                                   ts REAL NOT NULL, payload BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v TEXT NOT NULL);
"""
# acked_at: NULL while waiting for the broker; the time of its PUBACK while kept for replay.
INDEXES = ("CREATE INDEX IF NOT EXISTS events_pending ON events(seq) WHERE acked_at IS NULL",
           "CREATE INDEX IF NOT EXISTS events_acked ON events(acked_at) WHERE acked_at IS NOT NULL")


@dataclass
class SpoolRecovery:
    """Set when the spool had to be replaced; reported as an events_dropped event."""

    moved_to: str
    reason: str
    last_seq: int


class Spool:
    def __init__(self, path: Path, max_bytes: int = 256 * 2**20, keep_acked_s: float = 0.0) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.keep_acked_s = keep_acked_s
        self.recovery: SpoolRecovery | None = None
        self._lock = threading.Lock()
        self._appends = 0
        self.dropped_total = 0
        private_dir(path.parent)
        for suffix in ("", "-wal", "-shm"):
            # SQLite gives its -wal and -shm files the database file's mode: 0600 throughout.
            if suffix == "" or Path(str(path) + suffix).exists():
                private_file(Path(str(path) + suffix))
        try:
            self.db = self._open()
        except sqlite3.DatabaseError as exc:
            last_seq = self._salvage_seq()
            moved = path.with_name(f"{path.name}.corrupt-{int(time.time())}")
            for suffix in ("", "-wal", "-shm"):
                src = Path(str(path) + suffix)
                if src.exists():
                    src.replace(Path(str(moved) + suffix))
            self.recovery = SpoolRecovery(str(moved), f"spool unreadable ({exc}); moved aside", last_seq)
            private_file(path)
            self.db = self._open()
            if last_seq:
                self._set_meta("last_seq", str(last_seq))

    def _open(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        try:
            # WAL: appends never wait for the publisher's deletes. NORMAL: a commit
            # survives a crash of the agent; only power loss can take the last ones.
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            ok = db.execute("PRAGMA quick_check").fetchone()
            if not ok or ok[0] != "ok":
                raise sqlite3.DatabaseError(f"quick_check: {ok[0] if ok else 'no answer'}")
            db.executescript(SCHEMA)
            if "acked_at" not in {row[1] for row in db.execute("PRAGMA table_info(events)")}:
                db.execute("ALTER TABLE events ADD COLUMN acked_at REAL")  # a spool from before replay
            for index in INDEXES:
                db.execute(index)
            db.execute("SELECT count(*) FROM events").fetchone()
        except sqlite3.DatabaseError:
            db.close()
            raise
        return db

    def _salvage_seq(self) -> int:
        """Best effort: the last sequence number a broken spool recorded, so seq never goes back."""
        try:
            db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True)
            row = db.execute("SELECT v FROM meta WHERE k='last_seq'").fetchone()
            db.close()
            return int(row[0]) if row else 0
        except (sqlite3.Error, ValueError):
            return 0

    def _set_meta(self, key: str, value: str) -> None:
        self.db.execute("INSERT INTO meta(k, v) VALUES(?, ?) ON CONFLICT(k) DO UPDATE SET v=excluded.v", (key, value))

    def last_seq(self) -> int:
        with self._lock:
            row = self.db.execute("SELECT v FROM meta WHERE k='last_seq'").fetchone()
            top = self.db.execute("SELECT max(seq) FROM events").fetchone()
        return max(int(row[0]) if row else 0, int(top[0] or 0))

    def append(self, event: Event) -> None:
        payload = json.dumps(event.to_json(), separators=(",", ":")).encode()
        with self._lock:
            self.db.execute("BEGIN")
            self.db.execute("INSERT OR REPLACE INTO events(seq, id, type, ts, payload) VALUES(?,?,?,?,?)",
                            (event.seq, event.id, event.type, event.ts, payload))
            self._set_meta("last_seq", str(event.seq))
            self.db.execute("COMMIT")
            self._appends += 1

    def over_limit(self) -> bool:
        with self._lock:
            pages = self.db.execute("PRAGMA page_count").fetchone()[0]
            free = self.db.execute("PRAGMA freelist_count").fetchone()[0]
            size = self.db.execute("PRAGMA page_size").fetchone()[0]
        return bool((pages - free) * size > self.max_bytes)

    def enforce_limit(self, make_summary: Callable[[DroppedSummary], Event]) -> Event | None:
        """Drop events until the spool fits; returns the events_dropped event it appended."""
        if not self.over_limit():
            return None
        with self._lock:
            # Events the broker already has go first; they were only kept for a replay.
            self.db.execute("DELETE FROM events WHERE acked_at IS NOT NULL")
        dropped: list[tuple[int, str, bytes]] = []
        while self.over_limit():
            with self._lock:
                rows = self.db.execute(
                    f"SELECT seq, type, payload FROM events WHERE type IN ({','.join('?' * len(LOW_VALUE))}) "
                    "AND acked_at IS NULL ORDER BY seq LIMIT ?", (*LOW_VALUE, DROP_BATCH)).fetchall()
                if not rows:
                    rows = self.db.execute("SELECT seq, type, payload FROM events WHERE type != 'events_dropped' "
                                           "AND acked_at IS NULL ORDER BY seq LIMIT ?", (DROP_BATCH,)).fetchall()
                if not rows:
                    break
                self.db.execute("BEGIN")
                self.db.executemany("DELETE FROM events WHERE seq=?", [(r[0],) for r in rows])
                self.db.execute("COMMIT")
            dropped.extend(rows)
        if not dropped:
            return None
        self.dropped_total += len(dropped)
        summary = make_summary(summarize(dropped, "spool over its size limit"))
        self.append(summary)
        return summary

    def pending(self, limit: int = 500) -> list[tuple[int, str, bytes]]:
        """Oldest unacknowledged events: (seq, type, payload)."""
        with self._lock:
            return self.db.execute("SELECT seq, type, payload FROM events WHERE acked_at IS NULL "
                                   "ORDER BY seq LIMIT ?", (limit,)).fetchall()

    def ack(self, seqs: list[int]) -> None:
        """The broker has these: delete them, or keep them ``keep_acked_s`` for a replay."""
        if not seqs:
            return
        now = time.time()
        with self._lock:
            self.db.execute("BEGIN")
            if self.keep_acked_s > 0:
                self.db.executemany("UPDATE events SET acked_at=? WHERE seq=?", [(now, s) for s in seqs])
                self.db.execute("DELETE FROM events WHERE acked_at < ?", (now - self.keep_acked_s,))
            else:
                self.db.executemany("DELETE FROM events WHERE seq=?", [(s,) for s in seqs])
            self.db.execute("COMMIT")

    def requeue_acked(self) -> int:
        """Make the kept acknowledged events pending again; returns how many."""
        with self._lock:
            self.db.execute("BEGIN")
            self.db.execute("DELETE FROM events WHERE acked_at < ?", (time.time() - self.keep_acked_s,))
            n = self.db.execute("UPDATE events SET acked_at=NULL WHERE acked_at IS NOT NULL").rowcount
            self.db.execute("COMMIT")
        return int(n)

    def depth(self) -> int:
        """Events not yet acknowledged by the broker."""
        with self._lock:
            return int(self.db.execute("SELECT count(*) FROM events WHERE acked_at IS NULL").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self.db.close()


class ProcessBytes(TypedDict):
    process: str
    tx_bytes: int


class EgressDropped(TypedDict):
    attributed_tx_bytes: int
    unattributed_tx_bytes: int
    top_processes: list[ProcessBytes]


class DroppedSummary(TypedDict):
    """What dropped events said (events.EventsDropped's data)."""

    reason: str
    dropped: int
    by_type: dict[str, int]
    seq_ranges: list[list[int]]
    first_ts: float | None
    last_ts: float | None
    egress_summary: EgressDropped


def summarize(rows: list[tuple[int, str, bytes]], reason: str) -> DroppedSummary:
    """What dropped events said, compressed: counts, seq ranges, and egress byte totals."""
    by_type = Counter(r[1] for r in rows)
    per_process: defaultdict[str, int] = defaultdict(int)
    attributed = unattributed = 0
    first_ts = last_ts = None
    for _seq, type_, payload in rows:
        try:
            doc = json.loads(payload)
        except ValueError:
            continue
        ts = doc.get("ts")
        first_ts = ts if first_ts is None else min(first_ts, ts)
        last_ts = ts if last_ts is None else max(last_ts, ts)
        if type_ == "egress_sample":
            data = doc.get("data", {})
            attributed += int(data.get("attributed_tx_bytes", 0))
            unattributed += int(data.get("unattributed_tx_bytes", 0))
            for proc in data.get("processes", []):
                per_process[f"{proc.get('pid')}:{proc.get('exe') or proc.get('name')}"] += int(proc.get("tx_bytes", 0))
    top = sorted(per_process.items(), key=lambda kv: kv[1], reverse=True)[:20]
    return {
        "reason": reason,
        "dropped": len(rows),
        "by_type": dict(by_type),
        "seq_ranges": seq_ranges([r[0] for r in rows]),
        "first_ts": first_ts,
        "last_ts": last_ts,
        "egress_summary": {"attributed_tx_bytes": attributed, "unattributed_tx_bytes": unattributed,
                           "top_processes": [{"process": k, "tx_bytes": v} for k, v in top]},
    }
