"""Issue 12's proof: 10,000 hostile messages through a real Mosquitto, interleaved with valid events
from 50 hosts, into a real collector process on SQLite.

The collector never stops; every valid event is stored (and every replay recognised); a canary read
published in the middle of the flood alerts within 5 s; every hostile message is a dead letter,
counted under its reason, and the dead-letter table stays within its bounds; payloads bigger than
an MQTT packet may be are refused by the broker and never reach the collector; and the collector's
peak RSS (VmHWM) stays under RSS_BOUND_MIB, although the flood carries hundreds of MiB of 1 MiB
payloads and maximum-size egress samples (each ~20x its size once parsed).
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections import Counter
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from tests.collector.hostile import Hostile, classes, variant
from tests.collector.scenarios import Stream
from tests.collector.test_service import cli, collector, publisher, stats
from tests.helpers.broker import Broker
from tests.helpers.netns import wait_for
from weightwarden.collector.ingest.backpressure import MAX_PACKET
from weightwarden.collector.store.database import DEAD_LETTER_MAX_BYTES, DEAD_LETTER_MAX_ROWS

# The bound the README states (collector: bounded memory): ~90 MiB of interpreter and libraries, the inbox (32 MiB of
# payloads), one batch (2 MiB) parsed (~15x: models, rows, parameters), and the database's page cache.
RSS_BOUND_MIB = 256
HOSTILE = 10_000
HOSTS = 50
PER_HOST = 20
BIG_CLASSES = {"just over 1 MiB": 60}  # copies of classes that are 1 MiB each (the rest share the remainder)


def valid_events(now: float) -> tuple[list[tuple[str, bytes]], list[tuple[str, bytes]]]:
    """(ordinary, big): 50 hosts' heartbeats and samples; and large but valid events."""
    ordinary: list[tuple[str, bytes]] = []
    for h in range(HOSTS):
        s = Stream(f"gpu-{h:02d}")
        s.add("heartbeat", now)
        for i in range(PER_HOST - 1):
            s.send(now - PER_HOST + i, pid=1000 + h, nbytes=4096 + i, address="198.18.1.1")
        ordinary += s.messages()
    big = Stream("gpu-big")
    paths = [f"/srv/models/{i:04d}/" + "p" * 3900 for i in range(250)]  # ~1 MB of paths
    for i in range(30):
        big.add("heartbeat", now + i * 0.001, weights={"paths": paths, "files": 250, "total_bytes": 10**12})
    wide = Stream("gpu-wide")  # the most an egress sample may hold: 200 processes x 32 destinations
    procs = [{"pid": 10_000 + p, "exe": f"/opt/app/bin/worker-{p}", "name": f"worker-{p}", "uid": 1000,
              "user": "svc", "tx_bytes": 32 * 1500,
              "destinations": [{"address": f"198.18.{p}.{d}", "port": 443, "tx_bytes": 1500, "name": "api.example"}
                               for d in range(32)]} for p in range(200)]
    for i in range(10):
        wide.send(now - 30 + i, pid=1, nbytes=1)
        wide.events[-1]["data"]["processes"] = procs
    odd = Stream("gpu-odd")
    odd.add("heartbeat", 1.0)  # 1970: far in the past, still a valid event
    # A jump in the sequence. (The five-million jump of issue 12 is a sweep matter: its memory is the
    # gap check's, tested with the detections.)
    odd.factory.seq.last = 5_000
    odd.add("heartbeat", now)
    return ordinary, big.messages() + wide.messages() + odd.messages()


def hostile_flood(now: float) -> list[Hostile]:
    kinds = classes(now=now)
    small = [k for k in kinds if k.name not in BIG_CLASSES]
    out = [variant(k, 10**6 + i) for k in kinds if k.name in BIG_CLASSES for i in range(BIG_CLASSES[k.name])]
    i = 0
    while len(out) < HOSTILE:
        out.append(variant(small[i % len(small)], 2 * 10**6 + i))
        i += 1
    return out


def interleave(hostile: list[Hostile], valid: list[tuple[str, bytes]]) -> list[tuple[str, bytes]]:
    step = len(hostile) // len(valid) + 1
    out: list[tuple[str, bytes]] = []
    valid_iter = iter(valid)
    for n, h in enumerate(hostile):
        out.append((h.topic, h.payload))
        if n % step == 0:
            out.extend(v for v in [next(valid_iter, None)] if v is not None)
    out.extend(valid_iter)
    return out


class AlertWatch(threading.Thread):
    """Polls the collector's database (read-only) for the canary's alert and notes when it appeared."""

    def __init__(self, db: Path) -> None:
        super().__init__(daemon=True)
        self.db, self.seen_at, self.done = db, 0.0, threading.Event()

    def run(self) -> None:
        while not self.done.is_set() and not self.seen_at:
            try:
                with sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=1) as conn:
                    if conn.execute("SELECT 1 FROM alerts WHERE kind='canary_read'").fetchone():
                        self.seen_at = time.time()
            except sqlite3.Error:
                pass
            time.sleep(0.05)


def peak_rss_mib(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    [line] = [ln for ln in status.splitlines() if ln.startswith("VmHWM:")]
    return int(line.split()[1]) / 1024


def test_ten_thousand_hostile_messages(broker: Broker, tmp_path: Path) -> None:
    db_path = tmp_path / "c.db"
    db = f"sqlite:///{db_path}"
    log = tmp_path / "collector.log"
    proc = collector(broker, db, log=log)
    try:
        assert wait_for(lambda: "collector_subscribed" in log.read_text(), 20), log.read_text()
        now = time.time()
        ordinary, big = valid_events(now)
        flood = hostile_flood(now)
        stream = interleave(flood, ordinary + big)
        # The canary goes out in the middle of the flood.
        s = Stream("gpu-canary")
        s.add("canary_read", now, pid=66, path="/srv/models/.canary", name="cat", exe="/usr/bin/cat", uid=0)
        middle = len(stream) // 2
        watch = AlertWatch(db_path)
        watch.start()
        pub = publisher(broker)
        replays = ordinary[::10]
        canary_sent = 0.0
        for n, (topic, payload) in enumerate(stream[:middle] + s.messages() + stream[middle:] + replays):
            info = pub.publish(topic, payload, qos=1)
            if n == middle:
                canary_sent = time.time()
            if n % 200 == 0:
                info.wait_for_publish(30)
        # Bigger than any MQTT packet the broker takes: refused where it is published. An MQTT 3.1.1
        # client (told no maximum by the broker, as an old or hostile one) so that it really sends it:
        # a v5 client that has the broker's CONNACK drops it itself.
        refused = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="too-big", protocol=MQTTProtocolVersion.MQTTv311)
        refused.connect(broker.host, broker.port)
        refused.loop_start()
        assert wait_for(refused.is_connected, 10)
        refused.publish("weightwarden/v1/gpu-evil/heartbeat", b"x" * (MAX_PACKET + 1), qos=1)
        assert wait_for(lambda: not refused.is_connected(), 10), "the broker must refuse a packet over its limit"
        refused.loop_stop()

        n_valid = len(ordinary) + len(big) + 1
        n_hostile = len(flood)
        assert wait_for(lambda: stats(db).get("stored", 0) + stats(db).get("rejected", 0) >= n_valid + n_hostile
                        and stats(db).get("duplicates", 0) >= len(replays), 120), stats(db)
        watch.done.set()
        watch.join(5)
        pub.loop_stop()
        pub.disconnect()
        assert proc.poll() is None, "the collector must survive: " + log.read_text()[-2000:]
        peak = peak_rss_mib(proc.pid)
        counts = stats(db)
        print(f"\ncollector peak RSS {peak:.0f} MiB; canary alert {watch.seen_at - canary_sent:.2f} s after "
              f"publishing; {counts}")
        assert counts["stored"] == n_valid and counts["duplicates"] == len(replays), counts
        assert counts["rejected"] == n_hostile, counts
        for code, n in Counter(h.code for h in flood).items():
            assert counts[code] == n, (code, counts)
        assert counts["dead_letters"] + counts.get("dead_letters_pruned", 0) == n_hostile
        assert counts["dead_letters"] <= DEAD_LETTER_MAX_ROWS
        with sqlite3.connect(f"file:{db_path}?mode=ro", uri=True) as conn:
            stored_bytes = conn.execute("SELECT sum(length(payload) + length(reason) + length(topic)) "
                                        "FROM dead_letters").fetchone()[0]
            assert stored_bytes <= DEAD_LETTER_MAX_BYTES
            hosts = {r[0] for r in conn.execute("SELECT host FROM hosts")}
        assert {f"gpu-{h:02d}" for h in range(HOSTS)} <= hosts and "gpu-victim" not in hosts
        assert watch.seen_at and watch.seen_at - canary_sent <= 5.0, watch.seen_at - canary_sent
        assert peak < RSS_BOUND_MIB, f"peak RSS {peak:.0f} MiB"
        assert "Traceback" not in log.read_text()
        assert "canary_read" in {a["kind"] for a in json.loads(cli(db, "alerts", "list", "--json").stdout)}
    finally:
        proc.terminate()
        proc.wait(timeout=30)
