"""The sweep's hosts-one-by-one work has a budget: a large fleet met for the first time is spread over a
few sweeps (ingest shares the process's CPU with it), and every host is still reached, round the fleet."""

from __future__ import annotations

from pathlib import Path
from typing import cast

import pytest
from sqlalchemy import text

from tests.collector.scenarios import T0, Stream
from tests.collector.test_detections import Clock
from weightwarden.collector.detect.common import Tuning
from weightwarden.collector.ingest import pipeline as p
from weightwarden.collector.ingest.pipeline import Pipeline
from weightwarden.collector.store.database import Store
from weightwarden.collector.store.host_rows import HostState


@pytest.fixture
def pipe(tmp_path: Path) -> Pipeline:
    return Pipeline(Store(f"sqlite:///{tmp_path}/c.db"), Tuning(), clock=Clock(T0 + 10))


def met(pipe: Pipeline) -> int:
    """Hosts whose sequence start the sweep has found (seq_contig set)."""
    with pipe.store.tx() as conn:
        return int(conn.execute(text("SELECT count(*) FROM hosts WHERE seq_contig > 0")).scalar() or 0)


def test_a_fleet_met_for_the_first_time_is_spread_over_sweeps_and_every_host_reached(
        pipe: Pipeline, monkeypatch: pytest.MonkeyPatch) -> None:
    streams = [Stream(f"gpu-{i:03d}") for i in range(25)]
    for s in streams:
        for i in range(3):
            s.add("heartbeat", T0 + i)
        del s.events[1]  # a hole at seq 2 the agent explains (seq 4): each host needs a look of its own
        s.add("events_dropped", T0 + 3, reason="spool full", dropped=1, seq_ranges=[[2, 2]], first_ts=T0 + 1)
    pipe.ingest([m for s in streams for m in s.messages()])
    monkeypatch.setattr(p, "SWEEP_HOSTS_S", 0.0)  # the budget always spent: only the minimum each time
    monkeypatch.setattr(p, "SWEEP_HOSTS_MIN", 10)
    pipe.sweep()
    assert met(pipe) == 10, "one sweep, ten hosts on their own"
    pipe.sweep()
    assert met(pipe) == 20, "the next sweep goes on from where the previous stopped"
    pipe.sweep()
    assert met(pipe) == 25
    with pipe.store.tx() as conn:
        assert conn.execute(text("SELECT min(seq_contig) FROM hosts")).scalar() == 4, "every host, all its events"
    assert not [a for a in pipe.store.alerts() if a["kind"] in ("sequence_gap", "agent_silent")]


def test_a_fleet_met_for_the_first_time_with_no_hole_is_met_in_one_sweep(
        pipe: Pipeline, monkeypatch: pytest.MonkeyPatch) -> None:
    """Hosts whose events are one run from their first need no look of their own: all at once (a fleet's
    first minutes, thousands of hosts, held the sweep, and the CPU ingest shares, for many seconds)."""
    streams = [Stream(f"gpu-{i:03d}", seq_start=100 * i) for i in range(25)]
    for s in streams:
        for i in range(3):
            s.add("heartbeat", T0 + i)
    gap = Stream("gpu-gap")
    for i in range(3):
        gap.add("heartbeat", T0 + i)
    del gap.events[1]  # seq 2 never arrived: looked at on its own (a gap waits out its grace)
    pipe.ingest([m for s in [*streams, gap] for m in s.messages()])
    monkeypatch.setattr(p, "SWEEP_HOSTS_S", 0.0)
    monkeypatch.setattr(p, "SWEEP_HOSTS_MIN", 1)
    pipe.sweep()
    with pipe.store.tx() as conn:
        contig: dict[str, int] = {h: int(c) for h, c in conn.execute(text("SELECT host, seq_contig FROM hosts"))}
    assert contig == {**{f"gpu-{i:03d}": 100 * i + 3 for i in range(25)}, "gpu-gap": 1}, contig
    assert not [a for a in pipe.store.alerts() if a["kind"] in ("sequence_gap", "agent_silent")]


def test_the_turn_goes_round_the_fleet(pipe: Pipeline, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(p, "SWEEP_HOSTS_S", 0.0)
    monkeypatch.setattr(p, "SWEEP_HOSTS_MIN", 3)
    hosts = [cast(HostState, {"host": f"h{i}"}) for i in range(5)]
    seen = [[h["host"] for h in pipe._in_turn("r", hosts, 0.0)] for _ in range(3)]
    assert seen == [["h0", "h1", "h2"], ["h3", "h4", "h0"], ["h1", "h2", "h3"]]
    assert [h["host"] for h in pipe._in_turn("other", hosts, 0.0)] == ["h0", "h1", "h2"], "a cursor per rule"
    monkeypatch.setattr(p, "SWEEP_HOSTS_S", 60.0)
    assert len(list(pipe._in_turn("r", hosts, 1e18))) == 5, "within the budget, every host"
