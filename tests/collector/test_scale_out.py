"""Collectors sharing one PostgreSQL through an MQTT v5 shared subscription raise exactly the alerts
of one collector, whatever order the events arrive in.

One recorded stream (tests/collector/test_order.py's story: thefts of every link kind, serving,
a verdict later facts lower, single-event alerts) is published in shuffled orders to a real
Mosquitto; one collector on SQLite, two on one PostgreSQL database and three on another take it
at once (each group gets every event, dealt over its members as the broker likes). Each
database must end with the alerts an in-order replay gives.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from tests.collector.test_order import WALL_CLOCK_KINDS, replay, story
from tests.collector.test_service import collector, publisher, stats
from tests.corpus.replay import message
from tests.helpers.broker import Broker
from tests.helpers.netns import wait_for
from tests.helpers.postgres import Postgres, binaries
from weightwarden.collector.store.database import Store, normalize_url

pytestmark = pytest.mark.privileged  # runs postgres as its own user: needs root

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def postgres(tmp_path: Path) -> Iterator[Postgres]:
    if binaries() is None:
        if os.environ.get("WEIGHTWARDEN_REQUIRE_PRIVILEGED") == "1":
            pytest.fail("PostgreSQL is not installed (run scripts/bootstrap.sh)")
        pytest.skip("PostgreSQL is not installed")
    pg = Postgres()
    try:
        yield pg
    finally:
        pg.stop()


def summary(db: str) -> dict[str, tuple[Any, ...]]:
    """Through the contract: ``alerts list --json``."""
    out = subprocess.run([sys.executable, "-m", "weightwarden.collector", "alerts", "list", "--json", "--db", db],
                         capture_output=True, text=True, cwd=str(REPO), timeout=60)
    assert out.returncode == 0, out.stderr
    return _summary(json.loads(out.stdout))


def _summary(alerts: list[dict[str, Any]]) -> dict[str, tuple[Any, ...]]:
    return {a["key"]: (a["kind"], a["severity"], json.dumps(a["evidence"], sort_keys=True))
            for a in alerts if a["kind"] not in WALL_CLOCK_KINDS}


def database(pg: Postgres, name: str) -> str:
    engine = create_engine(normalize_url(pg.url), isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text(f"CREATE DATABASE {name}"))
    engine.dispose()
    return pg.url.rsplit("/", 1)[0] + f"/{name}"


def test_one_two_and_three_collectors_agree_in_any_order(broker: Broker, postgres: Postgres, tmp_path: Path) -> None:
    events = story()
    expected = summary(replay(sorted(events, key=lambda e: e["ts"]), f"sqlite:///{tmp_path}/in-order.db", 1,
                              None).url)
    assert {v[0] for v in expected.values()} >= {"exfiltration", "staged_exfiltration", "chunked_exfiltration",
                                                  "host_exfiltration", "remote_copy", "canary_read"}
    for round_ in range(2):
        dbs = {"one": f"sqlite:///{tmp_path}/one-{round_}.db", "two": database(postgres, f"two_{round_}"),
               "three": database(postgres, f"three_{round_}")}
        shuffled = events[:]
        random.Random(round_).shuffle(shuffled)
        one_round(broker, dbs, shuffled, expected, tmp_path / f"round-{round_}")


def one_round(broker: Broker, dbs: dict[str, str], events: list[dict[str, Any]],
              expected: dict[str, tuple[Any, ...]], logdir: Path) -> None:
    logdir.mkdir()
    stores = {name: Store(db) for name, db in dbs.items()}  # schema in place before the collectors start
    procs = [collector(broker, dbs["one"], "--client-id", f"one-{logdir.name}", log=logdir / "one.log")]
    for group, n in (("two", 2), ("three", 3)):
        procs += [collector(broker, dbs[group], "--shared-group", f"{group}-{logdir.name}", "--client-id",
                            f"{group}-{logdir.name}-{i}", log=logdir / f"{group}-{i}.log") for i in range(n)]
    try:
        # Publish only once every collector has subscribed: a shared subscription with no member yet
        # drops what is published to it (PostgreSQL collectors migrate before they subscribe).
        logs = sorted(logdir.glob("*.log"))
        assert len(logs) == 6 and wait_for(lambda: all("collector_subscribed" in p.read_text() for p in logs), 30), \
            [p.read_text()[-500:] for p in logs]
        pub = publisher(broker)
        sent = [pub.publish(topic, payload, qos=1) for topic, payload in map(message, events)]
        for info in sent:
            info.wait_for_publish(10)
        pub.loop_stop()
        pub.disconnect()
        assert wait_for(lambda: all(s.count("events") == len(events) for s in stores.values()), 60, 0.2), \
            {name: stats(db) for name, db in dbs.items()}
        # Each collector's sweep looks again at what arrived lately, with everything committed by then.
        wait_for(lambda: all(_summary(s.alerts()) == expected for s in stores.values()), 30, 0.5)
        for name, db in dbs.items():
            got = summary(db)
            assert sorted(got) == sorted(expected), name
            for key, value in expected.items():
                assert got[key] == value, (name, key, _differences(value[2], got[key][2]))
        assert all(p.poll() is None for p in procs)
    finally:
        for st in stores.values():
            st.engine.dispose()
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(timeout=20)


def _differences(want: str, got: str) -> dict[str, tuple[Any, Any]]:
    """The evidence fields that differ, with both values: what a failure here needs to be understood."""
    a, b = json.loads(want), json.loads(got)
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}
