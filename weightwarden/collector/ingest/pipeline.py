"""From validated events to stored state and alerts. Database work only, no MQTT.

Tests drive this with recorded event streams; the MQTT service feeds it in
batches (:mod:`batching`). Each batch is one transaction: the facts of every event are stored,
then everything those facts touch is judged again from all stored facts
(``weightwarden/collector/detect/detector.py``), each subject in a savepoint, so one bad event
or one odd subject cannot undo its batch.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import Connection

from weightwarden.collector.store import facts as q
from weightwarden.collector.ingest.batching import BatchIngest, egress_bps
from weightwarden.collector.detect.common import Draft, Tuning
from weightwarden.collector.detect.facts import egress_rows
from weightwarden.collector.detect.detector import Detector, Units
from weightwarden.collector.detect.single import from_event, gap, silent
from weightwarden.collector.store.database import Store
from weightwarden.events import (
    AgentLost, AgentStarted, AgentStopping, EgressSample, Event, EventsDropped, FileAccess, Heartbeat, PolicyApplied,
    WeightHolder, WeightsCopy,
)

__all__ = ["Pipeline", "egress_bps", "egress_rows", "load_stream"]


class Pipeline(BatchIngest):
    """Detections over stored facts; ``ingest`` (batching, dead letters, database outages) is
    :class:`BatchIngest`'s."""

    def __init__(self, store: Store, tune: Tuning | None = None, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.tune = tune or Tuning()
        self.clock = clock
        self._init_caches()
        self.detector = Detector(store, self.tune, clock, errors=self.errors)

    def upsert(self, conn: Connection, draft: Draft | None, now: float) -> None:
        self.detector.put(conn, draft, now)

    # -- per event -----------------------------------------------------------

    def apply(self, conn: Connection, ev: Event, now: float) -> Units:
        """Store one event's facts and raise what it decides alone; returns what its facts touch."""
        host, data, ts = ev.host, ev.data, ev.ts
        if isinstance(data, EgressSample):
            self.store.touch_host(conn, host, ev.seq, ts, now, egress_bps=egress_bps(data))
            return self.detector.record_samples(conn, [ev])
        self.store.touch_host(conn, host, ev.seq, ts, now)
        changed = Units()
        if isinstance(data, (Heartbeat, AgentStarted, PolicyApplied)):
            fields: dict[str, Any] = {"policy": data.policy, "policy_digest": data.policy_digest}
            if isinstance(data, Heartbeat):
                fields.update(backend=data.backend, rules_in_force=int(data.rules_in_force), caps=data.caps,
                              last_heartbeat=ts)
            if isinstance(data, PolicyApplied):
                fields.update(backend=data.backend, caps=len(data.caps), rules_in_force=1)
            weights = None if isinstance(data, PolicyApplied) else data.weights
            if weights is not None and weights.total_bytes and q.set_weights_total(conn, host, weights.total_bytes, ts):
                changed = self.detector.weights_changed(conn, host)
            host_row = self.store.host(conn, host) or {}
            if host_row.get("status") in ("lost", "silent") and ts >= (host_row.get("lost_at") or 0):
                self.store.resolve_kind(conn, host, "agent_silent", "collector: the agent is back", now)
            fields["status"] = "online"
            self.store.update_host(conn, host, **{k: v for k, v in fields.items() if v is not None})
            if isinstance(data, PolicyApplied):
                # None is meaningful here: a host back on its local file has no central version.
                self.store.update_host(conn, host, policy_version=data.version, policy_source=data.source or "file")
        elif isinstance(data, AgentStopping):
            self.store.update_host(conn, host, status="stopped")
        elif isinstance(data, AgentLost):
            self.store.update_host(conn, host, status="lost", lost_at=now)
            self.upsert(conn, from_event(ev), now)
        elif isinstance(data, (FileAccess, WeightHolder, WeightsCopy)):
            return self.detector.record_weights(conn, ev, data, now)
        else:
            self.upsert(conn, from_event(ev), now)
        return changed

    # -- periodic --------------------------------------------------------------

    def sweep(self) -> None:
        """A second look at what arrived lately, then each host on its own: silent agents and
        unexplained sequence gaps. One host's odd state never stops the sweep for the others."""
        now = self.clock()
        try:
            failed = self.detector.sweep(now)
        except Exception as exc:  # noqa: BLE001 - the second look failed as a whole; the hosts still get theirs
            failed = 1
            self.detector.note_error(f"sweep re-evaluation: {exc!r}")
        with self.store.tx() as conn:
            hosts = self.store_hosts(conn)
        for h in hosts:
            for check in (self._silent, self._gaps):
                try:
                    with self.store.tx() as conn:
                        check(conn, h, now)
                except Exception as exc:  # noqa: BLE001 - logged and counted; the other hosts and checks go on
                    failed += 1
                    self.detector.note_error(f"sweep {check.__name__} {h.get('host')!r}: {exc!r}")
        if failed:
            with self.store.tx() as conn:
                self.store.bump(conn, "sweep_errors", failed)

    @staticmethod
    def store_hosts(conn: Connection) -> list[dict[str, Any]]:
        from sqlalchemy import text

        return [dict(r) for r in conn.execute(text("SELECT * FROM hosts ORDER BY host")).mappings()]

    def _silent(self, conn: Connection, h: dict[str, Any], now: float) -> None:
        if h["status"] == "online" and now - (h["last_seen"] or now) > self.tune.silent_after_s:
            self.store.update_host(conn, h["host"], status="silent", lost_at=now)
            self.upsert(conn, silent(h["host"], h["last_seen"], now), now)

    def _gaps(self, conn: Connection, h: dict[str, Any], now: float) -> None:
        """Sequence numbers that never arrived and no events_dropped explains, as ranges (never expanded).

        A collector that meets a host for the first time takes the first sequence number it
        holds as the start: the agent counted before this collector existed, and that
        history is not missing."""
        host, contig = h["host"], int(h["seq_contig"] or 0)
        if contig == 0:
            first = q.min_seq(conn, host)
            if first is None:
                return
            contig = first - 1
        runs = q.seq_runs(conn, host, contig)
        if not runs:
            return
        top = runs[-1][1]
        holes: list[tuple[int, int]] = []
        expected = contig + 1
        for lo, hi in runs:
            if lo > expected:
                holes.append((expected, lo - 1))
            expected = max(expected, hi + 1)
        explained: list[tuple[int, int]] = []
        for dropped in self.store.events_of(conn, host, EventsDropped.TYPE, 0):
            for pair in dropped["data"].get("seq_ranges") or []:
                if isinstance(pair, list) and len(pair) == 2:
                    explained.append((int(pair[0]), int(pair[1])))
        missing = subtract(holes, explained)
        if not missing:
            self.store.update_host(conn, host, seq_contig=top, gap_seen_at=None)
            return
        if h["gap_seen_at"] is None:
            # Give redeliveries (a spool draining after an outage) time to arrive.
            self.store.update_host(conn, host, seq_contig=missing[0][0] - 1, gap_seen_at=now)
        elif now - h["gap_seen_at"] >= self.tune.gap_grace_s:
            self.upsert(conn, gap(host, missing, sum(hi - lo + 1 for lo, hi in missing), now), now)
            self.store.update_host(conn, host, seq_contig=top, gap_seen_at=None)


def subtract(ranges: list[tuple[int, int]], minus: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Inclusive integer ranges less other ranges, without expanding either."""
    out = []
    cuts = sorted(minus)
    for lo, hi in ranges:
        cur = lo
        for clo, chi in cuts:
            if chi < cur or clo > hi:
                continue
            if clo > cur:
                out.append((cur, clo - 1))
            cur = max(cur, chi + 1)
            if cur > hi:
                break
        if cur <= hi:
            out.append((cur, hi))
    return out


def load_stream(path: str) -> list[tuple[str, bytes]]:
    """A recorded event stream (JSON lines) as MQTT messages, for tests and replays."""
    out = []
    with open(path) as fh:
        for line in fh:
            line = line.strip()
            if line and not line.startswith("#"):
                doc = json.loads(line)
                out.append((f"weightwarden/v1/{doc['host']}/{doc['type']}", json.dumps(doc).encode()))
    return out
