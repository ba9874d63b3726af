#!/usr/bin/env python3
"""Event pipeline throughput and cost, against a real Mosquitto on this machine.

1. events/s from the daemon's sink (spool append -> QoS 1 publish -> ack), with
   production-sized egress_sample payloads, and the spool's append latency; once
   keeping acknowledged events for the default replay window, once deleting them;
2. the ceiling: a bare paho-mqtt QoS 1 publish loop of the same payloads;
3. the agent's CPU at 1 Hz sampling with MQTT on (namespaces, root).

Run: python bench/events.py [--events 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
# Agents started here measure on the fallback path: the eBPF path would attach to this machine's
# root cgroup (bench/connections.py measures the eBPF path, in a cgroup of its own).
os.environ.setdefault("WEIGHTWARDEN_ATTRIBUTION", "nfqueue")

import paho.mqtt.client as mqtt  # noqa: E402
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion  # noqa: E402

from tests.helpers.broker import Broker  # noqa: E402
from tests.helpers.netns import make_pair  # noqa: E402
from weightwarden.agent.transport.mqtt import MqttSettings, MqttSink  # noqa: E402
from weightwarden.events import EgressSample, EventFactory  # noqa: E402

SAMPLE = {
    "ts": 0.0, "interval_s": 1.0, "layer": "transport-payload",
    "interfaces": [{"name": "eth0", "tx_bytes": 2510000, "rx_bytes": 40000, "tx_packets": 1800, "tx_rate_bps": 2e7}],
    "processes": [{"pid": 5000 + i, "name": "python3", "exe": "/usr/bin/python3.11", "uid": 1000, "user": "alice",
                   "cgroup": "/user.slice/session-4.scope", "tx_bytes": 240000,
                   "destinations": [{"address": "203.0.113.9", "port": 443, "tx_bytes": 240000}]} for i in range(3)],
    "attributed_tx_bytes": 720000, "unattributed_tx_bytes": 11000, "unowned_flow_tx_bytes": 0, "lost_events": 0,
}


def through_sink(url: str, n: int, state: Path) -> tuple[float, list[float]]:
    async def go() -> tuple[float, list[float]]:
        sink = MqttSink(MqttSettings.from_url(url))
        factory = EventFactory("bench-host", sink.prepare("bench-host", state))
        sink.attach(factory)
        await sink.start()
        lat = []
        t0 = time.perf_counter()
        for _ in range(n):
            ev = factory.make(EgressSample.model_validate(SAMPLE))
            a = time.perf_counter()
            await sink.publish(ev)
            lat.append(time.perf_counter() - a)
            if len(lat) % 500 == 0:
                await asyncio.sleep(0)
        while sink.depth():
            await asyncio.sleep(0.01)
        took = time.perf_counter() - t0
        await sink.close()
        return n / took, lat

    return asyncio.run(go())


def bare_paho(host: str, port: int, n: int) -> float:
    payload = json.dumps({"schema": 1, "id": "0" * 32, "host": "bench-host", "seq": 1, "ts": 0.0,
                          "type": "egress_sample", "data": SAMPLE}).encode()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-paho", protocol=MQTTProtocolVersion.MQTTv5)
    client.max_inflight_messages_set(200)
    done = threading.Semaphore(0)
    client.on_publish = lambda *a, **k: done.release()
    client.connect(host, port)
    client.loop_start()
    t0 = time.perf_counter()
    for _ in range(n):
        client.publish("weightwarden/v1/bench-host/egress_sample", payload, qos=1)
    for _ in range(n):
        done.acquire()
    took = time.perf_counter() - t0
    client.loop_stop()
    client.disconnect()
    return n / took


def agent_cpu(seconds: int) -> float:
    pair = make_pair()
    tmp = Path(tempfile.mkdtemp())
    try:
        broker = Broker(tmp / "b", host=pair.addr_b, port=18831, netns=pair.b).start()
        policy = REPO / "weightwarden" / "policies" / "monitor-only.yaml"
        agent = pair.popen(pair.a, sys.executable, "-m", "weightwarden.agent", "run", "--policy", str(policy), "--state-dir",
                           str(tmp / "s"), "--sink", f"mqtt://{pair.addr_b}:18831", "--sample-interval", "1",
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=str(REPO))
        time.sleep(3)
        ticks = os.sysconf("SC_CLK_TCK")

        def cpu() -> float:
            f = Path(f"/proc/{agent.pid}/stat").read_text().rsplit(")", 1)[1].split()
            return (int(f[11]) + int(f[12])) / ticks

        c0, t0 = cpu(), time.monotonic()
        time.sleep(seconds)
        used = (cpu() - c0) / (time.monotonic() - t0)
        agent.terminate()
        agent.wait(timeout=20)
        broker.stop()
        return used
    finally:
        pair.teardown()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=20000)
    parser.add_argument("--cpu-seconds", type=int, default=30)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp())
    broker = Broker(tmp / "broker").start()
    try:
        rate, lat = through_sink(broker.url, args.events, tmp / "state")
        rate_no_replay, _ = through_sink(broker.url + "?replay=0", args.events, tmp / "state-no-replay")
        ceiling = bare_paho(broker.host, broker.port, args.events)
    finally:
        broker.stop()
    lat_us = sorted(x * 1e6 for x in lat)
    print(f"\n{args.events} egress_sample events (~{len(json.dumps(SAMPLE))} B payload), local Mosquitto, QoS 1\n")
    print(f"{'path':<42} {'events/s':>10}")
    print(f"{'weightwarden sink (spool -> publish -> ack)':<42} {rate:>10,.0f}")
    print(f"{'  the same with replay=0 (ack deletes)':<42} {rate_no_replay:>10,.0f}")
    print(f"{'bare paho-mqtt publish loop (ceiling)':<42} {ceiling:>10,.0f}")
    print(f"\nspool append latency: p50 {statistics.median(lat_us):.0f} us, "
          f"p99 {lat_us[int(len(lat_us) * 0.99)]:.0f} us")
    if os.geteuid() == 0:
        print(f"agent CPU at 1 Hz sampling with MQTT on: {agent_cpu(args.cpu_seconds) * 100:.2f}% of one core")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
