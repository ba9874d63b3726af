"""The ingest half of the pipeline: a batch of MQTT messages in, stored events out.

One batch is one transaction. Validation runs first, outside it (no lock
held while parsing). Egress samples, the bulk of traffic, are written with a
few bulk statements for the whole batch (the detector's ``record_samples``),
as are heartbeats that change nothing but the host's row; every other event
goes through ``Pipeline.apply`` in its own savepoint. Then the detector judges
again whatever the batch's facts touch.

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

from sqlalchemy import Connection, text
from sqlalchemy.exc import DBAPIError, OperationalError

from weightwarden.collector.detect.common import Tuning
from weightwarden.collector.detect.detector import Detector, Units
from weightwarden.collector.ingest.bounded import BoundedDict
from weightwarden.collector.ingest.validate import Rejection, count_backdated, validate
from weightwarden.collector.store import bulk
from weightwarden.collector.store.database import Store
from weightwarden.collector.store.host_rows import HostTouch, ProcessRow
from weightwarden.events import (
    EgressSample,
    Event,
    Heartbeat,
    ProcessFields,
    ThresholdCrossed,
)

REFRESH_S = 3600.0  # a known process is written again this often (its last_seen, for retention)
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
    """Mixed into Pipeline, which provides ``apply`` (one event's facts) and ``detector``."""

    store: Store
    tune: Tuning
    clock: Callable[[], float]
    detector: Detector
    # Whose counters these are (a collector's client id): each collector adds to rows of its own.
    counter_part: str = ""
    # Host rows written by flush_hosts() rather than in each batch (the service's mode).
    defer_hosts: bool = False
    # Other collectors store into the same database (a shared subscription): what this one learnt of a
    # host's absence of weight reads may be out of date at the next batch.
    shared: bool = False

    def _init_caches(self) -> None:
        self._batch_hosts: list[HostTouch] = []
        self._pending_hosts: list[HostTouch] = []
        self._pending_lock = threading.Lock()
        self.errors: deque[str] = deque(maxlen=ERRORS_KEPT)
        # Where the last batch's time went (seconds): parse, store (events and facts), judge, commit.
        self.timing: dict[str, float] = {}
        self.conflicts = 0  # batches retried whole after a serialization failure or a deadlock
        # A per-collector cache that only skips redundant work; the database stays the truth.
        self._processes: BoundedDict[tuple[str, int, str, float | None, str | None, int], float] = BoundedDict(CACHE_LIMIT)

    def _forget(self) -> None:
        """After a rollback: what the caches learnt inside it may never have been stored."""
        self._processes.clear()
        self.detector.forget()

    def apply(self, conn: Connection, ev: Event, now: float) -> Units:
        raise NotImplementedError

    # -- entry ---------------------------------------------------------------

    def ingest(self, messages: Iterable[tuple[str, bytes]]) -> dict[str, int]:
        """Store one batch; returns {stored, duplicates, rejected}. Raises DatabaseAway only."""
        batch = list(messages)
        for attempt in range(1, CONFLICT_RETRIES + 1):
            try:
                counts = self._ingest(batch)
                self.timing["conflicts"] = attempt - 1
                return counts
            except Exception as exc:  # noqa: BLE001 - classified below; nothing else escapes
                self._forget()
                if _conflict(exc) and attempt < CONFLICT_RETRIES:
                    self.conflicts += 1
                    self.errors.append(f"batch of {len(batch)}: {describe(exc)}; retrying it")
                    continue
                if self.store.transient(exc):
                    raise DatabaseAway(describe(exc)) from exc
                self.errors.append(f"batch of {len(batch)}: {describe(exc)}; storing it event by event")
                break
        poison: dict[int, str] = {}
        conflicts = 0
        while True:
            try:
                return self._ingest_each(batch, poison)
            except _EventFailed as failed:
                self._forget()
                if _conflict(failed.exc) and conflicts < CONFLICT_RETRIES:
                    # Another collector's transaction, not this event (a deadlock over a host's judgement
                    # lock or a row): the same again, not a dead letter.
                    conflicts += 1
                    self.conflicts += 1
                    continue
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
        began = time.monotonic()
        if self.shared:
            self._forget_absent_reads()
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
        self.timing = {"parse": time.monotonic() - began, "judge": 0.0}
        with self.store.tx() as conn:
            self.store.dead_letters(conn, rejected, now)
            fresh = self._fresh(conn, valid, codes)
            self.store.insert_events(conn, fresh, now)
            self.record_batch(conn, fresh, now, codes)
            # Rows other collectors write too come last, so their locks are held only until the commit.
            self._remember_processes(conn, fresh)
            codes.update(stored=len(fresh), rejected=len(rejected))
            self._count(conn, codes)
            committing = time.monotonic()
        done = time.monotonic()
        self.timing.update(commit=done - committing)
        self.timing["store"] = done - began - sum(self.timing.values())
        self._committed()
        return {"stored": codes["stored"], "duplicates": codes["duplicates"], "rejected": codes["rejected"]}

    def _forget_absent_reads(self) -> None:
        """With a shared subscription a host's weight read and its upload often reach different collectors:
        the one holding the upload must not judge it on a "no reads on this host" learnt before the other
        stored the read (the detector keeps that answer for seconds), or only the sweep would link them,
        seconds later. The detector asks again (one statement a batch for the hosts it does not know to
        have reads); what it knows of reads that exist stays."""
        known = self.detector._reads  # noqa: SLF001 - the detector's cache of hosts_with_reads answers
        for host in [h for h, (_until, has) in known.items() if not has]:
            del known[host]

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
        """The facts of stored events, then what they touch judged again. Samples are written
        together (the detector's few statements); other events one by one, each in a savepoint (a
        correlation that fails is counted, the event kept). Database errors go up: the batch is retried."""
        codes["backdated"] += count_backdated(fresh, now)  # flagged, stored, judged (validate.BACKDATED_S)
        samples = [ev for ev in fresh if isinstance(ev.data, EgressSample)]
        others = sorted((ev for ev in fresh if not isinstance(ev.data, EgressSample)), key=lambda e: (e.ts, e.seq))
        heartbeats = [ev for ev in others if isinstance(ev.data, Heartbeat)]
        beats, others = self._plain_heartbeats(conn, others)
        hosts: list[HostTouch] = []
        for ev in samples:
            assert isinstance(ev.data, EgressSample)
            hosts.append({"host": ev.host, "seq": ev.seq, "ts": ev.ts, "egress_bps": egress_bps(ev.data)})
        hosts += beats
        units = self.detector.record_samples(conn, samples)
        units.add(self.detector.on_heartbeats(conn, heartbeats, now))
        for ev in others:
            try:
                with conn.begin_nested():
                    units.add(self.apply(conn, ev, now))
            except Exception as exc:  # noqa: BLE001 - the event is kept; its correlation failure is counted
                if isinstance(exc, OperationalError) or self.store.is_outage(exc):
                    raise  # the database, not the event: the whole batch again, later
                codes["correlation_errors"] += 1
                self.errors.append(f"{ev.type} {ev.id}: {describe(exc)}")
        judging = time.monotonic()
        failed = self.detector.evaluate(conn, units, now)
        self.timing["judge"] = self.timing.get("judge", 0.0) + time.monotonic() - judging
        if failed:
            codes["correlation_errors"] += failed
        # Host rows other collectors update too, last (their locks are held only until the commit), in
        # one statement in key order (two collectors never wait for each other in a cycle).
        host_rows: list[HostTouch] = []
        for h in sorted(hosts, key=lambda r: (r.get("ts", 0.0), r["seq"])):
            row = h.copy()
            row.pop("ts", None)
            host_rows.append(row)
        if self.defer_hosts:
            # The service's mode: every batch would update the same host rows as every other collector's
            # batch; written once a second instead (flush_hosts), they never hold a batch up.
            self._batch_hosts += host_rows
        else:
            self.store.touch_hosts(conn, host_rows, now)

    def _plain_heartbeats(self, conn: Connection, events: list[Event]) -> tuple[list[HostTouch], list[Event]]:
        """Heartbeats of known hosts only update the host's row, exactly as ``apply`` would (its fields,
        the host online): one statement for the batch; the rules see them all at once
        (``Detector.on_heartbeats``: an agent back, the sensor's state). A heartbeat that changes the
        host's weights size goes through ``apply``, which judges again the verdicts that quote it."""
        beats = [ev for ev in events if isinstance(ev.data, Heartbeat)]
        if not beats:
            return [], events
        cond, params = bulk.in_list(conn, sorted({ev.host for ev in beats}))
        known = {r[0]: (r[1], int(r[2] or 0)) for r in conn.execute(
            text(f"SELECT host, status, weights_bytes FROM hosts WHERE host {cond}"), params)}

        def plain(ev: Event) -> bool:
            d = ev.data
            if not isinstance(d, Heartbeat) or ev.host not in known:
                return False
            # A new weights total re-judges the host's verdicts that quote it: that is apply's work.
            return d.weights is None or not d.weights.total_bytes or d.weights.total_bytes == known[ev.host][1]

        rows: list[HostTouch] = []
        rest = [ev for ev in events if not plain(ev)]
        for ev in beats:
            d = ev.data
            if not plain(ev) or not isinstance(d, Heartbeat):
                continue
            rows.append({"host": ev.host, "seq": ev.seq, "ts": ev.ts, "policy": d.policy,
                         "policy_digest": d.policy_digest, "backend": d.backend,
                         "rules_in_force": int(d.rules_in_force), "caps": d.caps, "last_heartbeat": ev.ts})
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

    def _remember_processes(self, conn: Connection, fresh: list[Event]) -> None:
        """Each process's user, command line and container, written once (and hourly), not per sample."""
        rows: dict[tuple[str, int, str], ProcessRow] = {}
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


def egress_bps(data: EgressSample) -> float:
    """The host's egress rate in a sample: all interfaces' bytes over the interval."""
    wire = sum(i.tx_bytes for i in data.interfaces)
    return wire * 8 / max(data.interval_s, 1e-3)


__all__ = ["BatchIngest", "DatabaseAway", "describe", "egress_bps"]
