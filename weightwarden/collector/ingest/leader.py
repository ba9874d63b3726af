"""Who sweeps: one collector at a time on a shared PostgreSQL."""

from __future__ import annotations

import contextlib

from sqlalchemy import Connection, text

from weightwarden.collector.store.database import Store


class SweepLeader:
    """On PostgreSQL, the collector holding a session advisory lock sweeps; the others wait their
    turn (the lock frees when its holder's connection does, whatever happened to the process).
    On SQLite there is one collector: it always sweeps."""

    KEY = 7759

    def __init__(self, store: Store) -> None:
        self.store = store
        self.conn: Connection | None = None
        self.held = False

    def acquire(self) -> bool:
        if self.store.dialect != "postgresql":
            return True
        if self.conn is None:
            self.conn = self.store.engine.connect()
            self.conn.execution_options(isolation_level="AUTOCOMMIT")
        try:
            # Asked every time, so a lock lost with its connection is noticed; taken again while held,
            # it is given back once (advisory locks count).
            got = bool(self.conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": self.KEY}).scalar())
            if got and self.held:
                self.conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": self.KEY})
            self.held = got
            return got
        except Exception:
            self.release()
            raise

    def release(self) -> None:
        self.held = False
        if self.conn is not None:
            with contextlib.suppress(Exception):  # best effort: the lock goes with the connection
                self.conn.close()
            self.conn = None
