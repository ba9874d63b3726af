"""The same facts give the same alerts, whatever order they arrive in and however many collectors share them.

One recorded stream of many incidents (thefts, serving, relays, a verdict that later facts
lower, single-event alerts) is replayed in shuffled orders, in random batches dealt to 1, 2
or 3 collectors sharing one database, with sweeps at random moments. Every replay must end
with exactly the alerts of the in-order replay: same keys, kinds, severities and evidence.
(tests/collector/test_scale_out.py does the same through MQTT and PostgreSQL.)
"""

from __future__ import annotations

import functools
import json
import os
import random
import uuid
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from tests.collector.scenarios import EBPF, EBPF_NO_UNIX, MB, NFQUEUE, T0, Stream
from tests.collector.test_detections import Clock
from tests.corpus import recorded
from tests.corpus.replay import message
from weightwarden.collector.ingest.pipeline import Pipeline
from weightwarden.collector.store.database import Store, normalize_url

WALL_CLOCK_KINDS = {"agent_silent", "sequence_gap"}  # about when the collector looked, not about the facts


def story() -> list[dict[str, Any]]:
    """Several incidents and some normal work, on several hosts."""
    streams = (recorded.direct() + recorded.tar_pipe_curl() + recorded.split_parts() + recorded.holder_burst(False)
               + recorded.relay("t-chain", "unix", "/usr/sbin/haproxy", 530, 443, depth=2) + recorded.chunked()
               + recorded.exec_child() + recorded.network_storage("t-nfs", "nfs4") + recorded.canary()
               + recorded.warmup_then_dataset() + recorded.log_shipping() + recorded.pid_reuse())
    down = Stream("t-down")  # a verdict later facts lower: critical while only one shard was known
    down.read(T0 + 1, pid=700, nbytes=100 * MB, path="/srv/models/a.safetensors")
    down.send(T0 + 5, pid=700, nbytes=60 * MB)
    for i in range(3):
        down.read(T0 + 1, pid=700, nbytes=300 * MB, path=f"/srv/models/{'bcd'[i]}.safetensors", report_at=T0 + 9)
    caps = Stream("t-caps")  # event-decided alerts: the latest event by its own time wins
    for i in range(5):
        caps.add("cap_hit", T0 + i, cap="host-default", action="shape" if i < 4 else "block", rate_bps=10**7,
                 observed_bps=10**7 - i, bytes=10**6 * (i + 1))
    sensor = Stream("t-sensor")  # the sensor's state over time: the latest report by the agent's clock decides
    for i, state in enumerate([EBPF, EBPF_NO_UNIX, NFQUEUE, EBPF_NO_UNIX, EBPF]):
        sensor.add("heartbeat", T0 + 5 * i, sensor=state)
    return [e for s in [*streams, down, caps, sensor] for e in s.events]


@functools.cache
def _corpus() -> tuple[dict[str, Any], ...]:
    return tuple(corpus_events())


def corpus() -> list[dict[str, Any]]:
    """The corpus's events, made once (their ids are random): a fresh list of them."""
    return list(_corpus())


def corpus_events() -> list[dict[str, Any]]:
    """The whole recorded corpus (every theft route and every kind of normal work, one host each)
    and the story above: the property test's events."""
    from tests.corpus.recorded import SCENARIOS

    hosts = {e["host"] for e in story()}
    extra = [e for sc in SCENARIOS if sc.build for st in sc.build() for e in st.events if e["host"] not in hosts]
    return story() + extra


def summary(store: Store) -> dict[str, tuple[Any, ...]]:
    return {a["key"]: (a["kind"], a["severity"], a["state"], a["title"], a["explanation"], a["first_ts"], a["last_ts"],
                       json.dumps(a["evidence"], sort_keys=True))
            for a in store.alerts() if a["kind"] not in WALL_CLOCK_KINDS}


def replay(events: list[dict[str, Any]], db: str, collectors: int, rng: random.Random | None) -> Store:
    """``events`` in batches (random sizes with ``rng``) dealt to ``collectors`` pipelines sharing ``db``,
    with sweeps at random moments, then every collector's sweep a while later."""
    now = max(e["ts"] for e in events) + 10
    pipes = [Pipeline(Store(db), clock=Clock(now)) for _ in range(collectors)]
    i = 0
    while i < len(events):
        n = rng.randint(1, 40) if rng else 25
        pipe = rng.choice(pipes) if rng else pipes[0]
        pipe.ingest([message(e) for e in events[i:i + n]])
        i += n
        if rng and rng.random() < 0.1:
            rng.choice(pipes).sweep()
    for pipe in pipes:  # every collector's sweep, a while later
        pipe.clock.now = now + 120  # type: ignore[attr-defined]
        pipe.sweep()
        assert not pipe.errors, pipe.errors
    for pipe in pipes[1:]:
        pipe.store.close()
    return pipes[0].store


def _fresh(kind: str, tmp_path: Path, name: str, request: pytest.FixtureRequest) -> str:
    if kind == "sqlite":
        return f"sqlite:///{tmp_path}/{name}.db"
    server: str = request.getfixturevalue("pg_url")
    engine = create_engine(normalize_url(server), isolation_level="AUTOCOMMIT")
    db = f"o_{name}_{uuid.uuid4().hex[:8]}"
    with engine.connect() as conn:
        conn.execute(text(f"CREATE DATABASE {db}"))
    engine.dispose()
    return server.rsplit("/", 1)[0] + f"/{db}"


@pytest.fixture(scope="module")
def expected(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Any, ...]]:
    """The in-order replay: one collector, events by their own time, batches of 25."""
    events = corpus()
    store = replay(sorted(events, key=lambda e: e["ts"]), f"sqlite:///{tmp_path_factory.mktemp('order')}/in.db", 1,
                   None)
    got = summary(store)
    store.close()
    return got


def test_the_in_order_replay_raises_what_the_corpus_says(expected: dict[str, tuple[Any, ...]]) -> None:
    assert {k[0] for k in expected.values()} >= {
        "exfiltration", "staged_exfiltration", "chunked_exfiltration", "host_exfiltration", "remote_copy",
        "canary_read", "cap_hit", "slow_exfiltration", "raw_socket", "unexplained_egress", "weights_relinked",
        "sensor_tampered", "sensor_degraded"}
    assert expected["cap:t-caps:host-default"][1] == "medium", "the latest cap event (block) decides"
    [down] = [v for k, v in expected.items() if k.startswith("exfiltration:t-down:")]
    assert down[1] == "medium", "60 MB of the 1 GB it had, though 60% of the first shard reported"


SEEDS = int(os.environ.get("WW_ORDER_SEEDS", "3"))  # more with WW_ORDER_SEEDS=50 (the property, at length)
PG_SEEDS = int(os.environ.get("WW_ORDER_PG_SEEDS", "1"))
SALT = os.environ.get("WW_ORDER_SALT", "")  # other permutations than the suite's (repeated runs of the property)


@pytest.mark.parametrize(("kind", "seed"), [("sqlite", s) for s in range(SEEDS)]
                         + [pytest.param("postgresql", s, marks=pytest.mark.privileged) for s in range(PG_SEEDS)])
def test_alerts_do_not_depend_on_arrival_order(kind: str, seed: int, expected: dict[str, tuple[Any, ...]],
                                               tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """The property: a random permutation of the corpus, split in random batches dealt to 1, 2 or 3
    collectors sharing one database (SQLite, or PostgreSQL), with sweeps at random moments, ends with
    exactly the alerts of the in-order replay."""
    rng = random.Random(f"{SALT}{kind}-{seed}")
    shuffled = corpus()
    rng.shuffle(shuffled)
    collectors = 1 + seed % 3 if kind == "sqlite" else 3 - seed % 3  # PostgreSQL: three first
    store = replay(shuffled, _fresh(kind, tmp_path, f"s{seed}", request), collectors, rng)
    got = summary(store)
    store.close()
    assert sorted(got) == sorted(expected)
    for key in expected:
        assert got[key] == expected[key], key


def _phase(e: dict[str, Any]) -> int:
    """The adversarial order for a relay chain: the last sender's uploads, then the read, then the
    hand-overs from the far end of the chain back to the reader, each phase in its own batch."""
    if e["type"] != "egress_sample":
        return 1
    procs = e["data"]["processes"]
    if any(p["tx_bytes"] > 0 for p in procs):
        return 0
    return 3 if any(p["pid"] == 501 for p in procs) else 2


def test_a_hand_over_arriving_last_links_the_end_of_its_chain(tmp_path: Path) -> None:
    """reader 501 -unix-> 530 -tcp-> 531 -> the world: 501's hand-overs arrive after everything
    else, days late, so no sweep looks at them by time; 531's verdict must still name 501."""
    events = [e for s in recorded.relay("t-chain", "unix", "/usr/sbin/haproxy", 530, 443, depth=2) for e in s.events]
    now = max(e["ts"] for e in events) + 30 * 86400  # an agent's spool delivered a month late
    pipe = Pipeline(Store(f"sqlite:///{tmp_path}/late.db"), clock=Clock(now))
    for phase in range(4):
        batch = [message(e) for e in events if _phase(e) == phase]
        assert batch, phase
        pipe.ingest(batch)
    pipe.sweep()
    assert not pipe.errors, pipe.errors
    [alert] = [a for a in pipe.store.alerts() if a["kind"] == "exfiltration"]
    assert alert["key"].startswith("exfiltration:t-chain:531"), alert["key"]
    assert [link["reader"]["pid"] for link in alert["evidence"]["links"]] == [501], alert["evidence"]["links"]
