"""The daemon publishing to a real Mosquitto in the other namespace."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.agent_run import REPO
from tests.helpers.broker import Broker
from tests.helpers.netns import NetnsPair, wait_for

pytestmark = pytest.mark.privileged

CAPPED = """apiVersion: weightwarden/v1
kind: EgressPolicy
metadata: {name: mq}
spec:
  interval: 1s
  caps: [{name: host-default, rate: 20Mbit}]
"""


class NsSubscriber:
    """tests.helpers.subscriber running inside namespace B, read line by line."""

    def __init__(self, pair: NetnsPair, broker: Broker) -> None:
        self.proc = pair.popen(pair.b, sys.executable, "-m", "tests.helpers.subscriber", broker.host,
                               str(broker.port), stdout=subprocess.PIPE, cwd=str(REPO))
        self.received: list[tuple[str, dict[str, Any]]] = []
        self.ready = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()
        assert self.ready.wait(15), "subscriber did not start"

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            doc = json.loads(line)
            if doc.get("ready"):
                self.ready.set()
            else:
                self.received.append((doc["topic"], doc["event"]))

    def events(self, type_: str | None = None) -> list[dict[str, Any]]:
        return [e for _t, e in list(self.received) if type_ is None or e.get("type") == type_]


@pytest.fixture
def ns_broker(netns_pair: NetnsPair, tmp_path: Path) -> Iterator[Broker]:
    broker = Broker(tmp_path / "broker", host=netns_pair.addr_b, port=18830, netns=netns_pair.b).start()
    yield broker
    broker.stop()


def start_agent(pair: NetnsPair, tmp_path: Path, broker: Broker, *extra: str) -> subprocess.Popen[bytes]:
    policy = tmp_path / "policy.yaml"
    policy.write_text(CAPPED)
    return pair.popen(pair.a, sys.executable, "-m", "weightwarden.agent", "run", "--policy", str(policy), "--state-dir",
                      str(tmp_path / "state"), "--host-id", "gpu-a", "--sink",
                      f"mqtt://{pair.addr_b}:{broker.port}?keepalive=3", *extra,
                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=str(REPO))


def test_sigkill_produces_last_will_within_keepalive(netns_pair: NetnsPair, ns_broker: Broker, tmp_path: Path) -> None:
    pair = netns_pair
    sub = NsSubscriber(pair, ns_broker)
    agent = start_agent(pair, tmp_path, ns_broker, "--heartbeat-interval", "1")
    assert wait_for(lambda: sub.events("heartbeat"), 20), "no heartbeat"
    started = sub.events("agent_started")[0]
    assert started["host"] == "gpu-a" and started["seq"] >= 1
    assert all(t == f"weightwarden/v1/gpu-a/{e['type']}" for t, e in sub.received)
    agent.kill()
    killed_at = time.monotonic()
    assert wait_for(lambda: sub.events("agent_lost"), 10), "no Last-Will"
    took = time.monotonic() - killed_at
    assert took <= 1.5 * 3 + 1.0, f"Last-Will after {took:.1f}s, keepalive 3s"
    lost = sub.events("agent_lost")[0]
    assert lost["host"] == "gpu-a" and lost["seq"] == 0


def test_broker_outage_spool_bound_and_no_silent_gap(netns_pair: NetnsPair, ns_broker: Broker, tmp_path: Path) -> None:
    pair = netns_pair
    sub = NsSubscriber(pair, ns_broker)
    agent = start_agent(pair, tmp_path, ns_broker, "--sample-interval", "0.02", "--spool-max-bytes", "96KiB")
    assert wait_for(lambda: sub.events("egress_sample"), 20)
    ns_broker.stop()
    outage_start = time.monotonic()
    # While the broker is down the agent keeps enforcing: flush its table, it comes back.
    time.sleep(1)
    pair.run(pair.a, "nft", "delete", "table", "inet", "weightwarden")
    assert wait_for(lambda: "weightwarden" in pair.run(pair.a, "nft", "list", "tables").stdout, 5)
    spool = tmp_path / "state" / "spool.db"
    sizes = []
    while time.monotonic() - outage_start < 6:
        db = sqlite3.connect(f"file:{spool}?mode=ro", uri=True)
        used = db.execute("PRAGMA page_count").fetchone()[0] - db.execute("PRAGMA freelist_count").fetchone()[0]
        sizes.append(used * db.execute("PRAGMA page_size").fetchone()[0])
        db.close()
        time.sleep(0.5)
    assert agent.poll() is None, "the agent must survive a broker outage"
    assert max(sizes) <= 96 * 1024 * 1.5, f"spool grew to {max(sizes)} bytes"
    ns_broker.start()
    restarted_at = time.time()
    assert wait_for(lambda: sub.events("events_dropped"), 30), "dropping must be reported"
    time.sleep(3)
    agent.terminate()
    agent.wait(timeout=30)
    events = sub.events()
    seqs = {e["seq"] for e in events if e["seq"]}
    accounted = set(seqs)
    for e in sub.events("events_dropped"):
        for lo, hi in e["data"]["seq_ranges"]:
            accounted.update(range(lo, hi + 1))
    top = max(seqs)
    missing = set(range(1, top + 1)) - accounted
    assert not missing, f"silent gap: {sorted(missing)[:10]}"
    drift = sub.events("enforcement_drift")
    assert drift and drift[0]["data"]["restored"]
    assert sub.events("agent_stopping"), "a clean stop says goodbye"
    # Mosquitto sends the will of connections it drops when it shuts down itself;
    # the connection made after the restart ended cleanly and must leave none.
    assert all(e["data"]["connected_at"] < restarted_at for e in sub.events("agent_lost"))
