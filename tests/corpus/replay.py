"""Replay a recorded scenario through a real Pipeline and SQLite store, as events would arrive.

Events arrive in the order they were made (their envelope ``ts``), each as its own batch,
with the pipeline's clock at that moment. The time to alert is the simulated time from the
first stolen byte to the event after which the annotated alert stood, plus the collector's
real processing time for that event.
"""

from __future__ import annotations

import json
import time
from typing import Any

from tests.corpus.model import Scenario, Verdict, first_match, judge
from weightwarden.collector.detect.common import Tuning
from weightwarden.collector.ingest.pipeline import Pipeline
from weightwarden.collector.store.database import Store


class SimClock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def arrival_order(sc: Scenario) -> list[dict[str, Any]]:
    assert sc.build is not None
    events = [e for s in sc.build() for e in s.events]
    return sorted(events, key=lambda e: e["ts"])  # stable: a stream's own order is kept on ties


def message(e: dict[str, Any]) -> tuple[str, bytes]:
    return f"weightwarden/v1/{e['host']}/{e['type']}", json.dumps(e).encode()


def replay(sc: Scenario, db: str = "sqlite:///:memory:", tune: Tuning | None = None, batch: int = 20) -> Verdict:
    """Thefts arrive one event per batch until detected (so the time to alert is exact); the
    rest, and benign scenarios, in batches of ``batch`` consecutive events, as a busy collector takes them."""
    events = arrival_order(sc)
    clock = SimClock(events[0]["ts"])
    pipe = Pipeline(Store(db), tune, clock=clock)
    took: float | None = None
    i = 0
    while i < len(events):
        timing = took is None and sc.label == "theft" and sc.stolen_at is not None
        chunk = events[i:i + (1 if timing else batch)]
        i += len(chunk)
        clock.now = chunk[-1]["ts"]
        t = time.perf_counter()
        counts = pipe.ingest([message(e) for e in chunk])
        spent = time.perf_counter() - t
        assert counts["rejected"] == 0, f"{sc.name}: the scenario made an event the collector rejects"
        if timing and first_match(sc, pipe.store.alerts()):
            took = max(0.0, chunk[-1]["ts"] - (sc.stolen_at or 0.0)) + spent
    clock.now = events[-1]["ts"] + 5
    pipe.sweep()
    alerts = pipe.store.alerts()
    problems = judge(sc, alerts) + [f"collector error: {err}" for err in pipe.errors]
    pipe.store.engine.dispose()
    return Verdict(sc, alerts, problems, took)
