"""Every detection, driven from event streams through the real pipeline and a real SQLite store."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from weightwarden.collector.correlate import Tuning
from weightwarden.collector.pipeline import Pipeline
from weightwarden.collector.store import Store
from tests.collector.scenarios import MB, T0, WEIGHTS, Stream


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def pipe(tmp_path: Path) -> Pipeline:
    return Pipeline(Store(f"sqlite:///{tmp_path}/c.db"), Tuning(), clock=Clock(T0 + 10))


def run(pipe: Pipeline, stream: Stream) -> list[dict[str, Any]]:
    counts = pipe.ingest(stream.messages())
    assert counts["rejected"] == 0 and not pipe.errors, pipe.errors
    return pipe.store.alerts()


def kinds(alerts: list[dict[str, Any]]) -> dict[str, str]:
    return {a["kind"]: a["severity"] for a in alerts}


def test_direct_exfiltration(pipe: Pipeline) -> None:
    s = Stream()
    s.started(T0)
    s.read(T0 + 1, pid=100, nbytes=256 * MB)
    s.send(T0 + 5, pid=100, nbytes=100 * MB)
    s.send(T0 + 6, pid=100, nbytes=100 * MB)
    [alert] = run(pipe, s)
    assert alert["kind"] == "exfiltration" and alert["severity"] == "critical"
    ev = alert["evidence"]
    assert ev["process"]["pid"] == 100 and ev["process"]["name"] == "python3.11"
    assert ev["files"] == [WEIGHTS] and ev["destinations"][0]["address"] == "203.0.113.9"
    assert ev["bytes_sent"] == 200 * MB and ev["bytes_read"] == 256 * MB
    assert ev["projected_seconds_for_rest"] == pytest.approx(56 * MB * 8 / (100 * MB * 8), rel=0.01)
    assert "never contacted by this program before" in alert["explanation"]
    assert "203.0.113.9:443" in alert["explanation"] and WEIGHTS in alert["explanation"]


def test_upload_reported_before_the_read_still_correlates(pipe: Pipeline) -> None:
    s = Stream()
    s.send(T0 + 5, pid=100, nbytes=200 * MB)  # the sample arrives first...
    s.read(T0 + 1, pid=100, nbytes=256 * MB)  # ...the read's final record after it
    assert kinds(run(pipe, s)) == {"exfiltration": "critical"}


def test_no_high_alert_without_the_read_or_without_the_upload(pipe: Pipeline) -> None:
    upload_only = Stream("gpu-2")
    upload_only.send(T0 + 5, pid=100, nbytes=200 * MB)
    read_only = Stream("gpu-3")
    read_only.read(T0 + 1, pid=100, nbytes=256 * MB)
    allowlisted = Stream("gpu-4")
    allowlisted.read(T0 + 1, pid=100, nbytes=256 * MB)
    allowlisted.send(T0 + 5, pid=100, nbytes=200 * MB, allowed=True)
    other_process = Stream("gpu-5")
    other_process.read(T0 + 1, pid=100, nbytes=256 * MB)
    other_process.send(T0 + 5, pid=999, nbytes=200 * MB)
    for s in (upload_only, read_only, allowlisted, other_process):
        assert not [a for a in run(pipe, s) if a["severity"] in ("high", "critical")], s.host


def test_a_pipeline_is_linked_by_its_pipe_not_by_its_parent(pipe: Pipeline) -> None:
    s = Stream()
    s.read(T0 + 1, pid=200, nbytes=256 * MB, exe="/usr/bin/tar", ppid=50, pipes=[9001])  # tar cf - /srv/models |
    s.send(T0 + 5, pid=201, nbytes=200 * MB, exe="/usr/bin/curl", ppid=50, pipes=[9001])  # curl -T - https://...
    s.send(T0 + 5, pid=202, nbytes=200 * MB, exe="/usr/bin/python3", ppid=50)  # a sibling with no pipe to tar
    [alert] = run(pipe, s)
    assert alert["kind"] == "exfiltration" and alert["evidence"]["readers"] == [200]
    assert alert["evidence"]["process"]["name"] == "curl"


def test_a_child_uploading_what_its_parent_read(pipe: Pipeline) -> None:
    s = Stream()
    s.read(T0 + 1, pid=300, nbytes=256 * MB)
    s.send(T0 + 5, pid=301, nbytes=200 * MB, exe="/usr/bin/curl", ppid=300)
    [alert] = run(pipe, s)
    assert alert["evidence"]["process"]["pid"] == 301 and alert["evidence"]["readers"] == [300]


def test_staged_copy_then_upload(pipe: Pipeline) -> None:
    s = Stream()
    s.read(T0 + 1, pid=300, nbytes=256 * MB, exe="/usr/bin/cp")
    s.add("weights_copy", T0 + 4, pid=300, name="cp", exe="/usr/bin/cp", uid=1000, sources=[WEIGHTS],
          source_bytes_read=256 * MB, destination="/tmp/.c/blob", destination_size=256 * MB, path="/tmp/.c/blob")
    s.read(T0 + 600, pid=301, nbytes=256 * MB, path="/tmp/.c/blob", exe="/usr/bin/curl", staged=[WEIGHTS])
    s.send(T0 + 605, pid=301, nbytes=256 * MB, exe="/usr/bin/curl")
    alerts = run(pipe, s)
    [staged] = [a for a in alerts if a["kind"] == "staged_exfiltration"]
    assert staged["severity"] == "critical" and staged["evidence"]["staged_from"] == [WEIGHTS]
    assert "staged copy" in staged["explanation"]


def test_many_short_uploads_that_add_up(pipe: Pipeline) -> None:
    s = Stream()
    s.read(T0 + 1, pid=400, nbytes=100 * MB, exe="/usr/bin/tar")
    for i in range(20):  # 20 curl processes, 5 MB each, none related to the reader
        s.send(T0 + 10 + i * 30, pid=500 + i, nbytes=5 * MB, exe="/usr/bin/curl")
    alerts = run(pipe, s)
    [chunk] = [a for a in alerts if a["kind"] == "chunked_exfiltration"]
    assert chunk["severity"] == "critical" and chunk["evidence"]["processes"] == 20
    assert not [a for a in alerts if a["kind"] == "exfiltration"], "no single process looks guilty"


def test_slow_exfiltration_under_the_cap_for_hours(pipe: Pipeline) -> None:
    s = Stream()
    s.started(T0, weights=1000 * MB)
    for minute in range(6 * 60):  # 2 MB a minute for six hours: 0.27 Mbit/s, under any cap
        s.send(T0 + 60 * minute, pid=600, nbytes=2 * MB, address="198.51.100.7", exe="/usr/bin/rsync")
    alerts = run(pipe, s)
    [slow] = [a for a in alerts if a["kind"] == "slow_exfiltration"]
    assert slow["severity"] == "high" and slow["evidence"]["bytes_sent"] >= 256 * MB
    assert slow["evidence"]["destinations"][0]["address"] == "198.51.100.7"
    assert slow["count"] > 1, "one incident, updated, not one alert per sample"
    assert len([a for a in alerts if a["kind"] == "slow_exfiltration"]) == 1


@pytest.mark.parametrize(("type_", "data", "kind", "severity"), [
    ("canary_read", {"pid": 7, "path": "/srv/models/.canary", "severity": "critical", "name": "cat",
                     "exe": "/usr/bin/cat", "uid": 0}, "canary_read", "critical"),
    ("cap_hit", {"cap": "host-default", "action": "shape", "rate_bps": 20_000_000, "observed_bps": 19_900_000,
                 "bytes": 2_500_000}, "cap_hit", "low"),
    ("budget_exhausted", {"budget": "daily", "limit_bytes": 50 * 10**9, "window_s": 86400, "action": "block",
                          "used_bytes": 50 * 10**9 + 1}, "budget_exhausted", "high"),
    ("enforcement_drift", {"drift": ["nftables rules missing"], "restored": True}, "enforcement_drift", "high"),
    ("threshold_crossed", {"threshold": "big", "severity": "high", "bytes_in_window": 3 * 10**9, "window_s": 600,
                           "limit_bytes": 2 * 10**9, "process": {"pid": 9, "name": "scp", "exe": "/usr/bin/scp",
                                                                 "uid": 1000, "tx_bytes": 3 * 10**9,
                                                                 "destinations": []}},
     "threshold_crossed", "high"),
])
def test_single_event_detections(pipe: Pipeline, type_: str, data: dict[str, Any], kind: str, severity: str) -> None:
    s = Stream()
    s.add(type_, T0, **data)
    s.add(type_, T0 + 60, **data)  # the same incident again: grouped, not duplicated
    [alert] = run(pipe, s)
    assert (alert["kind"], alert["severity"], alert["count"]) == (kind, severity, 2)
    assert alert["explanation"] and alert["evidence"]["events"]


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


def test_redelivered_events_are_stored_once(pipe: Pipeline) -> None:
    s = Stream()
    s.read(T0 + 1, pid=100, nbytes=256 * MB)
    s.send(T0 + 5, pid=100, nbytes=200 * MB)
    first = pipe.ingest(s.messages())
    again = pipe.ingest(s.messages())
    assert first["stored"] == 2 and again == {"stored": 0, "duplicates": 2, "rejected": 0}
    [alert] = pipe.store.alerts()
    assert alert["evidence"]["bytes_sent"] == 200 * MB


def test_ack_and_resolve_record_who_and_when(pipe: Pipeline) -> None:
    s = Stream()
    s.add("enforcement_drift", T0, drift=["tc qdisc missing on eth0"], restored=True)
    [alert] = run(pipe, s)
    with pipe.store.tx() as conn:
        assert pipe.store.set_state(conn, alert["id"], "acknowledged", "alice", T0 + 5) == 1
    got = pipe.store.alert(alert["id"])
    assert got is not None and (got["state"], got["acked_by"], got["acked_at"]) == ("acknowledged", "alice", T0 + 5)
    with pipe.store.tx() as conn:
        pipe.store.set_state(conn, alert["key"], "resolved", "bob", T0 + 9)
    got = pipe.store.alert(alert["id"])
    assert got is not None and (got["state"], got["resolved_by"]) == ("resolved", "bob")


def test_retention_purges_old_events(pipe: Pipeline) -> None:
    s = Stream()
    s.add("heartbeat", T0 - 40 * 86400)
    s.add("heartbeat", T0)
    run(pipe, s)
    assert pipe.store.purge(30 * 86400, now=T0)["events"] == 1
    assert pipe.store.count("events") == 1
