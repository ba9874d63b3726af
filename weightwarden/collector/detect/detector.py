"""The detection flow: store the facts an event carries, then re-judge what those facts touch.

A verdict is always computed from everything stored about its subject (a sender process,
a host's day, a destination's day), never from the event that triggered it, and it
replaces the alert (severity may go down as well as up; an alert the facts no longer support
is withdrawn). So the same facts give the same alerts whatever order they arrived in and
however many collectors shared them. Collectors sharing a database each see part of a story
while it happens; the sweep re-judges whatever arrived lately, with everything committed
by then, so they converge.
"""

from __future__ import annotations

import json
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection

from weightwarden.collector.store import facts as q
from weightwarden.collector.detect.common import (
    OTHER, UNOWNED, Draft, Tuning, bucket, day_of, day_start, same_process,
)
from weightwarden.collector.detect.facts import egress_rows, parse_pipes, relay_rows, weight_row
from weightwarden.collector.detect.host import host_exfiltration
from weightwarden.collector.detect.sender import Link, exfiltration, worth_judging
from weightwarden.collector.detect.single import from_event
from weightwarden.collector.detect.slow import SlowWindow, slow, slow_peak
from weightwarden.collector.store.database import Store
from weightwarden.events import Event, FileAccess, WeightHolder, WeightsCopy

REEVALUATE_S = 10.0  # the sweep re-judges what arrived this recently (wall clock): longer than any batch
MAX_LOOKBACK_S = 600.0  # ... and at most this far back since its previous sweep (a new leader's first)
READS_CACHE_S = 5.0
SLOW_EVERY_S = 60.0  # a destination under a steady trickle is re-judged at most this often...
SLOW_SETTLE_S = 3.0  # ...and once more when its facts stop
MAX_CONTACTS = 100_000
CONTACT_REFRESH_S = 3600.0  # a known contact's last_seen is written again this often (retention)
MAX_ERRORS = 100


@dataclass
class Units:
    """What new facts touch: senders to judge in full (their links may have changed), senders to
    look at first (new rows of their own: ``checks``), host-days, destination-days."""

    senders: set[tuple[str, int]] = field(default_factory=set)
    checks: dict[tuple[str, int], list[dict[str, Any]]] = field(default_factory=dict)
    host_days: set[tuple[str, str]] = field(default_factory=set)
    slow: set[tuple[str, str, str]] = field(default_factory=set)

    def add(self, other: Units) -> None:
        self.senders |= other.senders
        for k, rows in other.checks.items():
            self.checks.setdefault(k, []).extend(rows)
        self.host_days |= other.host_days
        self.slow |= other.slow

    def __bool__(self) -> bool:
        return bool(self.senders or self.checks or self.host_days or self.slow)


def _outward(r: dict[str, Any]) -> bool:
    return not r["allowed"] or r["port"] == 53


class Detector:
    def __init__(self, store: Store, tune: Tuning, clock: Callable[[], float] = time.time,
                 errors: deque[str] | None = None) -> None:
        self.store = store
        self.tune = tune
        self.clock = clock
        self.errors: deque[str] = deque(maxlen=MAX_ERRORS) if errors is None else errors  # the newest only
        # Caches that only skip redundant work; the database stays the truth.
        self._reads: dict[str, tuple[float, bool]] = {}
        self._contacts: dict[tuple[str, str, str], tuple[float, float]] = {}  # (first, last seen)
        self._slow_done: dict[tuple[str, str, str], float] = {}
        self._swept: tuple[float, float] = (math.inf, math.inf)  # (wall, clock) the last sweep began at

    def forget(self) -> None:
        """After a rolled-back transaction: what the caches learnt inside it may not be stored."""
        self._reads.clear()
        self._contacts.clear()

    # -- facts ---------------------------------------------------------------------

    def record_samples(self, conn: Connection, events: list[Event]) -> Units:
        """Every sample's rows, relays and first contacts, written in a few statements."""
        rows: list[dict[str, Any]] = []
        relays: list[dict[str, Any]] = []
        for ev in events:
            rows.extend({"host": ev.host, **r} for r in egress_rows(ev))
            relays.extend({"host": ev.host, **r} for r in relay_rows(ev))
        self.store.add_egress_rows(conn, rows)
        q.add_relays(conn, relays)
        self._first_contacts(conn, rows)
        units = Units()
        now = self.clock()
        for r in rows:
            if _outward(r) and r["accepted"] != 1 and r["address"] not in (OTHER, UNOWNED):
                for day in self._slow_days(float(r["ts"]), float(r["ts"])):
                    if now - self._slow_done.get((r["host"], r["address"], day), -1e18) >= SLOW_EVERY_S:
                        units.slow.add((r["host"], r["address"], day))
        # Per host, once (a batch holds thousands of hosts' samples): outward rows and hand-overs.
        by_host: dict[str, tuple[list[dict[str, Any]], list[dict[str, Any]]]] = {}
        for r in rows:
            if _outward(r):
                by_host.setdefault(r["host"], ([], []))[0].append(r)
        for r in relays:
            by_host.setdefault(r["host"], ([], []))[1].append(r)
        with_reads = self._hosts_with_reads(conn, {h: max(r["ts"] for r in m + hd) for h, (m, hd) in by_host.items()})
        for host in sorted(with_reads):
            mine, handed = by_host[host]
            for r in mine:
                if r["pid"] > 0:
                    units.checks.setdefault((host, int(r["pid"])), []).append(r)
            if handed:  # a hand-over is a new link, for its receiver and for whoever that one hands on to
                first = min(float(r["first_ts"]) for r in handed)
                units.senders |= {(host, p) for p in self._downstream(conn, host, {int(r["dst_pid"]) for r in handed}, first)}
            units.host_days |= {(host, d) for r in mine for d in self._days(float(r["ts"]), float(r["ts"]))}
        return units

    def _first_contacts(self, conn: Connection, rows: list[dict[str, Any]]) -> None:
        """(program, destination) pairs: new ones recorded with their first send (an earlier one
        arriving late moves it back: the minimum, not the first to arrive, so the answer does not
        depend on arrival order); known ones' last_seen moved on hourly, so retention keeps pairs in use."""
        span: dict[tuple[str, str, str], tuple[float, float]] = {}
        for r in rows:
            # Replies to clients (accepted) are not contacts the program made.
            if _outward(r) and r["accepted"] != 1 and r["pid"] > 0 and r["address"] not in (OTHER, UNOWNED):
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
        if len(self._contacts) > MAX_CONTACTS:
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
        if isinstance(data, WeightsCopy):
            self.put(conn, from_event(ev, self.tune), now)  # a copy onto network storage has left already
        first, last = float(row["first_ts"]), float(row["ts"])
        units = Units()
        if before is None or int(before["bytes"]) < int(row["bytes"]) or int(before["size"] or 0) < int(row["size"] or 0):
            # Anyone who sent after this read began may have had the weights from it.
            units.senders = {(ev.host, pid) for pid in q.outward_senders(conn, ev.host, first - 1)}
        if row["kind"] in ("read", "staged_read"):
            units.host_days = {(ev.host, d) for d in self._days(first, last + self.tune.host_window_s)}
        return units

    @staticmethod
    def weights_changed(conn: Connection, host: str) -> Units:
        """The host's weights size changed: verdicts that quote it are judged again."""
        units = Units()
        for key in q.alert_keys(conn, host, f"exfiltration:{host}:") + q.alert_keys(conn, host, f"slow:{host}:"):
            _judge_again(units, key, host)
        return units

    def _downstream(self, conn: Connection, host: str, pids: set[int], first: float) -> set[int]:
        """``pids`` and every process they handed bytes on to, up to the relay depth: a hand-over that
        arrives after the later ones down its chain changes the verdict of the chain's last sender."""
        since = first - self.tune.link_window_s
        out, frontier = set(pids), set(pids)
        for _ in range(self.tune.relay_depth):
            frontier = {t for p in sorted(frontier) for t in q.relay_targets(conn, host, p, since)} - out
            if not frontier:
                break
            out |= frontier
        return out

    def _days(self, lo: float, hi: float) -> set[str]:
        """The days whose windows contain times in [lo, hi] (a window starting the day before may)."""
        width = self.tune.burst_s
        first, last = bucket(lo, width) - 2, bucket(hi, width) + 1
        last = min(last, first + int(8 * 86400 // width))  # a read open for weeks: its first week
        return {day_of(k * width) for k in range(first, last + 1)}

    def _slow_days(self, first: float, last: float) -> set[str]:
        """The days whose slow windows (ending in that day) hold bytes sent in [first, last]."""
        return {day_of(first), day_of(last), day_of(last + self.tune.slow_window_s - 3600)}

    def _hosts_with_reads(self, conn: Connection, latest: dict[str, float]) -> set[str]:
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
            if len(self._reads) > MAX_CONTACTS:
                self._reads.clear()
            for host in ask:
                self._reads[host] = (mono + READS_CACHE_S, host in found)
            out |= found
        return out

    # -- verdicts ---------------------------------------------------------------------

    def evaluate(self, conn: Connection, units: Units, now: float) -> int:
        """Judge every touched subject, each in its own savepoint; returns how many failed."""
        failed = 0
        checks = {k: rows for k, rows in units.checks.items() if k not in units.senders}
        jobs: list[tuple[Callable[..., None], tuple[Any, ...]]] = (
            [(self.evaluate_sender, u) for u in sorted(units.senders)]
            + [(self.check_sender, (*k, checks[k])) for k in sorted(checks)]
            + [(self.evaluate_host_day, u) for u in sorted(units.host_days)]
            + [(self.write_slow, u) for u in self._judged_slow(conn, sorted(units.slow))])
        if len(self._slow_done) > MAX_CONTACTS:
            self._slow_done.clear()
        for unit in units.slow:
            self._slow_done[unit] = self.clock()
        for fn, args in jobs:
            try:
                with conn.begin_nested():
                    fn(conn, *args, now)
            except Exception as exc:  # noqa: BLE001 - one subject's odd facts must not stop the others
                failed += 1
                self.note_error(f"{fn.__name__}{args[:3]}: {exc!r}")
        return failed

    def note_error(self, text: str) -> None:
        self.errors.append(text[:500])

    def put(self, conn: Connection, draft: Draft | None, now: float) -> None:
        if draft is None:
            return
        if draft.mode == "event":
            q.put_event_alert(conn, draft.to_row(), draft.order, now)
        else:
            q.put_alert(conn, draft.to_row(), now)

    def check_sender(self, conn: Connection, host: str, pid: int, new: list[dict[str, Any]], now: float) -> None:
        """New rows of a sender whose links did not change: judge it in full only if they could
        change its verdict (it has an alert, or the windows around them could make one). A server
        answering its clients costs a few indexed lookups per sample, not a scan of its history."""
        base = f"exfiltration:{host}:{pid}"
        if any(k == base or k.startswith(base + ":") for k in q.alert_keys(conn, host, base)):
            self.evaluate_sender(conn, host, pid, now)
            return
        width = self.tune.burst_s
        for start, mine in _identities(new):
            sender, lo, hi, links = self._linked(conn, host, pid, start, mine)
            if not links:
                continue
            near = [r for r in q.flows_between(conn, host, pid, (bucket(lo, width) - 1) * width,
                                                (bucket(hi, width) + 2) * width)
                    if same_process(pid, r.get("start_time"), pid, start) or r.get("start_time") is None]
            if worth_judging(near, links, self.tune):
                self.evaluate_sender(conn, host, pid, now)
                return

    def _linked(self, conn: Connection, host: str, pid: int, start: float | None, mine: list[dict[str, Any]]
                ) -> tuple[dict[str, Any], float, float, list[Link]]:
        """One sender identity's rows: the sender, the span its bytes left in, and what links it to the weights."""
        sender = _sender(pid, start, mine[-1])
        lo = min(float(r["first_ts"] if r.get("first_ts") is not None else r["ts"]) for r in mine)
        hi = max(float(r["ts"]) for r in mine)
        links = self._links(conn, host, sender, lo, hi, hi - self.tune.link_window_s, self.tune.relay_depth,
                            frozenset({(pid, start)}))
        return sender, lo, hi, links

    def evaluate_sender(self, conn: Connection, host: str, pid: int, now: float) -> None:
        base = f"exfiltration:{host}:{pid}"
        produced: set[str] = set()
        latest = q.last_outward(conn, host, pid)
        rows = [] if latest is None else q.flows_of(conn, host, pid, latest - self.tune.link_window_s)
        weights_total = int((self.store.host(conn, host) or {}).get("weights_bytes") or 0)
        for start, mine in _identities(rows):
            sender, lo, hi, links = self._linked(conn, host, pid, start, mine)
            if not links:
                continue
            exe = str(sender["exe"] or "")

            def contacts(addresses: list[str], exe: str = exe) -> dict[str, float]:
                return q.contacted_since(conn, host, exe, sorted(set(addresses)))

            draft = exfiltration(host, sender, mine, links, contacts, weights_total, self.tune)
            if draft is not None:
                self.put(conn, draft, now)
                produced.add(draft.key)
        stale = [k for k in q.alert_keys(conn, host, base) if (k == base or k.startswith(base + ":")) and k not in produced]
        q.withdraw(conn, stale, now)

    def _same(self, r: dict[str, Any], pid: int, start: float | None, lo: float, hi: float) -> bool:
        if not same_process(int(r["pid"]), r.get("start_time"), pid, start):
            return False
        if r.get("start_time") is None or start is None:  # pid alone: only close in time
            return float(r["ts"]) >= lo - self.tune.pid_only_s and float(r["first_ts"]) <= hi + self.tune.pid_only_s
        return True

    def _links(self, conn: Connection, host: str, sender: dict[str, Any], lo: float, hi: float, since: float,
               depth: int, seen: frozenset[tuple[int, float | None]]) -> list[Link]:
        """Every flow of weights into ``sender`` that the stored facts show (see detect.sender)."""
        pid, start = int(sender["pid"]), sender.get("start_time")
        links: list[Link] = []
        own = [r for r in self.store.reads_for(conn, host, [pid], since) if self._same(r, pid, start, lo, hi)]
        for kind, reads in (("self", [r for r in own if r["kind"] in ("read", "holder")]),
                            ("staged", [r for r in own if r["kind"] == "staged_read"])):
            if reads:
                links.append(Link(kind, sender, reads, min(float(r["first_ts"]) for r in reads)))
        for inode, end in parse_pipes(sender.get("pipes")):
            if end != "r":
                continue  # only the read end receives; a shared write end (a log) is no flow
            writers: dict[tuple[int, float | None], list[dict[str, Any]]] = {}
            for r in q.pipe_writers(conn, host, inode, since):
                ident = (int(r["pid"]), r.get("start_time"))
                if r["kind"] != "copy" and not same_process(ident[0], ident[1], pid, start):
                    writers.setdefault(ident, []).append(r)
            for (wpid, wstart), reads in sorted(writers.items(), key=lambda kv: (kv[0][0], kv[0][1] or 0.0)):
                who = {"pid": wpid, "start_time": wstart, "name": reads[-1]["name"], "exe": reads[-1]["exe"]}
                links.append(Link("pipe", who, reads, min(float(r["first_ts"]) for r in reads), via=f"pipe {inode}"))
        ppid = sender.get("ppid")
        if start is not None and ppid and ppid > 1:
            parent = [r for r in self.store.reads_for(conn, host, [int(ppid)], since)
                      if r["kind"] in ("read", "holder") and float(r["first_ts"]) <= start
                      and (r.get("start_time") is None or float(r["start_time"]) <= start)
                      and r.get("exe") == sender.get("exe")
                      and (not (r.get("cmd_hash") and sender.get("cmd_hash")) or r["cmd_hash"] == sender["cmd_hash"])]
            if parent:
                who = {"pid": int(ppid), "start_time": parent[-1].get("start_time"), "name": parent[-1]["name"],
                       "exe": parent[-1]["exe"]}
                links.append(Link("fork", who, parent, float(start)))
        if depth > 0:
            links += self._relays(conn, host, pid, start, since, depth, seen)
        return links

    def _relays(self, conn: Connection, host: str, pid: int, start: float | None, since: float, depth: int,
                seen: frozenset[tuple[int, float | None]]) -> list[Link]:
        by_src: dict[tuple[int, float | None], list[dict[str, Any]]] = {}
        for e in q.relays_into(conn, host, pid, since):
            if same_process(int(e["dst_pid"]), e.get("dst_start"), pid, start):
                by_src.setdefault((int(e["src_pid"]), e.get("src_start")), []).append(e)
        links: list[Link] = []
        for (spid, sstart), edges in sorted(by_src.items(), key=lambda kv: (kv[0][0], kv[0][1] or 0.0)):
            if (spid, sstart) in seen or spid == pid:
                continue
            src = {"pid": spid, "start_time": sstart, "name": edges[-1]["src_name"], "exe": edges[-1]["src_exe"]}
            lo = min(float(e["first_ts"]) for e in edges)
            hi = max(float(e["ts"]) for e in edges)
            for up in self._links(conn, host, src, lo, hi, since, depth - 1, seen | {(spid, sstart)}):
                hop = [(float(e["first_ts"]), int(e["bytes"])) for e in edges if float(e["ts"]) >= up.t0]
                if not hop:
                    continue
                chain = [*up.chain, src] if up.kind == "relay" or up.reader.get("pid") != spid else up.chain
                via = sorted({str(e["via"]) for e in edges})
                links.append(Link("relay", up.reader, up.reads, max(up.t0, min(ts for ts, _ in hop)),
                                  via=" and ".join(f"{v} socket" if v == "unix" else f"local {v}" for v in via),
                                  hops=[*(up.hops or []), hop], chain=chain))
        return links

    def evaluate_host_day(self, conn: Connection, host: str, day: str, now: float) -> None:
        width, window = self.tune.burst_s, self.tune.host_window_s
        lo = day_start(day)
        hi = lo + 86400 + width
        key = f"host_exfiltration:{host}:{day}"
        reads = [r for r in q.reads_between(conn, host, lo - window - 2 * width, hi)
                 if r["kind"] in ("read", "staged_read")]
        if not reads:
            q.withdraw(conn, [key], now)
            return
        # Senders a linked rule judges: those holding weight facts of their own, and those with a linked alert.
        own = [(int(r["pid"]), r.get("start_time")) for r in q.reads_between(conn, host, lo - self.tune.link_window_s, hi)]
        alerted: list[tuple[int, float | None]] = []
        for k in q.alert_keys(conn, host, f"exfiltration:{host}:"):
            parts = k[len(f"exfiltration:{host}:"):].split(":")
            alerted.append((int(parts[0]), float(parts[1]) if len(parts) > 1 else None))
        covered = own + alerted
        flows = [r for r in q.outward_rows(conn, host, lo, hi)
                 if not any(same_process(int(r["pid"]), r.get("start_time"), p, s) for p, s in covered)]
        draft = host_exfiltration(host, day, reads, flows, self.tune)
        if draft is None:
            q.withdraw(conn, [key], now)
        else:
            self.put(conn, draft, now)

    def _judged_slow(self, conn: Connection, units: list[tuple[str, str, str]]
                     ) -> list[tuple[str, str, str, SlowWindow | None, int]]:
        try:
            with conn.begin_nested():
                return self.judge_slow(conn, units)
        except Exception as exc:  # noqa: BLE001 - counted; the sweep tries again
            self.note_error(f"judge_slow ({len(units)} destinations): {exc!r}")
            return []

    def judge_slow(self, conn: Connection, units: list[tuple[str, str, str]]
                   ) -> list[tuple[str, str, str, SlowWindow | None, int]]:
        """Every destination-day at once (a few statements however many): those with a verdict to
        write, or an alert to withdraw. Most have neither, and cost no statement of their own."""
        if not units:
            return []
        starts = [day_start(d) for _h, _a, d in units]
        hourly = q.hourly_to_many(conn, sorted({(h, a) for h, a, _d in units}), min(starts) - self.tune.slow_window_s,
                                  max(starts) + 86400)
        by_pair: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for row in hourly:
            by_pair.setdefault((row["host"], row["address"]), []).append(row)
        weights = q.weights_of(conn, sorted({h for h, _a, _d in units}))
        existing = q.existing_keys(conn, [f"slow:{h}:{a}:{d}" for h, a, d in units])
        out = []
        for host, address, day in units:
            win = slow_peak(by_pair.get((host, address), []), day, weights.get(host, 0), self.tune)
            if win is not None or f"slow:{host}:{address}:{day}" in existing:
                out.append((host, address, day, win, weights.get(host, 0)))
        return out

    def write_slow(self, conn: Connection, host: str, address: str, day: str, win: SlowWindow | None,
                   weights_total: int, now: float) -> None:
        key = f"slow:{host}:{address}:{day}"
        if win is None:
            q.withdraw(conn, [key], now)
        else:
            self.put(conn, slow(host, address, day, win, q.senders_to(conn, host, address, win.lo, win.hi),
                                weights_total, self.tune), now)

    # -- the sweep -----------------------------------------------------------------------

    def sweep(self, now: float) -> int:
        """Re-judge what arrived lately (in this collector or another), then slow destinations that are due."""
        wall = time.time()
        # Lately: since the previous sweep began, less the longest a transaction takes. A slow sweep
        # is followed by a longer pause (SWEEP_PAUSE), and a fixed window would leave a gap no sweep
        # looks at: a verdict written from an old snapshot in it would stand.
        since_wall = max(min(wall, self._swept[0]), wall - MAX_LOOKBACK_S) - REEVALUATE_S
        since_now = max(min(now, self._swept[1]), now - MAX_LOOKBACK_S) - REEVALUATE_S
        with self.store.tx() as conn:
            senders, reads, dests = q.recent_units(conn, since_wall, self.tune.link_window_s)
            units = Units()
            for host, pid in senders:
                units.checks[(host, pid)] = q.recent_flows(conn, host, pid, since_wall)
            for host, pid, first in q.recent_relay_targets(conn, since_wall):
                units.senders |= {(host, p) for p in self._downstream(conn, host, {pid}, first)}
            for host, first, last in reads:
                units.senders |= {(host, pid) for pid in q.outward_senders(conn, host, first - 1)}
                units.host_days |= {(host, d) for d in self._days(first, last + self.tune.host_window_s)}
            for host, _pid in senders:
                span = q.recent_span(conn, host, since_wall)
                if span is not None:
                    units.host_days |= {(host, d) for d in self._days(*span)}
            # Verdicts written lately are judged once more with everything committed by now: a collector
            # that judged from a snapshot missing another's facts, and committed after that other's
            # verdict, must not leave its older view standing. A verdict that holds writes nothing.
            for key, host in q.alerts_updated_since(conn, since_now):
                _judge_again(units, key, host)
            for host, address, first, last, received in dests:
                for day in sorted(self._slow_days(first, last)):
                    # _slow_done is on the pipeline's clock, received on the wall clock: compare ages.
                    done = self._slow_done.get((host, address, day))
                    age = None if done is None else now - done
                    if age is None or (wall - received < age + 2 * SLOW_SETTLE_S and
                                       (age >= SLOW_EVERY_S or wall - received >= SLOW_SETTLE_S)):
                        units.slow.add((host, address, day))
            failed = self.evaluate(conn, units, now)
        self._swept = (wall, now)  # only once it is done: a failed sweep's span is looked at again
        return failed

def _judge_again(units: Units, key: str, host: str) -> None:
    """Add the subject a verdict's key names: exfiltration:HOST:PID[:START] (a sender),
    host_exfiltration:HOST:DAY (a host-day), slow:HOST:ADDRESS:DAY (a destination-day)."""
    kind, _, rest = key.partition(":")
    if not rest.startswith(f"{host}:"):
        return
    rest = rest[len(host) + 1:]
    if kind == "exfiltration":
        pid = rest.split(":")[0]
        if pid.isdigit():
            units.senders.add((host, int(pid)))
    elif kind == "host_exfiltration":
        units.host_days.add((host, rest))
    elif kind == "slow":
        address, _, day = rest.rpartition(":")
        units.slow.add((host, address, day))


def _sender(pid: int, start: float | None, last: dict[str, Any]) -> dict[str, Any]:
    return {"pid": pid, "start_time": start, "name": last["name"], "exe": last["exe"], "uid": last["uid"],
            "ppid": last["ppid"], "pipes": last["pipes"], "cmd_hash": last["cmd_hash"],
            "container": json.loads(last["container"]) if last.get("container") else None}


def _identities(rows: list[dict[str, Any]]) -> list[tuple[float | None, list[dict[str, Any]]]]:
    """A pid's rows split by process (start time). Rows without a start time belong to the process
    that had most recently started when they were sent."""
    starts = sorted({round(float(r["start_time"]), 2) for r in rows if r.get("start_time") is not None})
    groups: dict[float | None, list[dict[str, Any]]] = {}
    for r in rows:
        if r.get("start_time") is not None:
            s: float | None = round(float(r["start_time"]), 2)
        elif starts:
            before = [x for x in starts if x <= float(r["ts"])]
            s = before[-1] if before else starts[0]
        else:
            s = None
        groups.setdefault(s, []).append(r)
    return sorted(groups.items(), key=lambda kv: kv[0] if kv[0] is not None else -1.0)
