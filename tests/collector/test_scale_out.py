"""Two collectors in an MQTT v5 shared subscription on one PostgreSQL = one collector on SQLite."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.collector.scenarios import MB, WEIGHTS, Stream
from tests.collector.test_service import collector, publisher, stats
from tests.helpers.broker import Broker
from tests.helpers.netns import wait_for
from tests.helpers.postgres import Postgres, binaries

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


def scenario(now: float) -> list[tuple[str, bytes]]:
    """Several incidents on three hosts, timed so the last events are recent."""
    base = now - 900
    a = Stream("gpu-a")
    a.started(base, weights=256 * MB)
    a.read(base + 1, pid=100, nbytes=256 * MB)
    for i in range(10):
        a.send(base + 5 + i, pid=100, nbytes=20 * MB)
    a.add("canary_read", base + 20, pid=7, path="/srv/models/.canary", severity="critical", name="cat",
          exe="/usr/bin/cat", uid=0)
    b = Stream("gpu-b")
    b.read(base + 1, pid=400, nbytes=100 * MB, exe="/usr/bin/tar")
    for i in range(20):
        b.send(base + 10 + i * 20, pid=500 + i, nbytes=5 * MB, exe="/usr/bin/curl")
    b.add("enforcement_drift", base + 30, drift=["nftables rules missing"], restored=True)
    c = Stream("gpu-c")
    c.read(base + 1, pid=300, nbytes=256 * MB, exe="/usr/bin/cp")
    c.add("weights_copy", base + 4, pid=300, name="cp", exe="/usr/bin/cp", uid=1000, sources=[WEIGHTS],
          source_bytes_read=256 * MB, destination="/tmp/.c/blob", destination_size=256 * MB, path="/tmp/.c/blob")
    c.read(base + 60, pid=301, nbytes=256 * MB, path="/tmp/.c/blob", exe="/usr/bin/curl", staged=[WEIGHTS])
    for i in range(5):
        c.send(base + 65 + i, pid=301, nbytes=50 * MB, exe="/usr/bin/curl")
    return a.messages() + b.messages() + c.messages()


def summary(db: str) -> set[tuple[Any, ...]]:
    out = subprocess.run([sys.executable, "-m", "weightwarden.collector", "alerts", "list", "--json", "--db", db],
                         capture_output=True, text=True, cwd=str(REPO))
    rows = set()
    for a in json.loads(out.stdout):
        ev = a["evidence"]
        rows.add((a["key"], a["kind"], a["severity"], (ev.get("process") or {}).get("pid"),
                  tuple(ev.get("files") or []), tuple(d["address"] for d in ev.get("destinations") or []),
                  ev.get("bytes_sent")))
    return rows


def test_two_collectors_on_postgres_match_one_on_sqlite(broker: Broker, postgres: Postgres, tmp_path: Path) -> None:
    lite = f"sqlite:///{tmp_path}/one.db"
    # Three collectors on one host: each needs its own client id (the default is per host).
    procs = [collector(broker, lite, "--client-id", "one", log=tmp_path / "one.log"),
             collector(broker, postgres.url, "--shared-group", "collectors", "--client-id", "pg1",
                       log=tmp_path / "pg1.log"),
             collector(broker, postgres.url, "--shared-group", "collectors", "--client-id", "pg2",
                       log=tmp_path / "pg2.log")]
    try:
        # Publish only once every collector has subscribed: a shared subscription with no member yet
        # drops what is published to it (PostgreSQL collectors migrate before they subscribe).
        logfiles = [tmp_path / f for f in ("one.log", "pg1.log", "pg2.log")]
        assert wait_for(lambda: all(p.exists() and "collector_subscribed" in p.read_text() for p in logfiles), 30), \
            [p.read_text()[-500:] for p in logfiles if p.exists()]
        messages = scenario(time.time())
        pub = publisher(broker)
        for topic, payload in messages:
            pub.publish(topic, payload, qos=1).wait_for_publish(5)
        pub.loop_stop()
        pub.disconnect()
        n = len(messages)
        assert wait_for(lambda: stats(lite).get("stored") == n and stats(postgres.url).get("stored") == n, 30), \
            (stats(lite), stats(postgres.url))
        time.sleep(3)  # a few sweeps
        one, two = summary(lite), summary(postgres.url)
        assert one == two
        assert {k[1] for k in one} >= {"exfiltration", "canary_read", "chunked_exfiltration", "enforcement_drift",
                                      "staged_exfiltration"}
        logs = [(tmp_path / f).read_text() for f in ("pg1.log", "pg2.log")]
        assert all("collector_subscribed" in log for log in logs)
        for p in procs:
            assert p.poll() is None
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(timeout=20)
