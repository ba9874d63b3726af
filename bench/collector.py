#!/usr/bin/env python3
"""Collector ingest with correlation on: 1,000 simulated hosts, one egress sample each per second.

For SQLite and PostgreSQL (root: a throwaway cluster), a real Mosquitto and a
real `weightwarden-collector run`. Every second of the run, one host also
reads weights and uploads them; the time from publishing the upload's sample
to its alert row (alerts.created_at) gives the alert latency.

Run: python bench/collector.py [--hosts 1000] [--seconds 20]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sqlalchemy import create_engine, text  # noqa: E402

from weightwarden.collector.store import normalize_url  # noqa: E402
from tests.collector.scenarios import MB, Stream  # noqa: E402
from tests.collector.test_service import publisher  # noqa: E402
from tests.helpers.broker import Broker  # noqa: E402
from tests.helpers.postgres import Postgres, binaries  # noqa: E402


def run(db: str, hosts: int, seconds: int, broker: Broker, workdir: Path) -> dict[str, float]:
    log_path = workdir / f"collector-{time.monotonic_ns()}.log"
    log = open(log_path, "wb")
    proc = subprocess.Popen([sys.executable, "-m", "weightwarden.collector", "run", "--broker", broker.url, "--db", db],
                            cwd=str(REPO), stdout=subprocess.DEVNULL, stderr=log)
    deadline = time.monotonic() + 30
    while b"collector_subscribed" not in log_path.read_bytes() and time.monotonic() < deadline:
        time.sleep(0.1)  # messages published before the subscription would never arrive
    streams = [Stream(f"gpu-{i:04d}") for i in range(hosts)]
    pub = publisher(broker)
    sent_at: dict[str, float] = {}
    published = 0
    t_start = time.monotonic()
    for second in range(seconds):
        tick = t_start + second
        now = time.time()
        for i, s in enumerate(streams):
            s.events.clear()
            s.send(now, pid=1000 + i, nbytes=4096, address="198.18.0.1", exe="/usr/bin/python3.11")
        thief = streams[second % hosts]
        thief.read(now - 1, pid=999_000 + second, nbytes=256 * MB)
        thief.send(now, pid=999_000 + second, nbytes=200 * MB)
        for s in streams:
            for topic, payload in s.messages():
                pub.publish(topic, payload, qos=1)
                published += 1
        sent_at[f"exfiltration:{thief.host}:{999_000 + second}"] = time.time()
        delay = tick + 1 - time.monotonic()
        if delay > 0:
            time.sleep(delay)
    publish_wall = time.monotonic() - t_start
    engine = create_engine(normalize_url(db))
    deadline = time.monotonic() + 120
    stored = 0
    while time.monotonic() < deadline:
        with engine.connect() as conn:
            stored = int(conn.execute(text("SELECT count(*) FROM events")).scalar() or 0)
        if stored >= published:
            break
        time.sleep(0.5)
    drain_wall = time.monotonic() - t_start
    with engine.connect() as conn:
        # Keys name the process by pid and start time: exfiltration:HOST:PID:START.
        created: dict[str, float] = {k.rsplit(":", 1)[0] if k.count(":") == 3 else k: t for k, t in conn.execute(
            text("SELECT key, created_at FROM alerts WHERE kind='exfiltration'")).all()}
    pub.loop_stop()
    pub.disconnect()
    proc.terminate()
    proc.wait(timeout=30)
    lat = sorted(created[k] - t for k, t in sent_at.items() if k in created)
    if stored < published:
        errors = [ln for ln in log_path.read_text(errors="replace").splitlines() if '"error"' in ln]
        print(f"{db.split(':')[0]}: {published - stored} events not stored; collector errors: {errors[:3]}")
    return {"published": published, "stored": stored, "publish_s": publish_wall, "drain_s": drain_wall,
            "rate": stored / drain_wall, "alerts": len(lat), "expected": len(sent_at),
            "p50": statistics.median(lat) if lat else float("nan"),
            "p99": lat[min(len(lat) - 1, int(len(lat) * 0.99))] if lat else float("nan")}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--hosts", type=int, default=1000)
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument("--max-inflight", type=int, default=0,
                        help="the broker's max_inflight_messages: the collector acknowledges after each commit, so "
                             "this bounds what is in flight to it (0: no bound; Mosquitto's default is 20)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp())
    broker = Broker(work / "broker", max_inflight=args.max_inflight).start()
    rows = {}
    try:
        rows["SQLite"] = run(f"sqlite:///{work}/bench.db", args.hosts, args.seconds, broker, work)
        if os.geteuid() == 0 and binaries():
            pg = Postgres()
            try:
                rows["PostgreSQL"] = run(pg.url, args.hosts, args.seconds, broker, work)
            finally:
                pg.stop()
    finally:
        broker.stop()
    print(f"\n{args.hosts} hosts x 1 egress sample/s for {args.seconds}s (+1 exfiltration incident/s), "
          f"correlation on, one collector, broker max_inflight_messages {args.max_inflight}\n")
    print(f"{'database':<11} {'published':>9} {'stored':>8} {'events/s':>9} {'kept up':>8} "
          f"{'alerts':>9} {'latency p50':>12} {'p99':>8}")
    for name, r in rows.items():
        kept = "yes" if r["drain_s"] <= r["publish_s"] + 2 else f"+{r['drain_s'] - r['publish_s']:.0f}s"
        print(f"{name:<11} {r['published']:>9,} {r['stored']:>8,} {r['rate']:>9,.0f} {kept:>8} "
              f"{r['alerts']:>4}/{r['expected']:<4} {r['p50']:>11.2f}s {r['p99']:>7.2f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
