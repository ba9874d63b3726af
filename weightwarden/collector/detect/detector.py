"""The detection engine: store the facts an event carries, ask the rules what they touch, judge it again.

A verdict is always computed from everything stored about its subject (a sender process,
a host's day, a destination's day, a host), never from the event that triggered it, and it
replaces the alert (severity may go down as well as up; an alert the facts no longer support
is withdrawn). So the same facts give the same alerts whatever order they arrived in and
however many collectors shared them. Collectors sharing a database each see part of a story
while it happens; the sweep re-judges whatever arrived lately, with everything committed
by then, so they converge.

The rules themselves are in ``detect/rules/`` (one module each, registered: ``detect/registry.py``);
the engine owns the facts several rules share (egress rows, hand-overs, pipe ends, weight reads,
first contacts) and the order rules are judged in (a rule that reads another's verdicts after it).
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from typing import Any

from sqlalchemy import Connection
from sqlalchemy.exc import OperationalError

from weightwarden.collector.detect import registry
from weightwarden.collector.detect.common import NOWHERE, Draft, Tuning
from weightwarden.collector.detect.facts import egress_rows, pipe_rows, relay_rows, weight_row
from weightwarden.collector.detect.keys import AlertKey
from weightwarden.collector.detect.links import Links
from weightwarden.collector.detect.rule import Lately, Look, Rule, SampleFacts, Units
from weightwarden.collector.store import facts as q
from weightwarden.collector.store import verdicts
from weightwarden.collector.store.database import Store
from weightwarden.collector.store.host_locks import lock_hosts
from weightwarden.collector.store.rows import EgressRow, PipeEndRow, RelayRow
from weightwarden.events import Event, FileAccess, Heartbeat, UnexplainedEgress, WeightHolder, WeightsCopy

REEVALUATE_S = 10.0  # the sweep re-judges what arrived this recently (wall clock): longer than any batch
MAX_LOOKBACK_S = 600.0  # ... and at most this far back since its previous sweep (a new leader's first)
READS_CACHE_S = 5.0
MAX_CACHE = 100_000
CONTACT_REFRESH_S = 3600.0  # a known contact's last_seen is written again this often (retention)
PIPE_REFRESH_S = 3600.0  # a known pipe end is written again this often
MAX_ERRORS = 100
SWEEP_PART_HOSTS = 32  # the sweep judges this many hosts per transaction (each part holds their locks)


def outward(r: EgressRow) -> bool:
    """Bytes that may carry data off the host: not allowlisted, or DNS (store.facts.OUTWARD)."""
    return not r["allowed"] or r["port"] == 53


class Detector:
    """The engine; also the :class:`~rule.Context` each rule is handed."""

    def __init__(self, store: Store, tune: Tuning, clock: Callable[[], float] = time.time,
                 errors: deque[str] | None = None) -> None:
        self.store = store
        self.tune = tune
        self.clock = clock
        self.errors: deque[str] = deque(maxlen=MAX_ERRORS) if errors is None else errors  # the newest only
        self.links = Links(store, tune)
        self.rules: list[Rule[Any]] = registry.configured(tune)
        self.by_name = {r.name: r for r in self.rules}
        # Caches that only skip redundant work; the database stays the truth.
        self._reads: dict[str, tuple[float, bool]] = {}
        self._contacts: dict[tuple[str, str, str], tuple[float, float]] = {}  # (first, last seen)
        self._pipes: dict[tuple[str, int, float | None, str, str], float] = {}
        self._swept: tuple[float, float] = (math.inf, math.inf)  # (wall, clock) the last sweep began at
        self._changed: list[AlertKey] = []  # verdicts written or withdrawn in this evaluation
        self.lag_s = 0.0  # how far behind its inbox the collector is (the service says): silence waits for it

    def forget(self) -> None:
        """After a rolled-back transaction: what the caches learnt inside it may not be stored."""
        self._reads.clear()
        self._contacts.clear()
        self._pipes.clear()
        for rule in self.rules:
            rule.forget()

    def note_error(self, text: str) -> None:
        self.errors.append(text[:500])

    # -- what rules are handed ------------------------------------------------------

    def _collect(self, rule: Rule[Any], touched: Iterable[Hashable | Look], units: Units) -> None:
        for t in touched:
            if isinstance(t, Look):
                units.touch(rule.name, t.subject, t.rows)
            else:
                units.touch(rule.name, t)

    def _ask(self, conn: Connection, units: Units, what: str,
             call: Callable[[Rule[Any]], Iterable[Hashable | Look]]) -> None:
        """Each rule's answer to one hook, into ``units``, each in a savepoint: a rule that fails is
        noted and the others go on (the facts are stored: the sweep asks again). The database being
        away is not a rule's failure: it goes up, and the batch is tried again."""
        base = getattr(Rule, what)
        for rule in self.rules:
            if getattr(type(rule), what) is base:
                continue  # it does not answer this hook: no savepoint for nothing (a round trip each)
            try:
                with conn.begin_nested():
                    self._collect(rule, list(call(rule)), units)
            except Exception as exc:  # noqa: BLE001 - one rule's failure must not stop the others
                if isinstance(exc, OperationalError) or self.store.is_outage(exc):
                    raise
                self.note_error(f"{rule.name} {what}: {exc!r}")

    # -- facts ---------------------------------------------------------------------

    def record_samples(self, conn: Connection, events: list[Event]) -> Units:
        """Every sample's rows, relays, pipe ends and first contacts, written in a few statements;
        unexplained egress is stored as rows no process is named for."""
        rows: list[EgressRow] = []
        relays: list[RelayRow] = []
        pipes: list[PipeEndRow] = []
        for ev in events:  # each row carries its host (the rows are this batch's own)
            for r in egress_rows(ev):
                r["host"] = ev.host
                rows.append(r)
            for relay in relay_rows(ev):
                relay["host"] = ev.host
                relays.append(relay)
            for end in self._new_pipe_ends(ev):
                end["host"] = ev.host
                pipes.append(end)
        self.store.add_egress_rows(conn, rows)
        q.add_relays(conn, relays)
        q.add_pipe_ends(conn, pipes)
        self._first_contacts(conn, rows)
        latest: dict[str, float] = {}
        for host, ts in [*((r["host"], r["ts"]) for r in rows if outward(r)), *((r["host"], r["ts"]) for r in relays),
                         *((r["host"], r["ts"]) for r in pipes)]:
            latest[host] = max(latest.get(host, 0.0), float(ts))
        facts = SampleFacts(rows, relays, self.hosts_with_reads(conn, latest), pipes, events)
        units = Units()
        now = self.clock()
        self._ask(conn, units, "on_samples", lambda rule: rule.on_samples(self, conn, facts, now))
        return units

    def _new_pipe_ends(self, ev: Event) -> list[PipeEndRow]:
        """A sample's pipe ends not written lately (a sender reading a pipe is in every sample it sends in)."""
        out = []
        for r in pipe_rows(ev):
            key = (ev.host, r["pid"], r["start_time"], r["inode"], r["side"])
            last = self._pipes.get(key)
            if last is None or not 0 <= float(r["ts"]) - last < PIPE_REFRESH_S:
                if len(self._pipes) > MAX_CACHE:
                    self._pipes.clear()
                self._pipes[key] = float(r["ts"])
                out.append(r)
        return out

    def _first_contacts(self, conn: Connection, rows: list[EgressRow]) -> None:
        """(program, destination) pairs: new ones recorded with their first send (an earlier one
        arriving late moves it back: the minimum, not the first to arrive, so the answer does not
        depend on arrival order); known ones' last_seen moved on hourly, so retention keeps pairs in use."""
        span: dict[tuple[str, str, str], tuple[float, float]] = {}
        for r in rows:
            # Replies to clients (accepted) are not contacts the program made.
            if outward(r) and r["accepted"] != 1 and r["pid"] > 0 and r["address"] not in NOWHERE:
                key = (r["host"], r["exe"] or "", r["address"])
                first, last = float(r["first_ts"]), float(r["ts"])
                lo, hi = span.get(key, (first, last))
                span[key] = (min(lo, first), max(hi, last))
        due: list[tuple[str, str, str, float, float]] = []
        for key, (first, last) in span.items():
            known = self._contacts.get(key)
            if known is None or first < known[0] or last - known[1] >= CONTACT_REFRESH_S:
                due.append((*key, first, last))
        self.store.touch_contacts(conn, due)
        if len(self._contacts) > MAX_CACHE:
            self._contacts.clear()
        for host, exe, address, first, last in due:
            known = self._contacts.get((host, exe, address))
            self._contacts[(host, exe, address)] = (min(first, known[0]) if known else first, last)

    def record_weights(self, conn: Connection, ev: Event, data: FileAccess | WeightHolder | WeightsCopy,
                       now: float) -> Units:
        row = weight_row(ev, data)
        before = q.read_as_stored(conn, ev.host, row)
        self.store.add_read(conn, ev.host, row)
        self._reads[ev.host] = (time.monotonic() + READS_CACHE_S, True)
        grew = before is None or int(before["bytes"]) < int(row["bytes"]) or \
            int(before["size"] or 0) < int(row["size"] or 0)
        units = Units()
        self._ask(conn, units, "on_reads", lambda rule: rule.on_reads(self, conn, ev.host, row, grew, now))
        return units

    def on_event(self, conn: Connection, ev: Event, now: float) -> Units:
        """An event's facts are stored: the rules that decide events of its type have their say."""
        units = Units()
        if isinstance(ev.data, UnexplainedEgress):
            units.add(self.record_samples(conn, [ev]))
        subscribed = [r for r in self.rules if isinstance(ev.data, r.events)]
        for rule in subscribed:  # not _ask: a failure here is the event's correlation error, counted by the caller
            self._collect(rule, rule.on_event(self, conn, ev, now), units)
        return units

    def on_heartbeats(self, conn: Connection, events: list[Event], now: float) -> Units:
        """A batch's heartbeats, all at once (thousands of hosts beat every few seconds)."""
        beats = [ev for ev in events if isinstance(ev.data, Heartbeat)]
        units = Units()
        if beats:
            self._ask(conn, units, "on_heartbeats", lambda rule: rule.on_heartbeats(self, conn, beats, now))
        return units

    def weights_changed(self, conn: Connection, host: str) -> Units:
        """The host's weights size changed: verdicts that quote it are judged again."""
        units = Units()
        for rule in self.rules:
            if rule.quotes_weights:
                for key in self.keys_of(conn, rule.name, host):
                    subject = rule.subject(key)
                    if subject is not None:
                        units.touch(rule.name, subject)
        return units

    def hosts_with_reads(self, conn: Connection, latest: dict[str, float]) -> set[str]:
        """Which of these hosts (with their latest fact's time) have weight reads a link could reach:
        cached answers, then one query for the rest (most samples come from hosts that read nothing)."""
        mono = time.monotonic()
        out: set[str] = set()
        ask: dict[str, float] = {}
        for host, ts in latest.items():
            until, answer = self._reads.get(host, (0.0, False))
            if mono < until:
                if answer:
                    out.add(host)
            else:
                ask[host] = ts
        if ask:
            # One look-back for all: a longer one for some host can only say "yes" more often (more checks).
            found = q.hosts_with_reads(conn, sorted(ask), min(ask.values()) - self.tune.link_window_s)
            if len(self._reads) > MAX_CACHE:
                self._reads.clear()
            for host in ask:
                self._reads[host] = (mono + READS_CACHE_S, host in found)
            out |= found
        return out

    # -- verdicts ---------------------------------------------------------------------

    def evaluate(self, conn: Connection, units: Units, now: float) -> int:
        """Judge every touched subject, rule by rule (a rule after the rules whose verdicts it reads),
        each subject in its own savepoint; returns how many failed.

        On PostgreSQL the judgement locks of the hosts judged are taken first, in key order, and held to the
        commit (``store.host_locks``): a collector judging one of them now waits, then reads what this one
        committed, so the verdict written last is judged from both collectors' facts. A lock wait ending in
        a deadlock goes up (the batch is tried again), not to one rule's account."""
        failed = 0
        self._changed = []
        held: set[int] = set()
        lock_hosts(conn, self.hosts_of(units), held)
        for rule in self.rules:
            if rule.after:
                changed = [k for k in self._changed if k.rule in rule.after]
                if changed:
                    try:
                        self._collect(rule, rule.on_verdicts(self, conn, changed, now), units)
                    except Exception as exc:  # noqa: BLE001
                        failed += 1
                        self.note_error(f"{rule.name} on_verdicts: {exc!r}")
            subjects = units.of(rule.name)
            if not subjects:
                continue
            lock_hosts(conn, (rule.host_of(s) for s in subjects), held)  # hosts on_verdicts added, if any
            try:
                failed += rule.judge_many(self, conn, dict(subjects), now)
            except Exception as exc:  # noqa: BLE001 - a rule that fails as a whole is counted; the others go on
                failed += 1
                self.note_error(f"{rule.name} ({len(subjects)} subjects): {exc!r}")
        return failed

    def hosts_of(self, units: Units) -> Iterator[str]:
        """The hosts whose verdicts judging ``units`` writes (repeats included)."""
        return (self.by_name[name].host_of(s) for name, subjects in units.by_rule.items() for s in subjects)

    def put(self, conn: Connection, draft: Draft | None, now: float) -> bool:
        """Write a verdict; True if the stored alert changed."""
        if draft is None:
            return False
        if draft.mode == "event":
            verdicts.put_event_alert(conn, draft.to_row(), draft.order, now)
            changed = True
        else:
            changed = verdicts.put_alert(conn, draft.to_row(), now)
        if changed:
            self._changed.append(draft.key)
        return changed

    def withdraw(self, conn: Connection, keys: Sequence[AlertKey], now: float) -> int:
        gone = verdicts.withdraw(conn, [str(k) for k in keys], now)
        if gone:
            self._changed.extend(keys)
        return gone

    def resolve(self, conn: Connection, key: AlertKey, why: str, now: float, open_: bool = False,
                reopen_after: float | None = None) -> bool:
        """Resolve (or, ``open_``, reopen) an alert as the facts say."""
        return verdicts.set_auto_state(conn, str(key), open_, why, now, reopen_after)

    def keys_of(self, conn: Connection, rule: str, host: str, *parts: str) -> list[AlertKey]:
        """The stored keys of a rule's alerts on a host (whose parts begin with ``parts``)."""
        prefix = str(AlertKey(rule, host, parts))
        out = set()
        for text_ in verdicts.alert_keys(conn, host, prefix):
            key = AlertKey.parse(text_, host)
            if key is not None and key.rule == rule and key.parts[:len(parts)] == parts:
                out.add(key)
        return sorted(out)

    # -- the sweep -----------------------------------------------------------------------

    def sweep(self, now: float) -> int:
        """Re-judge what arrived lately (in this collector or another), and verdicts written lately."""
        wall = time.time()
        # Lately: since the previous sweep began, less the longest a transaction takes. A slow sweep
        # is followed by a longer pause (SWEEP_PAUSE), and a fixed window would leave a gap no sweep
        # looks at: a verdict written from an old snapshot in it would stand.
        lately = Lately(max(min(wall, self._swept[0]), wall - MAX_LOOKBACK_S) - REEVALUATE_S,
                        max(min(now, self._swept[1]), now - MAX_LOOKBACK_S) - REEVALUATE_S, wall)
        with self.store.tx() as conn:
            units = Units()
            self._ask(conn, units, "on_sweep", lambda rule: rule.on_sweep(self, conn, lately, now))
            # Verdicts written lately are judged once more with everything committed by now: a collector
            # that judged from a snapshot missing another's facts, and committed after that other's
            # verdict, must not leave its older view standing. A verdict that holds writes nothing.
            renewing = [r.name for r in self.rules if r.renew_lately]
            for text_, host in verdicts.alerts_updated_since(conn, lately.since_now, renewing):
                key = AlertKey.parse(text_, host)
                rule = self.by_name.get(key.rule) if key is not None else None
                subject = rule.subject(key) if rule is not None and key is not None else None
                if rule is not None and subject is not None:
                    units.touch(rule.name, subject)
        failed = 0
        # Judged a few hosts at a time, each part in a transaction of its own: the hosts' judgement locks
        # (PostgreSQL) are held for one part, not for the whole sweep, so ingest judging one of them waits
        # for a part at most. A host's subjects stay together (a rule reads another's verdicts on the host).
        for part in self.by_hosts(units, SWEEP_PART_HOSTS):
            with self.store.tx() as conn:
                failed += self.evaluate(conn, part, now)
        self._swept = (wall, now)  # only once it is done: a failed sweep's span is looked at again
        return failed

    def by_hosts(self, units: Units, size: int) -> list[Units]:
        """``units`` split into parts of at most ``size`` hosts each (in host order)."""
        of_host: dict[str, Units] = {}
        for name, subjects in units.by_rule.items():
            for s, rows in subjects.items():
                of_host.setdefault(self.by_name[name].host_of(s), Units()).touch(name, s, rows)
        hosts = sorted(of_host)
        parts = []
        for i in range(0, len(hosts), size):
            part = Units()
            for h in hosts[i:i + size]:
                part.add(of_host[h])
            parts.append(part)
        return parts


__all__ = ["Detector", "Units", "outward"]
