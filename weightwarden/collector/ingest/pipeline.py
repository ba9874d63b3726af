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
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import cast

from sqlalchemy import Connection, text

from weightwarden.collector.detect.common import Tuning
from weightwarden.collector.detect.detector import Detector, Units
from weightwarden.collector.detect.facts import egress_rows
from weightwarden.collector.detect.rule import Rule
from weightwarden.collector.detect.rules.sequence_gap import subtract
from weightwarden.collector.ingest.batching import BatchIngest, egress_bps
from weightwarden.collector.store import agent_facts as a
from weightwarden.collector.store import facts as q
from weightwarden.collector.store.database import Store
from weightwarden.collector.store.host_rows import HostState
from weightwarden.collector.store.rows import SqlValue
from weightwarden.events import (
    EVENT_TYPES,
    AgentLost,
    AgentStarted,
    EgressSample,
    Event,
    FileAccess,
    Heartbeat,
    PolicyApplied,
    WeightHolder,
    WeightsCopy,
)

__all__ = ["Pipeline", "egress_bps", "egress_rows", "load_stream", "subtract"]

READS = {"file_access", "weight_holder", "weights_copy"}  # after these, the host's uploads may be the incident
BULK = {"egress_sample", "heartbeat", "policy_applied", "policy_rejected"}  # the rest decide alerts alone
HOT_S = 3600.0  # a host's samples are urgent this long after a weight read arrived (host_window_s)
HOT_MAX = 100_000
# Each sweep spends at most about this long on hosts one by one (beyond SWEEP_HOSTS_MIN of them); the rest
# wait for the next sweep, first in line. A fleet met for the first time (every host's sequence start
# looked up on its own: a few statements each) would otherwise hold the sweep, and the CPU it shares with
# ingest, for many seconds at a time: 57 s for 1,700 new hosts under load (bench/collector.py --diagnose).
SWEEP_HOSTS_S = 0.5
SWEEP_HOSTS_MIN = 256


class Pipeline(BatchIngest):
    """Detections over stored facts; ``ingest`` (batching, dead letters, database outages) is
    :class:`BatchIngest`'s."""

    def __init__(self, store: Store, tune: Tuning | None = None, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.tune = tune or Tuning()
        self.clock = clock
        self._init_caches()
        self.detector = Detector(store, self.tune, clock, errors=self.errors)
        self._hot: dict[str, float] = {}  # host -> until when its samples are urgent (monotonic)
        self._sweep_after: dict[str, str] = {}  # rule -> the last host the previous sweep got to (None: all)

    # -- the incident lane ----------------------------------------------------

    def urgent(self, topic: str) -> bool:
        """Whether a message may decide an incident, from its topic alone (weightwarden/v1/HOST/TYPE): it
        is then stored and judged before the bulk of samples (``Inbox``). Weight reads and the agent's own
        alarms are; so are samples of a host whose weights were read lately (an upload after the read is
        the incident); heartbeats and other hosts' samples are bulk. Called in the event loop, per message."""
        _root, _v, host, kind = (topic.split("/") + ["", "", "", ""])[:4]
        if kind == "egress_sample":
            until = self._hot.get(host)
            return until is not None and until > time.monotonic()
        if kind in READS:
            if len(self._hot) > HOT_MAX:
                self._hot.clear()
            self._hot[host] = time.monotonic() + HOT_S
            return True
        return kind in EVENT_TYPES and kind not in BULK

    # -- per event -----------------------------------------------------------

    def apply(self, conn: Connection, ev: Event, now: float) -> Units:
        """Store one event's facts; the rules that decide it have their say; returns what its facts touch."""
        host, data, ts = ev.host, ev.data, ev.ts
        if isinstance(data, EgressSample):
            self.store.touch_host(conn, host, ev.seq, ts, now, egress_bps=egress_bps(data))
            return self.detector.record_samples(conn, [ev])
        if not isinstance(data, AgentLost):  # the broker's word that the agent is gone, not a word from it
            self.store.touch_host(conn, host, ev.seq, ts, now)
        units = Units()
        if isinstance(data, (Heartbeat, AgentStarted, PolicyApplied)):
            fields: dict[str, SqlValue] = {"policy": data.policy, "policy_digest": data.policy_digest}
            if isinstance(data, Heartbeat):
                fields.update(backend=data.backend, rules_in_force=int(data.rules_in_force), caps=data.caps,
                              last_heartbeat=ts)
            if isinstance(data, PolicyApplied):
                fields.update(backend=data.backend, caps=len(data.caps), rules_in_force=1)
            weights = None if isinstance(data, PolicyApplied) else data.weights
            if weights is not None and weights.total_bytes and q.set_weights_total(conn, host, weights.total_bytes, ts):
                units.add(self.detector.weights_changed(conn, host))
            self.store.update_host(conn, host, **{k: v for k, v in fields.items() if v is not None})
            if isinstance(data, PolicyApplied):
                # None is meaningful here: a host back on its local file has no central version.
                self.store.update_host(conn, host, policy_version=data.version, policy_source=data.source or "file")
        elif isinstance(data, (FileAccess, WeightHolder, WeightsCopy)):
            units.add(self.detector.record_weights(conn, ev, data, now))
        units.add(self.detector.on_event(conn, ev, now))
        return units

    # -- periodic --------------------------------------------------------------

    def sweep(self) -> None:
        """A second look at what arrived lately, then each host on its own (silent agents, unexplained
        sequence gaps: the rules' ``sweep_host``). One host's odd state never stops the sweep for the others."""
        now = self.clock()
        began = time.monotonic()
        try:
            failed = self.detector.sweep(now)
        except Exception as exc:  # noqa: BLE001 - the second look failed as a whole; the hosts still get theirs
            failed = 1
            self.detector.note_error(f"sweep re-evaluation: {exc!r}")
        with self.store.tx() as conn:
            hosts = self.store_hosts(conn)
        checks = [r for r in self.detector.rules if type(r).sweep_host is not Rule.sweep_host]
        for rule in checks:
            # Every host at once first (most need nothing: a few statements for the fleet), then each host
            # that does, in a transaction of its own.
            try:
                with self.store.tx() as conn:
                    needy = rule.sweep_hosts(self.detector, conn, hosts, now)
            except Exception as exc:  # noqa: BLE001 - then each host on its own
                failed += 1
                self.detector.note_error(f"sweep {rule.name} (all hosts): {exc!r}")
                needy = hosts
            for h in self._in_turn(rule.name, needy, began):
                try:
                    with self.store.tx() as conn:
                        rule.sweep_host(self.detector, conn, h, now)
                except Exception as exc:  # noqa: BLE001 - logged and counted; the other hosts and checks go on
                    failed += 1
                    self.detector.note_error(f"sweep {rule.name} {h.get('host')!r}: {exc!r}")
        if failed:
            with self.store.tx() as conn:
                self.store.bump(conn, "sweep_errors", failed)

    def _in_turn(self, rule: str, needy: list[HostState], began: float) -> Iterator[HostState]:
        """The hosts a rule must look at one by one, within the sweep's budget (SWEEP_HOSTS_S, at least
        SWEEP_HOSTS_MIN hosts): from where the previous sweep stopped, round the fleet, so every host
        is reached within a few sweeps however large the fleet."""
        after = self._sweep_after.pop(rule, None)
        order = sorted(needy, key=lambda h: h["host"])
        if after is not None:
            order = [h for h in order if h["host"] > after] + [h for h in order if h["host"] <= after]
        for n, h in enumerate(order):
            if n >= SWEEP_HOSTS_MIN and time.monotonic() - began > SWEEP_HOSTS_S:
                self._sweep_after[rule] = order[n - 1]["host"]
                return
            yield h

    @staticmethod
    def store_hosts(conn: Connection) -> list[HostState]:
        """Every host's row with its agent's lifecycle facts, in one statement."""
        cols = ", ".join(f"l.{c}" for c in a.LIFECYCLE)
        return [cast(HostState, dict(r)) for r in conn.execute(text(
            f"SELECT h.*, {cols} FROM hosts h LEFT JOIN lifecycle l ON l.host = h.host ORDER BY h.host")).mappings()]


def load_stream(path: str) -> list[tuple[str, bytes]]:
    """A recorded event stream (JSON lines) as MQTT messages, for tests and replays."""
    out = []
    with Path(path).open() as fh:
        for line in fh:
            line = line.strip()
            if line and not line.startswith("#"):
                doc = json.loads(line)
                out.append((f"weightwarden/v1/{doc['host']}/{doc['type']}", json.dumps(doc).encode()))
    return out
