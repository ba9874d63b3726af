"""The MQTT sink and its spool against a real Mosquitto started by the tests."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent.events import EventFactory
from agent.mqtt_sink import MqttSettings, MqttSink
from agent.sinks import SinkURLError
from agent.spool import Spool
from tests.helpers.broker import Broker
from tests.helpers.netns import wait_for
from tests.helpers.subscriber import Subscriber

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(("url", "words"), [
    ("http://broker:1883", "scheme"),
    ("mqtt://:1883", "no broker host"),
    ("mqtt://broker:99999", "bad port"),
    ("mqtt://broker?bogus=1", "unknown option"),
    ("mqtts://broker?ca=/nonexistent/ca.pem", "cannot read ca file /nonexistent/ca.pem"),
    ("mqtt://broker?ca=/etc/hostname", "needs mqtts"),
    ("mqtts://broker?cert=/etc/hostname", "both cert= and key="),
    ("mqtt://broker?keepalive=0", "keepalive"),
    ("mqtt://broker?password_file=/nonexistent", "cannot read password file"),
])
def test_bad_sink_urls_fail_clearly(url: str, words: str) -> None:
    with pytest.raises(SinkURLError, match=words):
        MqttSettings.from_url(url)


def test_unreadable_certificate_fails_at_start(tmp_path: Path) -> None:
    junk = tmp_path / "ca.pem"
    junk.write_text("not a certificate")
    with pytest.raises(SinkURLError, match="TLS setup failed"):
        MqttSettings.from_url(f"mqtts://broker?ca={junk}")
    policy = REPO / "policies" / "monitor-only.yaml"
    out = subprocess.run([sys.executable, "-m", "agent", "run", "--policy", str(policy), "--sink",
                          "mqtts://broker:8883?ca=/nonexistent.pem", "--state-dir", str(tmp_path)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "cannot read ca file /nonexistent.pem" in out.stderr


def test_credentials_come_from_a_file_or_systemd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = tmp_path / "pw"
    secret.write_text("s3cret\n")
    assert MqttSettings.from_url(f"mqtt://agent@b?password_file={secret}").password == "s3cret"
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "mqtt-password").write_text("from-systemd")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    assert MqttSettings.from_url("mqtt://agent@b").password == "from-systemd"


def test_spool_survives_reopen_and_bounds_itself(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool.db", max_bytes=64 * 1024)
    factory = EventFactory("h1", _Seq(spool.last_seq()))
    for _ in range(400):
        spool.append(factory.make("egress_sample", {"processes": [{"pid": 7, "exe": "/bin/x", "tx_bytes": 1000}],
                                                    "attributed_tx_bytes": 1000, "pad": "x" * 300}))
    spool.append(factory.make("policy_applied", {"policy": "p"}))
    summary = spool.enforce_limit(lambda data: factory.make("events_dropped", data))
    assert summary is not None and not spool.over_limit()
    data = summary.data
    assert data["by_type"] == {"egress_sample": data["dropped"]}, "low-value events go first"
    assert data["egress_summary"]["attributed_tx_bytes"] == 1000 * data["dropped"]
    kept = [row[0] for row in spool.pending(1000)]
    dropped = {s for lo, hi in data["seq_ranges"] for s in range(lo, hi + 1)}
    assert set(kept) | dropped == set(range(1, 403)), "every seq is either kept or accounted for"
    assert 401 in kept  # the policy event survived
    last = spool.last_seq()
    spool.close()
    again = Spool(tmp_path / "spool.db")
    assert again.last_seq() == last == 402 and again.depth() == len(kept)


@pytest.mark.parametrize("damage", ["garbage", "truncate"])
def test_corrupt_spool_is_moved_aside_and_reported(tmp_path: Path, damage: str) -> None:
    path = tmp_path / "spool.db"
    spool = Spool(path)
    factory = EventFactory("h1", _Seq(0))
    for _ in range(50):
        spool.append(factory.make("heartbeat", {"pad": "y" * 2000}))
    spool.close()
    raw = path.read_bytes()
    path.write_bytes(os.urandom(len(raw)) if damage == "garbage" else raw[: len(raw) // 3])
    for suffix in ("-wal", "-shm"):
        Path(str(path) + suffix).unlink(missing_ok=True)
    recovered = Spool(path)
    assert recovered.recovery is not None and "moved aside" in recovered.recovery.reason
    assert Path(recovered.recovery.moved_to).exists()
    recovered.append(factory.make("heartbeat"))
    assert recovered.depth() == 1


class _Seq:
    def __init__(self, last: int) -> None:
        self.last = last

    def next(self) -> int:
        self.last += 1
        return self.last


def test_ten_thousand_events_survive_two_broker_restarts(broker: Broker, tmp_path: Path) -> None:
    sub = Subscriber(broker.host, broker.port)
    time.sleep(1.2)  # the broker autosaves the subscriber's session every second

    async def produce() -> int:
        sink = MqttSink(MqttSettings.from_url(broker.url + "?keepalive=5"))
        factory = EventFactory("gpu-7", sink.prepare("gpu-7", tmp_path))
        sink.set_event_factory(factory)
        await sink.start()
        for i in range(10_000):
            await sink.publish(factory.make("egress_sample", {"i": i}))
            if i in (3000, 6500):
                # SIGTERM: Mosquitto acknowledges QoS 1 before it persists, so a SIGKILL can
                # lose messages it already acknowledged; no publisher can resend those, and
                # the collector's sequence-gap alert is what reports such a loss.
                await asyncio.to_thread(broker.restart, signal.SIGTERM)
            if i % 200 == 0:
                await asyncio.sleep(0.01)  # a paced producer, like the daemon
        deadline = time.monotonic() + 60
        while sink.depth() and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        left = sink.depth()
        await sink.close()
        return left

    try:
        assert asyncio.run(produce()) == 0, "the spool should drain once the broker is back"
        wait_for(lambda: len({e["seq"] for e in sub.events()}) >= 10_000, 30)
        events = sub.events()
    finally:
        sub.close()
    # A broker that shuts down sends the Last-Will of the connections it drops: seq 0, not in the stream.
    assert {e["type"] for e in events if e["seq"] == 0} <= {"agent_lost"}
    events = [e for e in events if e["seq"] != 0]
    seqs = {e["seq"] for e in events}
    assert seqs == set(range(1, 10_001)), f"missing: {sorted(set(range(1, 10_001)) - seqs)[:20]}"
    by_seq: dict[int, set[str]] = {}
    for e in events:
        by_seq.setdefault(e["seq"], set()).add(e["id"])
    assert all(len(ids) == 1 for ids in by_seq.values()), "a duplicate must carry the same id"
    assert all(t == "weightwarden/v1/gpu-7/egress_sample" for t, doc in sub.messages if doc.get("seq") != 0)


def test_spool_db_is_sqlite_wal(tmp_path: Path) -> None:
    Spool(tmp_path / "s.db").close()
    mode = sqlite3.connect(tmp_path / "s.db").execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"
