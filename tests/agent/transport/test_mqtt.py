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

from tests.helpers.broker import Broker
from tests.helpers.events import heartbeat, make, sample
from tests.helpers.netns import wait_for
from tests.helpers.subscriber import Subscriber
from weightwarden.agent.transport.mqtt import MqttSettings, MqttSink
from weightwarden.agent.transport.spool import Spool
from weightwarden.events import EventFactory, EventsDropped, Sequencer
from weightwarden.mqtt import MqttURLError

REPO = Path(__file__).resolve().parents[3]


@pytest.mark.parametrize(("url", "words"), [
    ("http://broker:1883", "scheme"),
    ("mqtt://:1883", "no broker host"),
    ("mqtt://broker:99999", "bad port"),
    ("mqtt://broker?bogus=1", "unknown option"),
    ("mqtts://broker?ca=/nonexistent/ca.pem", "cannot read ca file /nonexistent/ca.pem"),
    ("mqtt://broker?ca=/etc/hostname", "needs mqtts"),
    ("mqtts://broker?cert=/etc/hostname", "both cert= and key="),
    ("mqtt://broker?keepalive=0", "keepalive"),
    ("mqtt://broker?replay=soon", "replay must be seconds"),
    ("mqtt://broker?replay=-1", "replay must be 0..86400"),
    ("mqtt://broker?replay=nan", "replay must be 0..86400"),
    ("mqtt://broker?password_file=/nonexistent", "cannot read password file"),
])
def test_bad_sink_urls_fail_clearly(url: str, words: str) -> None:
    with pytest.raises(MqttURLError, match=words):
        MqttSettings.from_url(url)


def test_unreadable_certificate_fails_at_start(tmp_path: Path) -> None:
    junk = tmp_path / "ca.pem"
    junk.write_text("not a certificate")
    with pytest.raises(MqttURLError, match="TLS setup failed"):
        MqttSettings.from_url(f"mqtts://broker?ca={junk}")
    policy = REPO / "weightwarden" / "policies" / "monitor-only.yaml"
    out = subprocess.run([sys.executable, "-m", "weightwarden.agent", "run", "--policy", str(policy), "--sink",
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
        spool.append(factory.make(sample(cmdline=["x" * 300])))
    spool.append(make(factory, "policy_applied", policy="p", policy_digest="d", policy_path="/p.yaml"))
    summary = spool.enforce_limit(lambda data: make(factory, "events_dropped", **data))
    assert summary is not None and not spool.over_limit()
    data = summary.data
    assert isinstance(data, EventsDropped) and data.dropped and data.egress_summary
    assert data.by_type == {"egress_sample": data.dropped}, "low-value events go first"
    assert data.egress_summary.attributed_tx_bytes == 1000 * data.dropped
    kept = [row[0] for row in spool.pending(1000)]
    dropped = {s for lo, hi in data.seq_ranges for s in range(lo, hi + 1)}
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
        spool.append(factory.make(heartbeat(backend="y" * 200, file_watch={"mode": "m", "detail": "y" * 1800})))
    spool.close()
    raw = path.read_bytes()
    path.write_bytes(os.urandom(len(raw)) if damage == "garbage" else raw[: len(raw) // 3])
    for suffix in ("-wal", "-shm"):
        Path(str(path) + suffix).unlink(missing_ok=True)
    recovered = Spool(path)
    assert recovered.recovery is not None and "moved aside" in recovered.recovery.reason
    assert Path(recovered.recovery.moved_to).exists()
    recovered.append(factory.make(heartbeat()))
    assert recovered.depth() == 1


class _Seq:
    def __init__(self, last: int) -> None:
        self.last = last

    def next(self) -> int:
        self.last += 1
        return self.last


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_ten_thousand_events_survive_two_broker_restarts(broker: Broker, tmp_path: Path, sig: int) -> None:
    sub = Subscriber(broker.host, broker.port)
    time.sleep(1.2)  # the broker autosaves the subscriber's session every second

    async def produce() -> int:
        sink = MqttSink(MqttSettings.from_url(broker.url + "?keepalive=5"))
        factory = EventFactory("gpu-7", sink.prepare("gpu-7", tmp_path))
        sink.attach(factory)
        await sink.start()
        for i in range(10_000):
            await sink.publish(factory.make(sample(pid=i + 1)))
            if i in (3000, 6500):
                # SIGTERM: the broker saves its sessions as it stops. SIGKILL: it comes back
                # from its last autosave (every second here) without what it acknowledged
                # since; the sink's replay of recently acknowledged events covers that.
                await asyncio.to_thread(broker.restart, sig)
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


@pytest.mark.parametrize("replay", [0, 30])
def test_events_a_crashed_broker_forgot_are_replayed(tmp_path: Path, replay: int) -> None:
    """Mosquitto acknowledges before it saves. A broker that never autosaves during the test and is
    SIGKILLed comes back from its last clean save, without the events it acknowledged since. With
    replay=0 they are gone (the control: this is the loss being tested for); with replay=30 the sink
    sends them again after reconnecting."""
    broker = Broker(tmp_path / "broker", autosave_s=3600).start()
    try:
        sub = Subscriber(broker.host, broker.port, client_id="offline-sub")
        sub.close()  # offline from now on: its persistent session queues everything
        broker.restart(signal.SIGTERM)  # a clean save: the session and its subscription are on disk

        async def produce() -> None:
            sink = MqttSink(MqttSettings.from_url(f"{broker.url}?keepalive=5&replay={replay}"))
            factory = EventFactory("gpu-9", sink.prepare("gpu-9", tmp_path / "agent"))
            await sink.start()
            for i in range(500):
                await sink.publish(factory.make(sample(pid=i + 1)))
            assert await asyncio.to_thread(wait_for, lambda: sink.depth() == 0 and sink.connected, 20)
            await asyncio.to_thread(broker.restart, signal.SIGKILL)  # forgets all 500
            if replay:
                assert await asyncio.to_thread(wait_for, lambda: sink.replayed > 0, 20)
            else:
                await asyncio.sleep(2)  # time enough for a replay, were there one
                assert sink.replayed == 0, "replay=0 must not resend anything"
            assert await asyncio.to_thread(wait_for, lambda: sink.depth() == 0 and sink.connected, 20)
            await sink.close()

        asyncio.run(produce())
        sub = Subscriber(broker.host, broker.port, client_id="offline-sub")
        try:
            wait_for(lambda: len({e["seq"] for e in sub.events()}) >= 500, 5 if replay else 2)
            seqs = {e["seq"] for e in sub.events() if e["seq"]}
        finally:
            sub.close()
    finally:
        broker.stop()
    if replay:
        assert seqs == set(range(1, 501))
    else:
        assert seqs == set(), "without a replay the crashed broker's acknowledged events are lost"


def test_spool_keeps_acknowledged_events_for_a_replay(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool.db", keep_acked_s=0.5)
    factory = EventFactory("h1", _Seq(0))
    for _ in range(10):
        spool.append(factory.make(heartbeat()))
    spool.ack([1, 2, 3, 4])
    assert spool.depth() == 6 and [r[0] for r in spool.pending(3)] == [5, 6, 7]
    assert spool.requeue_acked() == 4
    assert spool.depth() == 10 and [r[0] for r in spool.pending(2)] == [1, 2]
    spool.ack([1, 2])
    time.sleep(0.6)
    spool.ack([3])  # past the window: 1 and 2 are deleted for good
    assert spool.requeue_acked() == 1 and spool.depth() == 8
    spool.close()
    # Without a window an acknowledged event is deleted at once.
    plain = Spool(tmp_path / "plain.db")
    plain.append(factory.make(heartbeat()))
    plain.ack([11])
    assert plain.requeue_acked() == 0 and plain.depth() == 0


def test_spool_from_before_replay_is_upgraded(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    db = sqlite3.connect(path)
    db.executescript("CREATE TABLE events (seq INTEGER PRIMARY KEY, id TEXT NOT NULL, type TEXT NOT NULL, "
                     "ts REAL NOT NULL, payload BLOB NOT NULL);"
                     "CREATE TABLE meta (k TEXT PRIMARY KEY, v TEXT NOT NULL);"
                     "INSERT INTO events VALUES (7, 'abc', 'heartbeat', 1.0, x'7b7d');"
                     "INSERT INTO meta VALUES ('last_seq', '7');")
    db.close()
    spool = Spool(path, keep_acked_s=30)
    assert spool.recovery is None and spool.depth() == 1 and spool.last_seq() == 7
    spool.ack([7])
    assert spool.depth() == 0 and spool.requeue_acked() == 1


def test_acknowledged_events_go_first_when_the_spool_is_full(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool.db", max_bytes=64 * 1024, keep_acked_s=3600)
    factory = EventFactory("h1", _Seq(0))
    for _ in range(300):
        spool.append(factory.make(sample(cmdline=["z" * 50])))
    spool.ack(list(range(1, 251)))
    summary = spool.enforce_limit(lambda data: make(factory, "events_dropped", **data))
    assert summary is None and not spool.over_limit(), "delivered events made the room"
    assert spool.depth() == 50 and spool.requeue_acked() == 0


def test_spool_db_is_sqlite_wal(tmp_path: Path) -> None:
    Spool(tmp_path / "s.db").close()
    mode = sqlite3.connect(tmp_path / "s.db").execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"


def test_spool_and_state_are_private_whatever_the_umask(tmp_path: Path) -> None:
    """The spool holds command lines and the state names policies: 0600 files in a 0700 directory,
    created exclusively, even when the agent runs outside systemd with a permissive umask."""
    from weightwarden.agent.enforce.enforcer import atomic_write

    old = os.umask(0o022)
    try:
        state = tmp_path / "state"
        spool = Spool(state / "spool.db")
        factory = EventFactory("h1", _Seq(0))
        spool.append(factory.make(sample()))
        atomic_write(state / "budgets.json", {"a": 1})
        seq = Sequencer(state / "seq")
        seq.next()
        modes = {p.name: p.stat().st_mode & 0o777 for p in state.iterdir()}
        assert (state.stat().st_mode & 0o777) == 0o700
        assert modes and all(m == 0o600 for m in modes.values()), modes
        assert not [p for p in state.iterdir() if p.name.endswith(".tmp")], "no fixed-name temporary files"
        spool.close()
        # A spool an older version left world-readable is tightened when opened.
        (state / "spool.db").chmod(0o644)
        Spool(state / "spool.db").close()
        assert (state / "spool.db").stat().st_mode & 0o777 == 0o600
    finally:
        os.umask(old)
