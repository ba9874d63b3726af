"""From validated events to stored state and alerts. Database work only, no MQTT.

Tests drive this with recorded event streams; the MQTT service feeds it in
batches (:mod:`batching`). Each batch is one transaction; each event's
correlation runs in a savepoint, so one bad event cannot undo its batch.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import Connection

from weightwarden.collector import correlate
from weightwarden.collector.batching import BatchIngest, egress_bps, egress_rows, pipe_key
from weightwarden.collector.correlate import Draft, Tuning
from weightwarden.collector.store import Store
from weightwarden.events import (
    AgentLost, AgentStarted, AgentStopping, EgressSample, Event, FileAccess, Heartbeat, PolicyApplied, WeightHolder,
    WeightsCopy,
)

REEVALUATE_S = 120.0


class Pipeline(BatchIngest):
    """Detections over stored facts; ``ingest`` (batching, dead letters, database outages) is
    :class:`BatchIngest`'s."""

    def __init__(self, store: Store, tune: Tuning | None = None, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.tune = tune or Tuning()
        self.clock = clock
        self._init_caches()

    def _evaluate_chunked(self, conn: Connection, host: str, exe: str, ts: float, now: float) -> None:
        since = ts - self.tune.chunk_window_s
        self.upsert(conn, correlate.chunked(host, exe, self.store.egress_where(conn, host, "exe", exe, since),
                                            self.store.reads_on_host(conn, host, since), self.tune), now)

    def upsert(self, conn: Connection, draft: Draft | None, now: float) -> None:
        if draft is not None:
            self.store.upsert_alert(conn, draft.to_row(), now)

    # -- per event -----------------------------------------------------------

    def apply(self, conn: Connection, ev: Event, now: float) -> None:
        host, data, ts = ev.host, ev.data, ev.ts
        if isinstance(data, EgressSample):
            self._egress(conn, ev, data, now)
            return
        self.store.touch_host(conn, host, ev.seq, ts, now)
        if isinstance(data, (Heartbeat, AgentStarted, PolicyApplied)):
            fields: dict[str, Any] = {"policy": data.policy, "policy_digest": data.policy_digest}
            if isinstance(data, Heartbeat):
                fields.update(backend=data.backend, rules_in_force=int(data.rules_in_force), caps=data.caps,
                              last_heartbeat=ts)
            if isinstance(data, PolicyApplied):
                fields.update(backend=data.backend, caps=len(data.caps), rules_in_force=1)
            weights = None if isinstance(data, PolicyApplied) else data.weights
            if weights is not None and weights.total_bytes:
                fields["weights_bytes"] = weights.total_bytes
            host_row = self.store.host(conn, host) or {}
            if host_row.get("status") in ("lost", "silent") and ts >= (host_row.get("lost_at") or 0):
                self.store.resolve_kind(conn, host, "agent_silent", "collector: the agent is back", now)
            fields["status"] = "online"
            self.store.update_host(conn, host, **{k: v for k, v in fields.items() if v is not None})
        elif isinstance(data, AgentStopping):
            self.store.update_host(conn, host, status="stopped")
        elif isinstance(data, AgentLost):
            self.store.update_host(conn, host, status="lost", lost_at=now)
            self.upsert(conn, correlate.from_event(ev), now)
        elif isinstance(data, (FileAccess, WeightHolder, WeightsCopy)):
            self._weights(conn, ev, data, now)
        else:
            self.upsert(conn, correlate.from_event(ev), now)

    def _egress(self, conn: Connection, ev: Event, data: EgressSample, now: float) -> None:
        host, ts = ev.host, ev.ts
        rows = egress_rows(ev)
        self.store.touch_host(conn, host, ev.seq, ts, now, egress_bps=egress_bps(data))
        self.store.add_egress(conn, host, rows)
        outward = [r for r in rows if not r["allowed"]]
        self._first_contacts(conn, host, outward, ts)
        if not outward:
            return
        # Most samples come from hosts that touched no weights: one indexed lookup settles them.
        if self.store.has_reads(conn, host, ts - self.tune.window_s):
            for pid in sorted({r["pid"] for r in outward}):
                self.evaluate_exfiltration(conn, host, pid, ts, now)
            if self.store.has_reads(conn, host, ts - self.tune.chunk_window_s):
                for exe in sorted({r["exe"] for r in outward}):
                    self._evaluate_chunked(conn, host, exe, ts, now)
        due = self._slow_due(host, outward, ts)
        if due:
            host_row = self.store.host(conn, host) or {}
            for address in due:
                self._slow_checked[(host, address)] = ts
                sent = self.store.egress_where(conn, host, "address", address, ts - self.tune.slow_window_s)
                self.upsert(conn, correlate.slow(host, address, sent, int(host_row.get("weights_bytes") or 0),
                                                 self.tune), now)

    def _weights(self, conn: Connection, ev: Event, d: FileAccess | WeightHolder | WeightsCopy, now: float) -> None:
        host, ts = ev.host, ev.ts
        base: dict[str, Any] = {"pid": d.pid if d.pid is not None else -1, "ppid": d.ppid, "exe": d.exe,
                "name": d.name, "uid": d.uid, "event_id": ev.id, "staged_of": None, "pipes": pipe_key(d.pipes)}
        if isinstance(d, FileAccess):
            staged = d.staged_copy_of
            row: dict[str, Any] = {**base, "path": d.path, "kind": "staged_read" if staged else "read",
                   "bytes": d.bytes_read, "first_ts": d.first_ts or ts,
                   "ts": d.last_ts or ts, "staged_of": "\n".join(staged) or None}
        elif isinstance(d, WeightHolder):
            row = {**base, "path": d.path, "kind": "holder", "bytes": d.resident_bytes, "first_ts": 0.0, "ts": ts}
        else:
            row = {**base, "path": d.destination, "kind": "copy", "bytes": d.destination_size,
                   "first_ts": ts, "ts": ts, "staged_of": "\n".join(d.sources) or None}
        self.store.add_read(conn, host, row)
        if row["pid"] >= 0:
            # The upload may have started before this report arrived: look again.
            since = ts - self.tune.window_s
            children = self.store.children(conn, host, row["pid"], since)
            for pid in {row["pid"], *children, *self.store.pipe_partners(conn, host, "egress", row["pipes"], since)}:
                self.evaluate_exfiltration(conn, host, pid, ts, now)

    def evaluate_exfiltration(self, conn: Connection, host: str, pid: int, ref_ts: float, now: float) -> None:
        since = ref_ts - self.tune.window_s
        egress = self.store.egress_where(conn, host, "pid", pid, since)
        if not egress:
            return
        last = egress[-1]
        sender = {k: last.get(k) for k in ("pid", "ppid", "exe", "name", "uid")}
        # Who may have handed it the weights: itself, its parent, and whoever shares a pipe with it.
        related = {pid, *([last["ppid"]] if last.get("ppid") and last["ppid"] > 1 else []),
                   *self.store.pipe_partners(conn, host, "weight_reads", last.get("pipes"), since)}
        reads = self.store.reads_for(conn, host, sorted(related), since)
        if not reads:
            return
        first_read = min(r["first_ts"] for r in reads if r["first_ts"] > 0) if any(r["first_ts"] > 0 for r in reads) \
            else min(r["ts"] for r in reads)
        new = set()
        for e in egress:
            seen = self.store.first_seen(conn, host, e["exe"] or "", e["address"])
            if seen is not None and seen >= first_read - 1:
                new.add(e["address"])
        host_row = self.store.host(conn, host) or {}
        rate = sum(e["rate_bps"] or 0 for e in egress if e["ts"] == last["ts"]) / max(
            1, len({e["address"] for e in egress if e["ts"] == last["ts"]}))
        self.upsert(conn, correlate.exfiltration(host, sender, reads, egress, int(host_row.get("weights_bytes") or 0),
                                                 new, float(rate), self.tune), now)

    # -- periodic --------------------------------------------------------------

    def sweep(self) -> None:
        """Silent agents, unexplained sequence gaps, and a second look at recent uploads."""
        now = self.clock()
        with self.store.tx() as conn:
            # Collectors sharing a database each saw part of the story; look again at what
            # arrived lately (wall clock), with everything that is committed by now.
            recent = self.store.recent_senders(conn, time.time() - REEVALUATE_S, now - self.tune.window_s)
            for host, pid, _exe, ts in recent:
                self.evaluate_exfiltration(conn, host, pid, ts, now)
            latest: dict[tuple[str, str], float] = {}
            for host, _pid, exe, ts in recent:
                latest[(host, exe)] = max(ts, latest.get((host, exe), ts))
            for (host, exe), ts in sorted(latest.items()):
                self._evaluate_chunked(conn, host, exe, ts, now)
            for h in self.store_hosts(conn):
                if h["status"] == "online" and now - (h["last_seen"] or now) > self.tune.silent_after_s:
                    self.store.update_host(conn, h["host"], status="silent", lost_at=now)
                    self.upsert(conn, correlate.silent(h["host"], h["last_seen"], now), now)
                self._gaps(conn, h, now)

    @staticmethod
    def store_hosts(conn: Connection) -> list[dict[str, Any]]:
        from sqlalchemy import text

        return [dict(r) for r in conn.execute(text("SELECT * FROM hosts")).mappings()]

    def _gaps(self, conn: Connection, h: dict[str, Any], now: float) -> None:
        host, contig = h["host"], int(h["seq_contig"] or 0)
        seqs = self.store.seqs_after(conn, host, contig)
        if not seqs:
            return
        covered: set[int] = set()
        for dropped in self.store.events_of(conn, host, "events_dropped", 0):
            for lo, hi in dropped["data"].get("seq_ranges") or []:
                covered.update(range(int(lo), int(hi) + 1))
        present = set(seqs) | covered
        top = max(seqs)
        missing = [s for s in range(contig + 1, top + 1) if s not in present]
        if not missing:
            self.store.update_host(conn, host, seq_contig=top, gap_seen_at=None)
            return
        first_missing = missing[0]
        if h["gap_seen_at"] is None:
            # Give redeliveries (a spool draining after an outage) time to arrive.
            self.store.update_host(conn, host, seq_contig=first_missing - 1, gap_seen_at=now)
        elif now - h["gap_seen_at"] >= self.tune.gap_grace_s:
            self.upsert(conn, correlate.gap(host, missing, now), now)
            self.store.update_host(conn, host, seq_contig=top, gap_seen_at=None)


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
