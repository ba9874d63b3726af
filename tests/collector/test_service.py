"""The collector process against a real Mosquitto: hostile input, and staying up."""

from __future__ import annotations

import json
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
    with open(log or "/dev/null", "ab") as err:
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


def hostile_messages() -> list[tuple[str, bytes]]:
    good = Stream("gpu-1")
    good.add("heartbeat", T0)
    base = good.events[0]
    out: list[tuple[str, bytes]] = []
    for i in range(1000):
        kind = i % 10
        ev = json.loads(json.dumps(base))
        ev["id"] = f"{i:032x}"
        topic = "weightwarden/v1/gpu-1/heartbeat"
        if kind == 0:
            payload = b"\xff\xfe not json"
        elif kind == 1:
            ev["seq"] = "12"  # a string where a number belongs
            payload = json.dumps(ev).encode()
        elif kind == 2:
            payload = b"{" + b'"a":"' + b"x" * (2 * 2**20) + b'"}'  # 2 MiB
        elif kind == 3:
            ev["host"] = "gpu-2"  # forged: publishing as someone else under gpu-1's topic
            payload = json.dumps(ev).encode()
        elif kind == 4:
            ev["host"] = "x'; DROP TABLE events; --"
            topic = "weightwarden/v1/x'; DROP TABLE events; --/heartbeat"
            payload = json.dumps(ev).encode()
        elif kind == 5:
            ev["type"] = "rm_rf"
            payload = json.dumps(ev).encode()
        elif kind == 6:
            payload = json.dumps([1, 2, 3]).encode()
        elif kind == 7:
            ev.pop("id")
            payload = json.dumps(ev).encode()
        elif kind == 8:
            ev["data"] = "'); DELETE FROM alerts; --"
            payload = json.dumps(ev).encode()
        else:
            topic = "weightwarden/v1/gpu-1/egress_sample"  # topic type != event type
            payload = json.dumps(ev).encode()
        out.append((topic, payload))
    return out


def test_thousand_hostile_messages_are_rejected_and_counted(broker: Broker, tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path}/c.db"
    proc = collector(broker, db, log=tmp_path / "collector.log")
    try:
        time.sleep(1.5)
        pub = publisher(broker)
        for topic, payload in hostile_messages():
            pub.publish(topic, payload, qos=1).wait_for_publish(5)
        assert wait_for(lambda: stats(db).get("rejected", 0) >= 1000, 30), stats(db)
        # Still running, and still storing good events.
        s = Stream("gpu-9")
        s.read(T0 + 1, pid=1, nbytes=256 * MB)
        s.send(T0 + 5, pid=1, nbytes=200 * MB)
        for topic, payload in s.messages():
            pub.publish(topic, payload, qos=1).wait_for_publish(5)
        assert wait_for(lambda: stats(db).get("stored", 0) == 2, 15)
        pub.loop_stop()
        pub.disconnect()
        assert proc.poll() is None, "the collector must survive"
        counts = stats(db)
        assert counts["rejected"] == 1000 and counts["dead_letters"] == 1000 and counts["events"] == 2
        assert counts["rejected_host"] == 100 and counts["rejected_size"] == 100
        alerts = json.loads(cli(db, "alerts", "list", "--json").stdout)
        assert [a["host"] for a in alerts] == ["gpu-9"]
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_cli_contract_and_states(tmp_path: Path) -> None:
    from weightwarden.collector.pipeline import Pipeline
    from weightwarden.collector.store import Store

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
