"""Two collectors on one PostgreSQL judging one host's incident at once (a shared subscription dealt the
sender's last two samples one to each). Each batch's facts are stored, then both judge before either
commits: the verdict written last must count both samples (store.host_locks), not only its own
collector's (a write skew: the alert of 116 MB when 120 MB left, seen once in test_scale_out)."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import text

from tests.collector.scenarios import MB, T0, Stream
from tests.collector.test_detections import Clock
from weightwarden.collector.detect import detector as engine
from weightwarden.collector.detect.common import Tuning
from weightwarden.collector.detect.rule import Units
from weightwarden.collector.ingest.pipeline import Pipeline
from weightwarden.collector.store import host_locks
from weightwarden.collector.store.database import Store

pytestmark = pytest.mark.privileged  # PostgreSQL runs as its own user: needs root

HOLD_S = 1.5  # how long a judged batch waits for the other to judge too before it commits


@pytest.fixture
def url(pg_url: str) -> Iterator[str]:
    st = Store(pg_url)
    with st.tx() as conn:  # one cluster per module: start from empty tables
        for table in ("events", "alerts", "hosts", "egress_raw", "history", "processes", "weight_reads", "relays",
                      "pipe_ends"):
            conn.execute(text(f"DELETE FROM {table}"))
    st.close()
    yield pg_url


def judged_together(pipes: list[Pipeline]) -> None:
    """Each pipeline's judgement waits until both have stored their batch's facts; after judging, each waits
    (up to HOLD_S) for the other to have judged too before it commits. Without a lock both judge from their
    own snapshots; with it the second waits in its judgement, the first commits when its wait times out."""
    stored, judged = threading.Barrier(len(pipes)), threading.Barrier(len(pipes), timeout=HOLD_S)
    for p in pipes:
        original = p.detector.evaluate

        def evaluate(conn: Any, units: Units, now: float, original: Any = original) -> int:
            stored.wait(10)
            failed: int = original(conn, units, now)
            with contextlib.suppress(threading.BrokenBarrierError):  # the other waits for the host's lock: commit
                judged.wait()
            return failed

        p.detector.evaluate = evaluate  # type: ignore[method-assign]


def run(url: str) -> dict[str, Any]:
    a, b = (Pipeline(Store(url), Tuning(), clock=Clock(T0 + 10)) for _ in range(2))
    for name, p in (("a", a), ("b", b)):  # as the service sets them up
        p.counter_part, p.defer_hosts, p.shared = name, True, True
    s = Stream()
    s.read(T0 + 1, pid=400, nbytes=256 * MB, start=T0 - 10)
    s.send(T0 + 4, pid=400, nbytes=100 * MB, start=T0 - 10)
    a.ingest(s.messages())
    s.events.clear()
    s.send(T0 + 5, pid=400, nbytes=12 * MB, start=T0 - 10)
    b.ingest(s.messages())  # the theft so far, judged: 112 MB; each collector has met the sender and its destination
    s.events.clear()
    s.send(T0 + 6, pid=400, nbytes=4 * MB, start=T0 - 10)
    first = s.messages()
    s.events.clear()
    s.send(T0 + 7, pid=400, nbytes=4 * MB, start=T0 - 10)
    second = s.messages()
    judged_together([a, b])
    errors: list[BaseException] = []

    def ingest(p: Pipeline, batch: list[tuple[str, bytes]]) -> None:
        try:
            assert p.ingest(batch)["stored"] == 1
        except BaseException as exc:  # noqa: BLE001 - reported by the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=ingest, args=(a, first)), threading.Thread(target=ingest, args=(b, second))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors, errors
    assert not any(t.is_alive() for t in threads)
    [alert] = [x for x in a.store.alerts() if x["kind"] == "exfiltration"]
    for p in (a, b):
        p.store.close()
    return alert


def test_two_collectors_judging_one_host_at_once_write_the_verdict_of_both_their_facts(url: str) -> None:
    alert = run(url)
    assert alert["evidence"]["bytes_sent"] == 120 * MB, alert["evidence"]["bytes_sent"] / MB


def test_without_the_lock_the_verdict_written_last_misses_the_other_collectors_sample(
        url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The harness itself: with the judgement lock taken away, the write skew happens every time (so the
    test above would see it)."""
    monkeypatch.setattr(engine, "lock_hosts", lambda *_a, **_k: 0)
    alert = run(url)
    assert alert["evidence"]["bytes_sent"] == 116 * MB, alert["evidence"]["bytes_sent"] / MB


def test_host_keys_are_bounded_spread_and_stable() -> None:
    """However large the fleet, a transaction holds at most HOST_KEYS locks (PostgreSQL's shared lock
    table is 6,400 slots by default for the whole server), spread over all of them."""
    keys = [host_locks.host_key(f"gpu-{i:05d}") for i in range(20_000)]
    assert all(0 <= k < host_locks.HOST_KEYS for k in keys)
    assert len(set(keys)) == host_locks.HOST_KEYS
    assert host_locks.host_key("gpu-00001") == host_locks.host_key("gpu-00001")


def test_a_batch_of_a_large_fleet_holds_a_bounded_number_of_locks(url: str) -> None:
    """A batch judging 30,000 hosts (a large fleet's samples) takes its locks without exhausting the
    server's shared lock table (6,400 slots by default, with some slack): one lock per host failed
    with "out of shared memory"."""
    st = Store(url)
    try:
        with st.tx() as conn:
            taken = host_locks.lock_hosts(conn, [f"gpu-{i:05d}" for i in range(30_000)])
            held = conn.execute(text("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND classid = :ns "
                                     "AND pid = pg_backend_pid()"), {"ns": host_locks.NAMESPACE}).scalar_one()
        assert taken == held == host_locks.HOST_KEYS
    finally:
        st.close()
