"""The rules for what the agent's sensor says about itself and about bytes it cannot own: sensor
degraded or tampered with, raw packet sockets, unexplained egress, relinked weights, the agent's
lifecycle (silent, stopped, back) and sequence gaps; and the host-level rule when the sensor saw
everything. Driven through the real pipeline on SQLite and on PostgreSQL, from events made with
the shared models, in the orders an agent's events can arrive in.
"""

from __future__ import annotations

import itertools
import json
import random
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from tests.collector.scenarios import EBPF, EBPF_NO_LSM, EBPF_NO_UNIX, KERNEL, MB, NFQUEUE, NFQUEUE_CHOSEN, T0, WEIGHTS, Stream
from tests.collector.test_detections import Clock
from weightwarden.collector.detect.common import Tuning
from weightwarden.collector.ingest.pipeline import Pipeline
from weightwarden.collector.store.database import Store, normalize_url

GB = 1000 * MB


OPEN: list[Store] = []  # stores a test opened: closed before its database goes


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.privileged)])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    try:
        if request.param == "sqlite":
            yield f"sqlite:///{tmp_path}/c.db"
            return
        server: str = request.getfixturevalue("pg_url")
        name = f"t_{uuid.uuid4().hex[:12]}"
        engine = create_engine(normalize_url(server), isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            conn.execute(text(f"CREATE DATABASE {name}"))
        try:
            yield server.rsplit("/", 1)[0] + f"/{name}"
        finally:
            while OPEN:
                OPEN.pop().close()
            with engine.connect() as conn:
                conn.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            engine.dispose()
    finally:
        while OPEN:
            OPEN.pop().close()


def store(db: str) -> Store:
    OPEN.append(Store(db))
    return OPEN[-1]


def pipeline(db: str, now: float = T0 + 10, tune: Tuning | None = None) -> Pipeline:
    return Pipeline(store(db), tune or Tuning(), clock=Clock(now))


def feed(pipe: Pipeline, *streams: Stream, batch: int = 50, order: list[dict[str, Any]] | None = None) -> None:
    events = order if order is not None else [e for s in streams for e in s.events]
    for i in range(0, len(events), batch):
        chunk = events[i:i + batch]
        counts = pipe.ingest([(f"weightwarden/v1/{e['host']}/{e['type']}", json.dumps(e).encode()) for e in chunk])
        assert counts["rejected"] == 0, pipe.errors
    assert not pipe.errors, pipe.errors


def alerts(pipe: Pipeline, kind: str | None = None) -> list[dict[str, Any]]:
    return [a for a in pipe.store.alerts() if kind is None or a["kind"] == kind]


def one(pipe: Pipeline, kind: str) -> dict[str, Any]:
    found = alerts(pipe, kind)
    assert len(found) == 1, [(a["kind"], a["severity"], a["title"]) for a in pipe.store.alerts()]
    return found[0]


def beat(s: Stream, ts: float, sensor: dict[str, Any] | None = None) -> None:
    s.add("heartbeat", ts, **({"sensor": sensor} if sensor is not None else {}))


# -- sensor_degraded ---------------------------------------------------------------------------------


def test_a_feature_off_is_medium_the_fallback_high_and_whole_again_resolves(db: str) -> None:
    pipe = pipeline(db)
    s = Stream("gpu-s")
    beat(s, T0, EBPF)
    beat(s, T0 + 5, EBPF_NO_UNIX)
    feed(pipe, s, batch=1)
    a = one(pipe, "sensor_degraded")
    assert (a["severity"], a["state"]) == ("medium", "open")
    assert KERNEL in a["explanation"] and "unix_peers" in a["explanation"] and "-EACCES" in a["explanation"]
    assert a["evidence"]["kernel"] == KERNEL and a["evidence"]["lost"] == [
        "unix_peers (the verifier refused unix_stream_sendmsg: -EACCES)"]
    s2 = Stream("gpu-s", seq_start=s.factory.seq.last)
    beat(s2, T0 + 10, NFQUEUE)
    feed(pipe, s2)
    a = one(pipe, "sensor_degraded")
    assert a["severity"] == "high" and "nfqueue" in a["explanation"] and "no BTF" in a["explanation"]
    s3 = Stream("gpu-s", seq_start=s2.factory.seq.last)
    beat(s3, T0 + 15, EBPF)
    feed(pipe, s3)
    a = one(pipe, "sensor_degraded")
    assert a["state"] == "resolved" and "whole again" in a["resolved_by"]


def test_an_optional_feature_off_is_not_degraded(db: str) -> None:
    """What the agent reports off without calling itself degraded (AF_XDP bytes, the bpf LSM) raises nothing."""
    pipe = pipeline(db)
    s = Stream("gpu-o")
    beat(s, T0, EBPF_NO_LSM)
    beat(s, T0 + 5, EBPF_NO_LSM)
    feed(pipe, s)
    assert [a for a in pipe.store.alerts() if a["kind"] == "sensor_degraded"] == []


def test_a_fallback_the_operator_chose_is_low_and_says_so(db: str) -> None:
    """--attribution nfqueue on purpose: a known limit of the host, not an incident (no high on normal serving)."""
    pipe = pipeline(db)
    s = Stream("gpu-c")
    beat(s, T0, NFQUEUE_CHOSEN)
    feed(pipe, s)
    a = one(pipe, "sensor_degraded")
    assert (a["severity"], a["state"]) == ("low", "open")
    assert "configured fallback" in a["title"] and "configured for this fallback" in a["explanation"]
    s2 = Stream("gpu-c", seq_start=s.factory.seq.last)
    beat(s2, T0 + 5, NFQUEUE)  # then eBPF is refused on the next start: the same alert, now high
    feed(pipe, s2)
    assert one(pipe, "sensor_degraded")["severity"] == "high"


def test_the_sensors_verdict_does_not_depend_on_arrival_order(db: str) -> None:
    s = Stream("gpu-s")
    s.add("agent_started", T0, pid=1, policy="p", policy_digest="d", policy_path="/p", sensor=NFQUEUE)
    for i, state in enumerate([EBPF, EBPF_NO_UNIX, EBPF_NO_UNIX, EBPF, NFQUEUE, EBPF]):
        beat(s, T0 + 5 * (i + 1), state)
    results = set()
    for seed in range(4):
        events = s.events[:]
        random.Random(seed).shuffle(events)
        pipe = pipeline(db)
        with pipe.store.tx() as conn:
            for table in ("alerts", "sensors", "events", "hosts"):
                conn.execute(text(f"DELETE FROM {table}"))
        feed(pipe, order=events, batch=2)
        a = one(pipe, "sensor_degraded")
        results.add((a["severity"], a["state"], a["explanation"]))
    [(severity, state, _text)] = results
    assert (severity, state) == ("high", "resolved")  # the latest degraded report (NFQUEUE) describes it


# -- sensor_tampered -------------------------------------------------------------------------------------


def test_tampering_is_high_never_resolved_by_the_collector_and_blinds_the_host_level_rule(db: str) -> None:
    pipe = pipeline(db)
    s = Stream("gpu-t", sensor=EBPF)
    beat(s, T0, EBPF)
    s.read(T0 + 1, pid=100, nbytes=GB)
    s.upload(T0 + 20, 900, 600 * MB, 6, exe="/usr/bin/rclone")  # no link to the reader
    s.add("sensor_tampered", T0 + 40, changes=[{"kind": "link_detached", "name": "ww_egress", "detail": "detached"}],
          reattached=True, detected_ts=T0 + 40, blind_from_ts=T0 + 15)
    beat(s, T0 + 45, EBPF)
    feed(pipe, s)
    t = one(pipe, "sensor_tampered")
    assert (t["severity"], t["state"]) == ("high", "open") and "ww_egress" in t["explanation"]
    # The sensor may have been blind while those bytes left: the volume can be the weights.
    h = one(pipe, "host_exfiltration")
    assert h["severity"] == "high" and h["evidence"]["sensor_whole"] is False


# -- the host-level rule knows when the sensor saw everything -----------------------------------------


def test_an_unlinked_named_sender_is_medium_when_the_sensor_saw_everything(db: str) -> None:
    pipe = pipeline(db)
    whole = Stream("gpu-w", sensor=EBPF)
    whole.read(T0 + 1, pid=100, nbytes=GB)
    whole.upload(T0 + 20, 900, 800 * MB, 8, exe="/usr/bin/aws")  # a dataset: nothing links it to the reader
    fallback = Stream("gpu-f", sensor=NFQUEUE)
    fallback.read(T0 + 1, pid=100, nbytes=GB)
    fallback.upload(T0 + 20, 900, 800 * MB, 8, exe="/usr/bin/aws")
    old_agent = Stream("gpu-o")  # says nothing of its sensor
    old_agent.read(T0 + 1, pid=100, nbytes=GB)
    old_agent.upload(T0 + 20, 900, 800 * MB, 8, exe="/usr/bin/aws")
    feed(pipe, whole, fallback, old_agent)
    by_host = {a["host"]: a for a in alerts(pipe, "host_exfiltration")}
    assert by_host["gpu-w"]["severity"] == "medium" and by_host["gpu-w"]["evidence"]["sensor_whole"] is True
    assert "evidence of nothing" in by_host["gpu-w"]["explanation"]
    assert by_host["gpu-f"]["severity"] == "high" and by_host["gpu-o"]["severity"] == "high"


def test_bytes_nobody_could_be_named_for_stay_high_with_a_whole_sensor(db: str) -> None:
    pipe = pipeline(db)
    s = Stream("gpu-u", sensor=EBPF)
    s.read(T0 + 1, pid=100, nbytes=GB)
    for i in range(8):
        s.sample(T0 + 20 + i, [], unowned=100 * MB)
    feed(pipe, s)
    assert one(pipe, "host_exfiltration")["severity"] == "high"


# -- unexplained_egress ----------------------------------------------------------------------------------


def unexplained(s: Stream, ts: float, nbytes: int, iface: str = "eth0") -> None:
    s.add("unexplained_egress", ts, interface=iface, unexplained_tx_bytes=nbytes, tx_bytes=nbytes + 1000,
          attributed_tx_bytes=0, overhead_tx_bytes=1000, tx_packets=nbytes // 1400, first_ts=ts - 1, last_ts=ts,
          sensor=EBPF)


def test_unexplained_egress_alone_and_after_a_read(db: str) -> None:
    pipe = pipeline(db)
    small = Stream("gpu-x1", sensor=EBPF)
    small.started(T0, weights=2 * GB)
    unexplained(small, T0 + 10, 10 * MB)  # under the floor: headers it could not model, nothing more
    large = Stream("gpu-x2", sensor=EBPF)
    large.started(T0, weights=2 * GB)
    for i in range(4):
        unexplained(large, T0 + 10 + i, 50 * MB)
    sized = Stream("gpu-x3", sensor=EBPF)
    sized.started(T0, weights=2 * GB)
    sized.read(T0 + 1, pid=100, nbytes=2 * GB)
    for i in range(12):
        unexplained(sized, T0 + 10 + i, 100 * MB)
    feed(pipe, small, large, sized)
    got = {a["host"]: a for a in alerts(pipe, "unexplained_egress")}
    assert "gpu-x1" not in got
    assert got["gpu-x2"]["severity"] == "medium" and got["gpu-x2"]["evidence"]["bytes_sent"] == 200 * MB
    assert got["gpu-x3"]["severity"] == "high" and "eth0" in got["gpu-x3"]["explanation"]
    # And the host-level rule counts it like unowned flows: a weights-sized volume after a read is high.
    h = [a for a in alerts(pipe, "host_exfiltration") if a["host"] == "gpu-x3"]
    assert [a["severity"] for a in h] == ["high"] and h[0]["evidence"]["destinations"][0]["address"] == "(unexplained)"


# -- raw_socket --------------------------------------------------------------------------------------------


def raw(s: Stream, ts: float, pid: int, nbytes: int, allowed: bool = False, exe: str = "/usr/bin/python3.11",
        first: float | None = None) -> None:
    from tests.collector.scenarios import proc_fields

    s.add("raw_socket", ts, **proc_fields(pid, exe), family="packet", socket_type="raw", protocol=2048,
          interface="eth0", ifindex=2, bypass=True, tx_bytes=nbytes, tx_packets=nbytes // 1400, allowed=allowed,
          action="alert", first_ts=ts - 2 if first is None else first, last_ts=ts)


def test_raw_sockets_by_what_their_process_had(db: str) -> None:
    pipe = pipeline(db)
    s = Stream("gpu-r")
    s.started(T0, weights=2 * GB)
    raw(s, T0 + 5, 700, 3 * MB, exe="/usr/sbin/tcpdump")  # sends a little, read nothing: medium
    raw(s, T0 + 5, 701, 3 * MB, allowed=True, exe="/usr/sbin/lldpd")  # allowlisted: nothing
    raw(s, T0 + 6, 702, 1200 * MB)  # weights-sized, no link found: high
    s.read(T0 + 1, pid=703, nbytes=2 * GB)
    raw(s, T0 + 8, 703, 300 * MB)  # read the weights, sent 15% of them: high
    raw(s, T0 + 9, 703, 500 * MB, first=T0 + 6)  # the same socket counting up: 25%
    s.read(T0 + 1, pid=704, nbytes=2 * GB)
    raw(s, T0 + 9, 704, 1500 * MB)  # sent 75% of what it read: critical, as the exfiltration rule says
    feed(pipe, s)
    got = {a["evidence"]["process"]["pid"]: a for a in alerts(pipe, "raw_socket")}
    assert {p: a["severity"] for p, a in got.items()} == {700: "medium", 702: "high", 703: "high", 704: "critical"}
    assert got[703]["evidence"]["bytes_sent"] == 500 * MB and got[703]["evidence"]["files"] == [WEIGHTS]
    assert "python3.11 (pid 703" in got[703]["explanation"] and "qdisc bypass" in got[703]["explanation"]


def test_a_read_reported_after_the_raw_socket_raises_it(db: str) -> None:
    pipe = pipeline(db)
    s = Stream("gpu-r2")
    raw(s, T0 + 8, 703, 1500 * MB)
    s.read(T0 + 1, pid=703, nbytes=2 * GB, report_at=T0 + 20)
    feed(pipe, s, batch=1)
    assert one(pipe, "raw_socket")["severity"] == "critical"


# -- weights_relinked --------------------------------------------------------------------------------------


def relink(s: Stream, ts: float, inode: int = 1311770, to: str = "/tmp/x/notes.bin") -> None:
    s.add("weights_relinked", ts, pid=7001, name="ln", exe="/usr/bin/ln", uid=1000, how="hardlink", from_path=WEIGHTS,
          to_path=to, outside_tree=True, inode=inode, dev=2049, names=[WEIGHTS, to], size=2 * GB)


def read_inode(s: Stream, ts: float, pid: int, inode: int, exe: str = "/usr/bin/curl") -> None:
    s.read(ts, pid=pid, nbytes=2 * GB, exe=exe)
    s.events[-1]["data"].update(inode=inode, dev=2049, names=[WEIGHTS, "/tmp/x/notes.bin"])


@pytest.mark.parametrize("relink_last", [False, True])
def test_a_relink_is_medium_and_high_once_the_new_name_is_read_and_sent(db: str, relink_last: bool) -> None:
    pipe = pipeline(db)
    quiet = Stream("gpu-l1")
    relink(quiet, T0 + 1)
    s = Stream("gpu-l2")
    s.started(T0, weights=2 * GB)
    story = Stream("gpu-l2", seq_start=10)
    read_inode(story, T0 + 10, 800, 1311770)
    story.upload(T0 + 12, 800, 1500 * MB, 15, exe="/usr/bin/curl")
    relinked = Stream("gpu-l2", seq_start=100)
    relink(relinked, T0 + 2)
    feed(pipe, quiet, s, *([story, relinked] if relink_last else [relinked, story]), batch=5)
    got = {a["host"]: a for a in alerts(pipe, "weights_relinked")}
    assert got["gpu-l1"]["severity"] == "medium" and "/tmp/x/notes.bin" in got["gpu-l1"]["explanation"]
    assert got["gpu-l2"]["severity"] == "high" and got["gpu-l2"]["evidence"]["readers"] == [800]
    assert got["gpu-l2"]["evidence"]["sent_by"] and "curl (pid 800)" in got["gpu-l2"]["explanation"]


# -- agent_silent: the agent's lifecycle in any order -------------------------------------------------------


def will(host: str, connected_at: float) -> dict[str, Any]:
    return {"schema": 1, "id": uuid.uuid4().hex, "host": host, "seq": 0, "ts": connected_at, "type": "agent_lost",
            "data": {"reason": "connection lost", "connected_at": connected_at, "pid": 1}}


def stop_and_restart(host: str) -> tuple[list[dict[str, Any]], dict[str, Any], list[dict[str, Any]]]:
    """A run that heartbeats, stops cleanly (its will arriving too), and a second run."""
    s = Stream(host)
    s.started(T0)
    beat(s, T0 + 5)
    s.add("agent_stopping", T0 + 8, reason="SIGTERM", rules_left_in_force=True)
    after = Stream(host, seq_start=s.factory.seq.last)
    after.started(T0 + 30)
    beat(after, T0 + 35)
    return s.events, will(host, T0 + 0.5), after.events


@pytest.mark.parametrize("order", list(itertools.permutations(["stopping", "will", "restart"])))
def test_a_stop_and_restart_resolves_whatever_order_the_events_came_in(db: str, order: tuple[str, ...]) -> None:
    run, lost, after = stop_and_restart("gpu-a")
    parts = {"stopping": run[-1:], "will": [lost], "restart": after}
    pipe = pipeline(db, now=T0 + 40)
    feed(pipe, order=run[:-1])
    for name in order:
        feed(pipe, order=parts[name], batch=len(parts[name]))
    pipe.sweep()
    found = alerts(pipe, "agent_silent")
    assert all(a["state"] == "resolved" for a in found), found
    assert all(a["severity"] == "low" for a in found), "a clean stop is low, its will or not"


def test_a_clean_stop_with_its_will_in_one_batch_is_low_and_shows_when_it_stopped(db: str) -> None:
    run, lost, _after = stop_and_restart("gpu-a")
    pipe = pipeline(db, now=T0 + 40)
    feed(pipe, order=run[:-1])
    feed(pipe, order=[run[-1], lost], batch=2)
    a = one(pipe, "agent_silent")
    assert (a["severity"], a["state"], a["first_ts"]) == ("low", "open", T0 + 8) and "stopped" in a["title"]


def test_a_crash_is_high_shows_when_it_went_silent_and_a_heartbeat_after_it_resolves(db: str) -> None:
    s = Stream("gpu-c")
    s.started(T0)
    beat(s, T0 + 5)
    clock = Clock(T0 + 6)
    pipe = Pipeline(store(db), Tuning(), clock=clock)
    feed(pipe, s)
    with pipe.store.tx() as conn:
        seen = conn.execute(text("SELECT last_seen FROM hosts WHERE host='gpu-c'")).scalar()
    clock.now = T0 + 60  # the will arrives when the broker gives up on the connection
    feed(pipe, order=[will("gpu-c", T0 + 0.5)])
    a = one(pipe, "agent_silent")
    assert (a["severity"], a["state"]) == ("high", "open") and a["first_ts"] == seen, "when it went silent"
    back = Stream("gpu-c", seq_start=s.factory.seq.last)
    beat(back, T0 + 61)  # the same run, reconnected (a network blip): no agent_started
    feed(pipe, back)
    assert one(pipe, "agent_silent")["state"] == "resolved"


def test_silent_after_three_of_its_own_heartbeat_intervals(db: str) -> None:
    s = Stream("gpu-h")
    s.started(T0)
    for i in range(6):
        beat(s, T0 + 5 * i)  # every 5 s: silent after 15 s
    clock = Clock(T0 + 26)
    pipe = Pipeline(store(db), Tuning(), clock=clock)
    feed(pipe, s, batch=2)
    with pipe.store.tx() as conn:  # the wall clock of arrival is the pipeline's in this test
        conn.execute(text("UPDATE hosts SET last_seen = :t WHERE host = 'gpu-h'"), {"t": T0 + 25})
    clock.now = T0 + 25 + 14
    pipe.sweep()
    assert alerts(pipe, "agent_silent") == []
    clock.now = T0 + 25 + 16
    pipe.sweep()
    a = one(pipe, "agent_silent")
    assert (a["severity"], a["first_ts"]) == ("high", T0 + 25) and "heartbeats are missing" in a["explanation"]
    more = Stream("gpu-h", seq_start=s.factory.seq.last)
    beat(more, T0 + 45)
    feed(pipe, more)
    pipe.sweep()
    assert one(pipe, "agent_silent")["state"] == "resolved"


@pytest.mark.parametrize(("fixed", "quiet", "loud"), [(8.0, 7.0, 9.0), (30.0, 29.0, 31.0)])
def test_a_fixed_silent_after_overrides_the_learned_interval(db: str, fixed: float, quiet: float,
                                                             loud: float) -> None:
    """``collector run --silent-after`` (Tuning.silent_after_s): the time is the operator's, shorter or
    longer than three of the agent's own 5 s heartbeat intervals (15 s)."""
    s = Stream("gpu-k")
    s.started(T0)
    for i in range(6):
        beat(s, T0 + 5 * i)
    clock = Clock(T0 + 26)
    pipe = Pipeline(store(db), Tuning(silent_after_s=fixed), clock=clock)
    feed(pipe, s, batch=2)
    with pipe.store.tx() as conn:
        conn.execute(text("UPDATE hosts SET last_seen = :t WHERE host = 'gpu-k'"), {"t": T0 + 25})
    clock.now = T0 + 25 + quiet
    pipe.sweep()
    assert alerts(pipe, "agent_silent") == []
    clock.now = T0 + 25 + loud
    pipe.sweep()
    a = one(pipe, "agent_silent")
    assert (a["severity"], a["first_ts"]) == ("high", T0 + 25)


# -- sequence_gap keeps every range ---------------------------------------------------------------------------


def test_every_missing_range_stays_in_the_gap_alert(db: str) -> None:
    clock = Clock(T0 + 10)
    pipe = Pipeline(store(db), Tuning(), clock=clock)
    s = Stream("gpu-g")
    for i in range(40):
        beat(s, T0 + i)
    first, second = s.events[5:8], s.events[30:33]  # seq 6..8, then 31..33
    feed(pipe, order=[e for e in s.events[:20] if e not in first])
    pipe.sweep()
    clock.now += 11
    pipe.sweep()
    feed(pipe, order=[e for e in s.events[20:] if e not in second])
    pipe.sweep()
    clock.now += 11
    pipe.sweep()
    a = one(pipe, "sequence_gap")
    assert a["evidence"]["missing_seq_ranges"] == [[6, 8], [31, 33]] and a["evidence"]["missing"] == 6


def test_the_host_page_shows_the_sensors_state(db: str) -> None:
    from weightwarden.collector.web import queries
    from weightwarden.collector.web.render import env

    pipe = pipeline(db)
    s = Stream("gpu-p")
    beat(s, T0, EBPF_NO_UNIX)
    feed(pipe, s)

    def rendered() -> str:
        with pipe.store.tx() as conn:
            doc = queries.host_detail(conn, "gpu-p")
        assert doc is not None
        return env.get_template("host.html").render(h=doc, chart="", series={}, window="1h", ranges=["1h"],
                                                     now=T0, user=None, csrf=None, may_triage=False, may_admin=False)

    html = rendered()
    assert "unix_peers" in html and "-EACCES" in html and KERNEL in html and "degraded" in html
    s2 = Stream("gpu-p", seq_start=s.factory.seq.last)
    beat(s2, T0 + 5, EBPF)
    feed(pipe, s2)
    html = rendered()
    assert "unix_peers" not in html and "Whole:" in html
