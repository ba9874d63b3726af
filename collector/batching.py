"""The ingest half of the pipeline: a batch of MQTT messages in, stored events out.

One batch is one transaction. Validation runs first, outside it (no lock
held while parsing). The common case, an egress sample from a host that read
no weights lately and whose slow-exfiltration check is not due, is written
with a few executemany calls for the whole batch; every other event goes
through ``Pipeline.apply`` in its own savepoint.

What can go wrong, and what happens:

- a message that fails validation: a dead letter with its reason, counted;
- the database is away or busy (disconnected, locked past the busy timeout):
  :class:`DatabaseAway`, and the caller retries the same batch later (nothing
  was acknowledged, so nothing is lost);
- a statement fails on the data of one event (which validation should make
  impossible, but a database can always refuse something): the batch is
  stored again event by event, each in a savepoint, and only the event that
  cannot be stored becomes a dead letter ("cannot be stored: ..."). No
  content can make a batch fail for ever.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable
from typing import Any

from sqlalchemy import Connection, text
from sqlalchemy.exc import DBAPIError, OperationalError

from weightwarden.collector import bulk
from weightwarden.collector.bounded import BoundedDict
from weightwarden.collector.correlate import Tuning
from weightwarden.collector.ingest import Rejection, validate
from weightwarden.collector.store import Store
from weightwarden.events import (
    EgressSample, Event, FileAccess, Heartbeat, ProcessFields, ThresholdCrossed, WeightHolder, WeightsCopy,
)

NO_READS_CACHE_S = 5.0
SLOW_EVERY_S = 60.0  # the slow-exfiltration check looks at hours: once a minute per destination is plenty
REFRESH_S = 3600.0  # a known process or contact is written again this often (its last_seen, for retention)
CACHE_LIMIT = 200_000  # entries per cache: ~40 MB at most
ERRORS_KEPT = 100
CONFLICT_RETRIES = 3
MAX_AHEAD_S = 86400.0  # an event's ts may be this far ahead of the collector's clock


class DatabaseAway(Exception):
    """The database could not take the batch (disconnected, locked, timed out): retry it later."""


class _EventFailed(Exception):
    def __init__(self, index: int, exc: BaseException) -> None:
        super().__init__(describe(exc))
        self.index, self.exc = index, exc


def describe(exc: BaseException) -> str:
    """One line naming an error: its class and the database's own first line, never the statement
    or its parameters (which may hold event contents)."""
    orig = exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc
    first = (str(orig).strip().splitlines() or [""])[0]
    return f"{type(orig).__name__}: {first}"[:300]


def _conflict(exc: BaseException) -> bool:
    """PostgreSQL's serialization failures and deadlocks (two collectors, one row): just retry."""
    code = getattr(getattr(exc, "orig", None), "sqlstate", None)
    return code in ("40001", "40P01")


class BatchIngest:
    """Mixed into Pipeline, which provides ``apply`` (one event, full correlation)."""

    store: Store
    tune: Tuning
    clock: Callable[[], float]
    # Whose counters these are (a collector's client id): each collector adds to rows of its own.
    counter_part: str = ""
    # Host rows written by flush_hosts() rather than in each batch (the service's mode).
    defer_hosts: bool = False

    def _init_caches(self) -> None:
        self._batch_hosts: list[dict[str, Any]] = []
        self._pending_hosts: list[dict[str, Any]] = []
        self._pending_lock = threading.Lock()
        self.errors: deque[str] = deque(maxlen=ERRORS_KEPT)
        # Per-collector caches that only skip redundant work; the database stays the truth.
        self._contacts: BoundedDict[tuple[str, str, str], tuple[float, float]] = BoundedDict(CACHE_LIMIT)
        self._slow_checked: BoundedDict[tuple[str, str], float] = BoundedDict(CACHE_LIMIT)
        self._no_reads_until: BoundedDict[str, float] = BoundedDict(CACHE_LIMIT)
        self._processes: BoundedDict[tuple[Any, ...], float] = BoundedDict(CACHE_LIMIT)

    def _forget(self) -> None:
        """After a rollback: what the caches learnt inside it may never have been stored."""
        for cache in (self._contacts, self._slow_checked, self._no_reads_until, self._processes):
            cache.clear()

    def apply(self, conn: Connection, ev: Event, now: float) -> None:
        raise NotImplementedError

    # -- entry ---------------------------------------------------------------

    def ingest(self, messages: Iterable[tuple[str, bytes]]) -> dict[str, int]:
        """Store one batch; returns {stored, duplicates, rejected}. Raises DatabaseAway only."""
        batch = list(messages)
        for attempt in range(1, CONFLICT_RETRIES + 1):
            try:
                return self._ingest(batch)
            except Exception as exc:  # noqa: BLE001 - classified below; nothing else escapes
                self._forget()
                if _conflict(exc) and attempt < CONFLICT_RETRIES:
                    continue
                if self.store.transient(exc):
                    raise DatabaseAway(describe(exc)) from exc
                self.errors.append(f"batch of {len(batch)}: {describe(exc)}; storing it event by event")
                break
        poison: dict[int, str] = {}
        while True:
            try:
                return self._ingest_each(batch, poison)
            except _EventFailed as failed:
                self._forget()
                if self.store.transient(failed.exc):
                    raise DatabaseAway(describe(failed.exc)) from failed.exc
                poison[failed.index] = f"cannot be stored: {describe(failed.exc)}"
            except Exception as exc:  # noqa: BLE001
                self._forget()
                if self.store.transient(exc):
                    raise DatabaseAway(describe(exc)) from exc
                return self._dead_letter_all(batch, f"cannot be stored: {describe(exc)}")

    @staticmethod
    def _validate(topic: str, payload: bytes, now: float) -> Event | Rejection:
        try:
            checked = validate(topic, payload)
        except Exception as exc:  # noqa: BLE001 - validation must be total; if it is not, say so
            return Rejection(f"validation failed: {type(exc).__name__}", "rejected_internal")
        if isinstance(checked, Event) and checked.ts > now + MAX_AHEAD_S:
            # A day ahead is a broken clock or a forgery: stored, it would sit in every window for ever.
            return Rejection(f"ts {checked.ts:.0f} is {checked.ts - now:.0f} s ahead of the collector's clock "
                             f"(at most {MAX_AHEAD_S:.0f} s)", "rejected_clock")
        return checked

    # -- the fast path: the whole batch at once -------------------------------------

    def _ingest(self, batch: list[tuple[str, bytes]]) -> dict[str, int]:
        now = self.clock()
        codes: Counter[str] = Counter()
        valid: list[Event] = []
        rejected: list[tuple[str, str, bytes, str]] = []
        for topic, payload in batch:
            checked = self._validate(topic, payload, now)
            if isinstance(checked, Rejection):
                rejected.append((topic, checked.reason, payload, checked.code))
                codes[checked.code] += 1
            else:
                valid.append(checked)
        self._batch_hosts = []
        with self.store.tx() as conn:
            self.store.dead_letters(conn, rejected, now)
            fresh = self._fresh(conn, valid, codes)
            self.store.insert_events(conn, fresh, now)
            self.record_batch(conn, fresh, now, codes)
            # Rows other collectors write too come last, so their locks are held only until the commit.
            self._remember_processes(conn, fresh)
            codes.update(stored=len(fresh), rejected=len(rejected))
            self._count(conn, codes)
        self._committed()
        return {"stored": codes["stored"], "duplicates": codes["duplicates"], "rejected": codes["rejected"]}

    def _committed(self) -> None:
        """The batch is in: its host rows join those waiting for flush_hosts (deferred mode)."""
        if self.defer_hosts and self._batch_hosts:
            with self._pending_lock:
                self._pending_hosts += self._batch_hosts
        self._batch_hosts = []

    def flush_hosts(self) -> int:
        """Write the host rows of committed batches (deferred mode), in a transaction of their own;
        returns how many rows. If the database refuses, they wait for the next flush."""
        with self._pending_lock:
            rows, self._pending_hosts = self._pending_hosts, []
        if not rows:
            return 0
        try:
            with self.store.tx() as conn:
                self.store.touch_hosts(conn, rows, self.clock())
        except Exception:
            with self._pending_lock:
                self._pending_hosts = rows + self._pending_hosts
            raise
        return len(rows)

    def record_batch(self, conn: Connection, fresh: list[Event], now: float, codes: Counter[str]) -> None:
        """The facts of stored events, correlated. Samples that need no correlation are written
        together; the other events one by one, each in a savepoint (a correlation that fails is
        counted, the event kept). Database errors go up: the batch is retried."""
        plain, careful = self._split(conn, fresh)
        beats, careful = self._plain_heartbeats(conn, careful)
        hosts: list[dict[str, Any]] = []
        rows: list[dict[str, Any]] = []
        for ev, ev_rows in plain:
            assert isinstance(ev.data, EgressSample)
            hosts.append({"host": ev.host, "seq": ev.seq, "ts": ev.ts, "egress_bps": egress_bps(ev.data)})
            rows.extend({"host": ev.host, **r} for r in ev_rows)
        hosts += beats
        self.store.add_egress_rows(conn, rows)
        for ev in careful:
            try:
                with conn.begin_nested():
                    self.apply(conn, ev, now)
            except Exception as exc:  # noqa: BLE001 - the event is kept; its correlation failure is counted
                if isinstance(exc, OperationalError) or self.store.is_outage(exc):
                    raise  # the database, not the event: the whole batch again, later
                codes["correlation_errors"] += 1
                self.errors.append(f"{ev.type} {ev.id}: {describe(exc)}")
        # Rows other collectors update too, last (their locks are held only until the commit), each
        # in one statement in key order (two collectors never wait for each other in a cycle).
        self._touch_contacts(conn, [r for r in rows if not r["allowed"]])
        host_rows = [{k: v for k, v in h.items() if k != "ts"} for h in sorted(hosts, key=lambda r: (r["ts"], r["seq"]))]
        if self.defer_hosts:
            # The service's mode: every batch would update the same host rows as every other collector's
            # batch; written once a second instead (flush_hosts), they never hold a batch up.
            self._batch_hosts += host_rows
        else:
            self.store.touch_hosts(conn, host_rows, now)

    def _plain_heartbeats(self, conn: Connection, events: list[Event]) -> tuple[list[dict[str, Any]], list[Event]]:
        """Heartbeats of hosts that are online only update the host's row, exactly as ``apply`` would
        (its fields, the host online): one statement for the batch. A heartbeat from a host marked
        lost or silent goes through ``apply``, which also resolves the agent_silent alert."""
        beats = [ev for ev in events if isinstance(ev.data, Heartbeat)]
        if not beats:
            return [], events
        cond, params = bulk.in_list(conn, sorted({ev.host for ev in beats}))
        away = set(conn.execute(text(f"SELECT host FROM hosts WHERE status IN ('lost', 'silent') AND host {cond}"),
                                params).scalars())
        rows: list[dict[str, Any]] = []
        rest = [ev for ev in events if not isinstance(ev.data, Heartbeat) or ev.host in away]
        for ev in beats:
            d = ev.data
            if ev.host in away or not isinstance(d, Heartbeat):
                continue
            weights = d.weights.total_bytes if d.weights is not None and d.weights.total_bytes else None
            rows.append({"host": ev.host, "seq": ev.seq, "ts": ev.ts, "policy": d.policy,
                         "policy_digest": d.policy_digest, "backend": d.backend,
                         "rules_in_force": int(d.rules_in_force), "caps": d.caps, "last_heartbeat": ev.ts,
                         "weights_bytes": weights})
        return rows, rest

    def _fresh(self, conn: Connection, valid: list[Event], codes: Counter[str]) -> list[Event]:
        seen = self.store.existing_ids(conn, [e.id for e in valid])
        fresh: list[Event] = []
        for ev in valid:
            if ev.id in seen:
                codes["duplicates"] += 1
            else:
                seen.add(ev.id)
                fresh.append(ev)
        return fresh

    def _count(self, conn: Connection, codes: Counter[str]) -> None:
        for name in sorted(codes):
            if codes[name]:
                self.store.bump(conn, name, codes[name], part=self.counter_part)
        if codes["rejected"] or codes["rejected_store"]:
            self.store.trim_dead_letters(conn)

    def _split(self, conn: Connection, fresh: list[Event]
               ) -> tuple[list[tuple[Event, list[dict[str, Any]]]], list[Event]]:
        """Samples that need no correlation, with their rows; and the events that do."""
        samples = [(ev, egress_rows(ev)) for ev in fresh if isinstance(ev.data, EgressSample)]
        careful = [ev for ev in fresh if not isinstance(ev.data, EgressSample)]
        mono = time.monotonic()
        outward_hosts = sorted({ev.host for ev, rows in samples if any(not r["allowed"] for r in rows)})
        unknown = [h for h in outward_hosts if self._no_reads_until.get(h, 0.0) <= mono]
        # Reads in this very batch count: they are stored (careful path) before the samples are correlated.
        # And a host that reads is no longer one that did not: its next samples are looked at again.
        with_reads = {ev.host for ev in careful if isinstance(ev.data, (FileAccess, WeightHolder, WeightsCopy))}
        for h in with_reads:
            self._no_reads_until.pop(h, None)
        unknown = [h for h in unknown if h not in with_reads]
        if unknown:
            since = min(ev.ts for ev, _ in samples) - self.tune.window_s
            with_reads |= self.store.hosts_with_reads(conn, unknown, since)
            for h in unknown:
                if h not in with_reads:
                    # A "no" is remembered for a few seconds; the sweep re-checks recent uploads, so a
                    # read reported meanwhile (perhaps to another collector) is still correlated.
                    self._no_reads_until[h] = mono + NO_READS_CACHE_S
        plain = []
        slow = _SlowTotals(self.store, conn, self.tune.slow_window_s)
        for ev, rows in samples:
            outward = [r for r in rows if not r["allowed"]]
            slow.add(ev.host, outward)
            if outward and (ev.host in with_reads or self._slow_possible(slow, ev.host, outward, ev.ts)):
                careful.append(ev)
            else:
                plain.append((ev, rows))
        careful.sort(key=lambda e: (e.ts, e.seq))
        return plain, careful

    def _slow_possible(self, slow: _SlowTotals, host: str, outward: list[dict[str, Any]], ts: float) -> bool:
        """Could a due slow-exfiltration check alert? Not while a destination has received less than
        slow_min_bytes, or over less than slow_min_span_s, in the window: an aggregate query (plus
        this batch's rows) says so without fetching a day of rows, and the check is done for now."""
        for address in self._slow_due(host, outward, ts):
            sent, first, last = slow.total(host, address, ts)
            if sent >= self.tune.slow_min_bytes and last - first >= self.tune.slow_min_span_s:
                return True
            self._slow_checked[(host, address)] = ts
        return False

    def _slow_due(self, host: str, outward: list[dict[str, Any]], ts: float) -> list[str]:
        """Destinations whose slow-exfiltration check is due (once a minute each)."""
        return [a for a in sorted({r["address"] for r in outward})
                if ts - self._slow_checked.get((host, a), -1e18) >= SLOW_EVERY_S]

    def _first_contacts(self, conn: Connection, host: str, outward: list[dict[str, Any]], ts: float) -> None:
        self._touch_contacts(conn, [{"host": host, **r} for r in outward])

    def _touch_contacts(self, conn: Connection, rows: list[dict[str, Any]]) -> None:
        """(program, destination) pairs: new ones recorded with their first ts (an earlier one
        arriving late moves it back), known ones' last_seen moved on hourly, so retention keeps
        the pairs still in use."""
        due: dict[tuple[str, str, str], tuple[float, float]] = {}
        for r in rows:
            contact, ts = (r["host"], r["exe"], r["address"]), float(r["ts"])
            first, last = due.get(contact) or self._contacts.get(contact) or (None, None)
            if first is None or last is None:
                due[contact] = (ts, ts)
            elif ts < first or ts - last >= REFRESH_S:
                due[contact] = (min(first, ts), max(last, ts))
        if due:
            self.store.touch_contacts(conn, [(h, e, a, first, last) for (h, e, a), (first, last) in due.items()])
            for contact, seen in due.items():
                self._contacts[contact] = seen

    def _remember_processes(self, conn: Connection, fresh: list[Event]) -> None:
        """Each process's user, command line and container, written once (and hourly), not per sample."""
        rows: dict[tuple[str, int, str], dict[str, Any]] = {}
        for ev in fresh:
            d = ev.data
            procs: list[ProcessFields] = []
            if isinstance(d, EgressSample):
                procs = list(d.processes)
            elif isinstance(d, ThresholdCrossed):
                procs = [d.process]
            elif isinstance(d, ProcessFields):
                procs = [d]
            for p in procs:
                if p.pid is None:
                    continue
                exe = p.exe or ""
                key = (ev.host, p.pid, exe, p.start_time, p.user, len(p.cmdline))
                last = self._processes.get(key)
                if last is not None and 0 <= ev.ts - last < REFRESH_S:
                    continue
                self._processes[key] = ev.ts
                rows[(ev.host, p.pid, exe)] = {
                    "host": ev.host, "pid": p.pid, "exe": exe, "ppid": p.ppid, "name": p.name, "uid": p.uid,
                    "user_name": p.user, "cmdline": json.dumps(list(p.cmdline)) if p.cmdline else None,
                    "cgroup": p.cgroup, "container": p.container.model_dump_json(exclude_none=True)
                    if p.container else None, "start_time": p.start_time, "ts": ev.ts}
        self.store.upsert_processes(conn, list(rows.values()))

    # -- the slow path: event by event ------------------------------------------------

    def _ingest_each(self, batch: list[tuple[str, bytes]], poison: dict[int, str]) -> dict[str, int]:
        """The batch again, one savepoint per event; an event that cannot be stored even without its
        correlation becomes a dead letter. ``poison``: events already known to fail."""
        now = self.clock()
        codes: Counter[str] = Counter()
        self._batch_hosts = []
        with self.store.tx() as conn:
            seen: set[str] = set()
            for index, (topic, payload) in enumerate(batch):
                checked = self._validate(topic, payload, now) if index not in poison else \
                    Rejection(poison[index], "rejected_store")
                if isinstance(checked, Rejection):
                    self.store.dead_letters(conn, [(topic, checked.reason, payload, checked.code)], now)
                    codes[checked.code] += 1
                    codes["rejected"] += 1
                    continue
                ev = checked
                if ev.id in seen or self.store.existing_ids(conn, [ev.id]):
                    codes["duplicates"] += 1
                    continue
                seen.add(ev.id)
                refused = self._store_one(conn, index, ev, now, codes)
                if refused is None:
                    codes["stored"] += 1
                else:
                    self.store.dead_letters(conn, [(topic, f"cannot be stored: {refused}", payload, "rejected_store")],
                                            now)
                    codes["rejected_store"] += 1
                    codes["rejected"] += 1
            self._count(conn, codes)
        self._committed()
        return {"stored": codes["stored"], "duplicates": codes["duplicates"], "rejected": codes["rejected"]}

    def _store_one(self, conn: Connection, index: int, ev: Event, now: float, codes: Counter[str]) -> str | None:
        """With its correlation if possible, else alone (counted as a correlation error), else not at
        all: then the database's reason."""
        error: BaseException | None = None
        hosts_before = len(self._batch_hosts)
        for with_correlation in (True, False):
            del self._batch_hosts[hosts_before:]  # a rolled-back attempt touched no host
            try:
                with conn.begin_nested():
                    self.store.insert_events(conn, [ev], now)
                    if with_correlation:
                        self._remember_processes(conn, [ev])
                        self.record_batch(conn, [ev], now, codes)
                if error is not None:
                    codes["correlation_errors"] += 1
                    self.errors.append(f"{ev.type} {ev.id}: {describe(error)}")
                return None
            except Exception as exc:  # noqa: BLE001 - classified: the database's fault goes up
                if isinstance(exc, OperationalError) or self.store.is_outage(exc):
                    raise _EventFailed(index, exc) from exc
                error = exc
        del self._batch_hosts[hosts_before:]
        return describe(error) if error is not None else "unknown"

    def _dead_letter_all(self, batch: list[tuple[str, bytes]], reason: str) -> dict[str, int]:
        """Last resort, when even event by event fails outside the savepoints: keep the batch's
        messages as dead letters (reason given), so the collector moves on."""
        now = self.clock()
        with self.store.tx() as conn:
            self.store.dead_letters(conn, [(t, reason, p, "rejected_store") for t, p in batch], now)
            self._count(conn, Counter(rejected=len(batch), rejected_store=len(batch)))
        self.errors.append(f"batch of {len(batch)} dead-lettered: {reason}")
        return {"stored": 0, "duplicates": 0, "rejected": len(batch)}


class _SlowTotals:
    """Per (host, destination): what the database holds in the slow window (asked once per batch),
    plus this batch's rows seen so far."""

    def __init__(self, store: Store, conn: Connection, window_s: float) -> None:
        self.store, self.conn, self.window_s = store, conn, window_s
        self.stored: dict[tuple[str, str], tuple[int, float, float]] = {}
        self.pending: dict[tuple[str, str], list[float]] = {}

    def add(self, host: str, outward: list[dict[str, Any]]) -> None:
        for r in outward:
            acc = self.pending.setdefault((host, r["address"]), [0, r["ts"], r["ts"]])
            acc[0] += r["bytes"]
            acc[1], acc[2] = min(acc[1], r["ts"]), max(acc[2], r["ts"])

    def total(self, host: str, address: str, ts: float) -> tuple[int, float, float]:
        key = (host, address)
        if key not in self.stored:
            self.stored[key] = self.store.egress_total(self.conn, host, "address", address, ts - self.window_s)
        sent, first, last = self.stored[key]
        extra, low, high = self.pending.get(key, [0, ts, ts])
        if not sent:
            first, last = low, high
        return sent + int(extra), min(first, low), max(last, high)


def egress_bps(data: EgressSample) -> float:
    """The host's egress rate in a sample: all interfaces' bytes over the interval."""
    wire = sum(i.tx_bytes for i in data.interfaces)
    return wire * 8 / max(data.interval_s, 1e-3)


def egress_rows(ev: Event) -> list[dict[str, Any]]:
    """An egress sample's per-destination rows (the model has range-checked every value)."""
    data = ev.data
    if not isinstance(data, EgressSample):
        return []
    interval = max(data.interval_s, 1e-3)
    rows = []
    for proc in data.processes:
        for dest in proc.destinations:
            if dest.tx_bytes == 0:
                continue
            rows.append({"pid": proc.pid, "ppid": proc.ppid, "exe": proc.exe or "", "name": proc.name or "",
                         "uid": proc.uid, "address": dest.address, "port": dest.port,
                         "allowed": int(dest.allowed), "bytes": dest.tx_bytes, "ts": ev.ts,
                         "rate_bps": proc.tx_bytes * 8 / interval, "event_id": ev.id, "pipes": pipe_key(proc.pipes),
                         "dns_name": dest.name, "user_name": proc.user})
    return rows


def pipe_key(pipes: list[int]) -> str | None:
    """Pipe inodes as '|1|2|' so one LIKE finds a shared one."""
    if not pipes:
        return None
    return "|" + "|".join(str(p) for p in pipes[:50]) + "|"


__all__ = ["BatchIngest", "DatabaseAway", "describe", "egress_bps", "egress_rows", "pipe_key"]
