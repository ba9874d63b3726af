"""One judgement of a host's verdicts at a time, across collectors sharing a PostgreSQL database.

Two collectors can each hold part of one host's story in a batch they have not committed yet (a
shared subscription deals a sender's samples over both). Each judges from what it can see: its own
facts and what was committed before. Left alone, both judge at once, neither sees the other's new
facts, and whichever commits last writes a verdict missing the other's (a write skew: an
exfiltration alert of 116 MB when 120 MB left). So a transaction takes the host's lock before it
reads the facts it judges from, and keeps it until it commits: the second judgement waits, and
under READ COMMITTED each of its statements then sees the first one's committed facts. The verdict
written last is then judged from everything both stored.

The locks are transaction-level advisory locks in a name space of their own (two 32-bit keys: this
module's and the host's), taken in key order in one statement, so two transactions never wait for
each other in a cycle over them. SQLite has one writer at a time: nothing to do there.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable

from sqlalchemy import Connection, text

NAMESPACE = 7760  # beside 7757 (migrations), 7758 (retention), 7759 (the sweep's leader)


# Hosts share HOST_KEYS keys (a CRC of the name, modulo): a transaction holds at most this many locks
# whatever the fleet's size. PostgreSQL keeps every advisory lock in its shared lock table, by default
# max_locks_per_transaction (64) x max_connections (100) = 6,400 slots for the whole server, plus some
# slack: one lock per host, 10,000 in one transaction fitted on the test server and 30,000 failed with
# "out of shared memory", in every collector at once. Two hosts on one key only wait for each other; with a shared subscription
# both collectors' batches hold most hosts anyway, so their judgements take turns either way.
HOST_KEYS = 1024


def host_key(host: str) -> int:
    """The host's lock key, in [0, HOST_KEYS): the same in every collector."""
    return zlib.crc32(host.encode()) % HOST_KEYS


def lock_hosts(conn: Connection, hosts: Iterable[str], held: set[int] | None = None) -> int:
    """Take (PostgreSQL) the judgement locks of these hosts, in key order, until the transaction ends;
    ``held``: keys this transaction already holds (skipped, and the new ones added). Returns how many
    were taken. ``hosts`` is not read on SQLite: a generator costs nothing there."""
    if conn.dialect.name != "postgresql":
        return 0
    keys = sorted({host_key(h) for h in hosts} - (held or set()))
    if not keys:
        return 0
    # In key order, in one round trip (output expressions are computed after ORDER BY, PostgreSQL >= 9.6).
    conn.execute(text("SELECT pg_advisory_xact_lock(CAST(:ns AS integer), k) FROM unnest(CAST(:keys AS integer[])) "
                      "WITH ORDINALITY AS t(k, n) ORDER BY n"), {"ns": NAMESPACE, "keys": keys}).all()
    if held is not None:
        held.update(keys)
    return len(keys)


__all__ = ["HOST_KEYS", "NAMESPACE", "host_key", "lock_hosts"]
