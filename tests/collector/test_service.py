"""The collector process against a real Mosquitto: hostile input, and staying up."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from tests.collector.scenarios import MB, T0, Stream
from tests.helpers.broker import Broker
from tests.helpers.netns import wait_for

REPO = Path(__file__).resolve().parents[2]


def collector(broker: Broker, db: str, *extra: str, log: Path | None = None) -> subprocess.Popen[bytes]:
    with Path(log or os.devnull).open("ab") as err:
        argv = [sys.executable, "-m", "weightwarden.collector", "run", "--broker", broker.url, "--db", db, *extra]
        return subprocess.Popen(argv,
                                cwd=str(REPO), stdout=subprocess.DEVNULL, stderr=err)


def cli(db: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "weightwarden.collector", *args, "--db", db], capture_output=True, text=True,
                          cwd=str(REPO), timeout=60)


def publisher(broker: Broker) -> mqtt.Client:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"pub-{time.monotonic_ns()}",
                         protocol=MQTTProtocolVersion.MQTTv5)
    client.connect(broker.host, broker.port)
    client.loop_start()
    return client


def stats(db: str) -> dict[str, int]:
    return json.loads(cli(db, "stats", "--json").stdout)  # type: ignore[no-any-return]


def test_cli_contract_and_states(tmp_path: Path) -> None:
    from weightwarden.collector.ingest.pipeline import Pipeline
    from weightwarden.collector.store.database import Store

    db = f"sqlite:///{tmp_path}/c.db"
    s = Stream("gpu-1")
    s.read(T0 + 1, pid=100, nbytes=256 * MB)
    s.send(T0 + 5, pid=100, nbytes=200 * MB)
    Pipeline(Store(db)).ingest(s.messages())
    listed = cli(db, "alerts", "list", "--json")
    assert listed.returncode == 0
    [alert] = json.loads(listed.stdout)
    assert alert["severity"] == "critical", "200 MB of the 256 MB read left: most of it"
    ev = alert["evidence"]
    assert ev["process"]["name"] and ev["process"]["pid"] == 100
    assert ev["files"] and ev["destinations"][0]["address"] == "203.0.113.9"
    assert cli(db, "alerts", "ack", alert["id"], "--by", "alice").returncode == 0
    shown = json.loads(cli(db, "alerts", "show", alert["id"], "--json").stdout)
    assert shown["state"] == "acknowledged" and shown["acked_by"] == "alice"
    assert "203.0.113.9" in cli(db, "alerts", "show", alert["id"]).stdout
    missing = cli(db, "alerts", "resolve", "nope")
    assert missing.returncode == 1 and "no alert" in missing.stderr
    hosts = json.loads(cli(db, "hosts", "--json").stdout)
    assert hosts[0]["host"] == "gpu-1"


class LockedDatabase:
    """A running collector on SQLite whose database another writer holds (BEGIN EXCLUSIVE, past
    the collector's 10 s busy timeout) while ``n`` heartbeats are published to it."""

    def __init__(self, broker: Broker, tmp_path: Path, n: int, *extra: str) -> None:
        import sqlite3

        self.path = tmp_path / "c.db"
        self.db = f"sqlite:///{self.path}"
        self.log = tmp_path / "collector.log"
        self.broker, self.extra, self.n = broker, extra, n
        self.proc = self.start()
        assert wait_for(lambda: "collector_subscribed" in self.log.read_text(), 15), self.log.read_text()
        self.blocker = sqlite3.connect(self.path, isolation_level=None)
        self.blocker.execute("BEGIN EXCLUSIVE")  # no other writer gets in until COMMIT
        self.pub = publisher(broker)
        s = Stream("gpu-3")
        for i in range(n):
            s.add("heartbeat", T0 + i)
        for topic, payload in s.messages():
            self.pub.publish(topic, payload, qos=1).wait_for_publish(5)
        assert wait_for(lambda: "ingest_failed" in self.log.read_text(), 30), "the outage never bit"

    def start(self) -> subprocess.Popen[bytes]:
        return collector(self.broker, self.db, *self.extra, log=self.log)

    def release(self) -> None:
        self.blocker.execute("COMMIT")
        self.blocker.close()

    def all_stored(self) -> bool:
        return wait_for(lambda: stats(self.db).get("stored", 0) == self.n, 40)

    def close(self) -> None:
        self.pub.loop_stop()
        self.pub.disconnect()
        self.proc.terminate()
        self.proc.wait(timeout=20)


def test_events_wait_out_a_database_outage(broker: Broker, tmp_path: Path) -> None:
    """The batch in hand survives the database being away: the collector retries it, not drops it."""
    outage = LockedDatabase(broker, tmp_path, 200)
    try:
        outage.release()
        assert outage.all_stored(), (stats(outage.db), outage.log.read_text()[-2000:])
        assert "ingest_recovered" in outage.log.read_text()
        assert outage.proc.poll() is None
    finally:
        outage.close()


def test_a_crashed_collector_gets_its_unstored_events_again(broker: Broker, tmp_path: Path) -> None:
    """Acknowledged only once stored: events a collector held in memory when it was SIGKILLed stay
    with the broker, in its session, and the restarted collector (same client id) stores them."""
    import signal

    outage = LockedDatabase(broker, tmp_path, 300, "--client-id", "crashy")
    try:
        outage.proc.send_signal(signal.SIGKILL)
        outage.proc.wait(timeout=10)
        outage.release()
        assert stats(outage.db).get("stored", 0) < 300, "the crash came too late to test anything"
        outage.proc = outage.start()
        assert outage.all_stored(), (stats(outage.db), outage.log.read_text()[-2000:])
    finally:
        outage.close()


def test_a_full_inbox_stops_reading_and_memory_stays_bounded(broker: Broker, tmp_path: Path) -> None:
    """500 one-MiB payloads (valid JSON, refused only once parsed) while the database is locked: the
    collector holds no more than its inbox (8 MiB here), stops reading from the broker and says so,
    its peak RSS stays under the bound; and once the database is back, every message is counted."""
    import sqlite3

    from tests.collector.test_hostile_flood import RSS_BOUND_MIB, peak_rss_mib
    from weightwarden.collector.ingest.validate import MAX_PAYLOAD

    path = tmp_path / "c.db"
    db, log = f"sqlite:///{path}", tmp_path / "collector.log"
    proc = collector(broker, db, "--queue-max-bytes", "8MiB", log=log)
    try:
        assert wait_for(lambda: "collector_subscribed" in log.read_text(), 15), log.read_text()
        blocker = sqlite3.connect(path, isolation_level=None)
        blocker.execute("BEGIN EXCLUSIVE")
        s = Stream("gpu-big")
        s.add("heartbeat", time.time())
        doc = s.events[0]
        doc["data"]["weights"] = {"paths": ["/srv/models/" + "w" * 3500] * 290, "files": 290, "total_bytes": 1}
        doc["data"]["evil"] = True  # refused, but only after the whole payload has been parsed
        pub = publisher(broker)
        for i in range(500):
            doc["id"] = f"{i:032x}"
            payload = json.dumps(doc).encode()
            assert MAX_PAYLOAD - 50_000 < len(payload) <= MAX_PAYLOAD
            info = pub.publish("weightwarden/v1/gpu-big/heartbeat", payload, qos=1)
        info.wait_for_publish(60)
        assert wait_for(lambda: '"reading": false' in log.read_text(), 30), log.read_text()[-2000:]
        behind = [json.loads(ln) for ln in log.read_text().splitlines() if '"ingest_behind"' in ln][-1]
        assert behind["held_bytes"] <= 8 * 2**20 + 2 * MAX_PAYLOAD, behind
        blocker.execute("COMMIT")
        blocker.close()
        assert wait_for(lambda: stats(db).get("rejected_schema", 0) == 500, 60), stats(db)
        pub.loop_stop()
        pub.disconnect()
        assert proc.poll() is None
        peak = peak_rss_mib(proc.pid)
        print(f"\npeak RSS {peak:.0f} MiB with 500 MiB of payloads through an 8 MiB inbox")
        assert peak < RSS_BOUND_MIB
    finally:
        proc.terminate()
        proc.wait(timeout=30)
