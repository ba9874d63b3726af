"""The sweep: silent agents, sequence gaps as ranges, a second look at recent facts, each host on its own."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from sqlalchemy import text

from tests.collector.scenarios import T0, Stream
from tests.collector.test_detections import Clock, run
from weightwarden.collector.detect.common import Tuning
from weightwarden.collector.ingest.pipeline import Pipeline, subtract
from weightwarden.collector.store.database import Store


@pytest.fixture
def pipe(tmp_path: Path) -> Pipeline:
    return Pipeline(Store(f"sqlite:///{tmp_path}/c.db"), Tuning(), clock=Clock(T0 + 10))


def test_agent_silent_by_last_will_and_back_again(pipe: Pipeline) -> None:
    s = Stream()
    s.started(T0)
    s.add("heartbeat", T0 + 1, policy="p", backend="nftables", rules_in_force=True, caps=1)
    run(pipe, s)
    will = {"schema": 1, "id": "f" * 32, "host": "gpu-1", "seq": 0, "ts": T0, "type": "agent_lost",
            "data": {"reason": "connection lost", "connected_at": T0, "pid": 1}}
    pipe.ingest([("weightwarden/v1/gpu-1/agent_lost", json.dumps(will).encode())])
    [alert] = pipe.store.alerts()
    assert alert["kind"] == "agent_silent" and alert["severity"] == "high" and alert["state"] == "open"
    pipe.clock.now = T0 + 100  # type: ignore[attr-defined]
    s2 = Stream()
    s2.factory.seq.last = 2  # the same agent, continuing its sequence
    s2.add("agent_started", T0 + 100, pid=2, policy="p", policy_digest="d", features={})
    pipe.ingest(s2.messages())
    assert pipe.store.alerts()[0]["state"] == "resolved"


def test_agent_silent_by_missed_heartbeats(pipe: Pipeline) -> None:
    s = Stream()
    s.started(T0)
    run(pipe, s)
    pipe.sweep()
    assert pipe.store.alerts() == []
    pipe.clock.now = T0 + 10 + 91  # type: ignore[attr-defined]
    pipe.sweep()
    [alert] = pipe.store.alerts()
    assert alert["kind"] == "agent_silent" and "heartbeats are missing" in alert["explanation"]


def test_sequence_gaps_reported_unless_explained(pipe: Pipeline) -> None:
    gappy = Stream("gpu-g")
    for i in range(20):
        gappy.add("heartbeat", T0 + i)
    del gappy.events[10:14]  # seq 11..14 never arrive
    dropped = Stream("gpu-d")
    for i in range(20):
        dropped.add("heartbeat", T0 + i)
    lost = dropped.events[10:14]
    del dropped.events[10:14]
    dropped.add("events_dropped", T0 + 30, reason="spool over its size limit", dropped=4,
                by_type={"heartbeat": 4}, seq_ranges=[[lost[0]["seq"], lost[-1]["seq"]]])
    pipe.ingest(gappy.messages() + dropped.messages())
    pipe.sweep()
    assert not [a for a in pipe.store.alerts() if a["kind"] == "sequence_gap"], "a grace period for redelivery"
    pipe.clock.now += 11  # type: ignore[attr-defined]
    pipe.sweep()
    by_host = {(a["host"], a["kind"]): a for a in pipe.store.alerts()}
    assert by_host[("gpu-g", "sequence_gap")]["evidence"]["missing_seq_ranges"] == [[11, 14]]
    assert ("gpu-d", "sequence_gap") not in by_host
    assert by_host[("gpu-d", "events_dropped")]["severity"] == "low"


def test_a_fresh_collector_does_not_call_history_it_never_had_missing(pipe: Pipeline) -> None:
    s = Stream("gpu-old", seq_start=41_000)  # the agent has run for months; this collector is new
    for i in range(20):
        s.add("heartbeat", T0 + i)
    pipe.ingest(s.messages())
    pipe.sweep()
    pipe.clock.now += 60  # type: ignore[attr-defined]
    pipe.sweep()
    assert [a for a in pipe.store.alerts() if a["kind"] == "sequence_gap"] == []
    late = Stream("gpu-old", seq_start=41_000 - 5)  # older events replayed by its spool: not missing either
    late.add("heartbeat", T0 - 5)
    pipe.ingest(late.messages())
    pipe.clock.now += 60  # type: ignore[attr-defined]
    pipe.sweep()
    assert [a for a in pipe.store.alerts() if a["kind"] == "sequence_gap"] == []


def test_a_jump_of_millions_is_one_range(pipe: Pipeline) -> None:
    s = Stream("gpu-j")
    for i in range(10):
        s.add("heartbeat", T0 + i)
    jump = Stream("gpu-j", seq_start=5_000_010)
    jump.add("heartbeat", T0 + 11)
    pipe.ingest(s.messages() + jump.messages())
    t = time.process_time()
    pipe.sweep()
    pipe.clock.now += 11  # type: ignore[attr-defined]
    pipe.sweep()
    spent = time.process_time() - t
    [gap] = [a for a in pipe.store.alerts() if a["kind"] == "sequence_gap"]
    assert gap["evidence"]["missing_seq_ranges"] == [[11, 5_000_010]] and gap["evidence"]["missing"] == 5_000_000
    assert spent < 5, "ranges are never expanded"  # expanded, this took seconds and hundreds of MiB


def test_ranges_subtract_without_expanding() -> None:
    assert subtract([(1, 10), (20, 10**12)], [(3, 4), (8, 25), (10**9, 10**12 - 1)]) == [
        (1, 2), (5, 7), (26, 10**9 - 1), (10**12, 10**12)]
    assert subtract([(5, 6)], []) == [(5, 6)] and subtract([(5, 6)], [(1, 100)]) == []


def test_one_hosts_odd_state_does_not_stop_the_sweep_for_others(pipe: Pipeline) -> None:
    odd, fine = Stream("gpu-odd"), Stream("gpu-fine")
    for s in (odd, fine):
        s.started(T0)
    odd.add("heartbeat", T0 + 2)
    run(pipe, odd)
    run(pipe, fine)
    with pipe.store.tx() as conn:  # a stored events_dropped whose data no longer parses
        conn.execute(text("INSERT INTO events(id, host, seq, ts, type, data, received_at) VALUES "
                          "('e' || hex(randomblob(15)), 'gpu-odd', 99, :t, 'events_dropped', '{not json', :t)"),
                     {"t": T0})
    pipe.clock.now = T0 + 200  # type: ignore[attr-defined]
    pipe.sweep()
    silent = {a["host"] for a in pipe.store.alerts() if a["kind"] == "agent_silent"}
    assert silent == {"gpu-odd", "gpu-fine"}, "the silent check ran for both; the odd host's gap check failed alone"
    assert pipe.store.counters()["sweep_errors"] == 1
    assert any("gpu-odd" in e and "JSONDecodeError" in e for e in pipe.errors)


def test_a_stale_verdict_written_late_is_judged_again(pipe: Pipeline) -> None:
    """Another collector judged from a snapshot missing facts and committed last: the sweep looks again at
    verdicts written lately, though every fact behind them arrived long ago."""
    from tests.collector.scenarios import MB

    s = Stream()
    s.read(T0 + 1, pid=400, nbytes=256 * MB, start=T0 - 10)
    s.send(T0 + 5, pid=400, nbytes=200 * MB, start=T0 - 10)
    [alert] = [a for a in run(pipe, s) if a["kind"] == "exfiltration"]
    assert alert["severity"] == "critical"
    with pipe.store.tx() as conn:
        for table in ("egress_raw", "weight_reads", "relays"):  # the facts are old news to the sweep
            conn.execute(text(f"UPDATE {table} SET received_at = received_at - 3600"))
        conn.execute(text("UPDATE alerts SET severity = 'medium', severity_rank = 2, updated_at = :n WHERE key = :k"),
                     {"n": T0 + 10, "k": alert["key"]})
    pipe.sweep()
    assert pipe.store.alert(alert["key"])["severity"] == "critical"  # type: ignore[index]
    with pipe.store.tx() as conn:  # a verdict that holds is not written again: the sweep settles
        before = conn.execute(text("SELECT updated_at FROM alerts WHERE key = :k"), {"k": alert["key"]}).scalar()
    pipe.clock.now = T0 + 11  # type: ignore[attr-defined]
    pipe.sweep()
    with pipe.store.tx() as conn:
        assert conn.execute(text("SELECT updated_at FROM alerts WHERE key = :k"), {"k": alert["key"]}).scalar() == before


def test_a_stale_verdict_written_during_a_long_pause_is_judged_again(pipe: Pipeline) -> None:
    """A slow sweep is followed by a longer pause: the next looks back to when the previous began, so a
    verdict written from an old snapshot in between is looked at, however long the pause."""
    from tests.collector.scenarios import MB

    s = Stream()
    s.read(T0 + 1, pid=400, nbytes=256 * MB, start=T0 - 10)
    s.send(T0 + 5, pid=400, nbytes=200 * MB, start=T0 - 10)
    [alert] = [a for a in run(pipe, s) if a["kind"] == "exfiltration"]
    pipe.clock.now = T0 + 10  # type: ignore[attr-defined]
    pipe.sweep()  # the previous sweep
    with pipe.store.tx() as conn:
        for table in ("egress_raw", "weight_reads", "relays"):
            conn.execute(text(f"UPDATE {table} SET received_at = received_at - 3600"))
        conn.execute(text("UPDATE alerts SET severity = 'medium', severity_rank = 2, updated_at = :n WHERE key = :k"),
                     {"n": T0 + 15, "k": alert["key"]})
    pipe.clock.now = T0 + 40  # type: ignore[attr-defined]  # 25 s after the stale write: past a fixed window
    pipe.sweep()
    assert pipe.store.alert(alert["key"])["severity"] == "critical"  # type: ignore[index]


def test_a_fleet_with_nothing_to_say_costs_the_sweep_a_few_statements(pipe: Pipeline) -> None:
    """The sweep visits every host every second: healthy ones (no hole, heard from lately) are settled
    for the whole fleet at once, not with transactions of their own."""
    from sqlalchemy import event

    streams = [Stream(f"gpu-{i:03d}") for i in range(200)]
    for s in streams:
        for i in range(3):
            s.add("heartbeat", T0 + i)
    pipe.ingest([m for s in streams for m in s.messages()])
    pipe.sweep()  # the first meeting: each host's sequence start is found on its own
    for s in streams:
        s.events.clear()
        s.add("heartbeat", T0 + 5)
    pipe.ingest([m for s in streams for m in s.messages()])
    statements: list[str] = []
    event.listen(pipe.store.engine, "before_cursor_execute", lambda *a: statements.append(a[2]))
    pipe.clock.now = T0 + 11  # type: ignore[attr-defined]
    pipe.sweep()
    assert len(statements) < 60, len(statements)
    with pipe.store.tx() as conn:
        assert conn.execute(text("SELECT min(seq_contig) FROM hosts")).scalar() == 4, "every host moved on"
    assert not [a for a in pipe.store.alerts() if a["kind"] in ("sequence_gap", "agent_silent")]
