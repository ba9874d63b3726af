#!/usr/bin/env python3
"""policy simulate throughput: samples replayed per second, and the floor of a day in under 10 s.

A day of 1 Hz samples from one busy GPU host is generated (an inference server
answering a few hundred clients all day, a training job pushing metrics and
checkpoints to allowlisted storage, an exporter, a nightly upload, short-lived
helpers), written as ``top --json`` lines, and replayed through the example
policy with budgets and thresholds:

1. the CLI end to end (``weightwarden-agent policy simulate --json``: process
   start, reading, parsing, replay, report);
2. the peers: ``json.loads`` and ``orjson.loads`` (what the CLI uses) of every
   line and nothing else, the floor any replay of this file pays.

Wall and CPU time are both printed: on a shared machine the wall time includes
waiting for other work.

Run: python bench/simulate.py [--samples 86400]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


FLOOR_S = 10.0
T0 = 1_717_200_000.0
POLICY = """apiVersion: weightwarden/v1
kind: EgressPolicy
metadata: {name: bench}
spec:
  allow: [{cidr: 10.0.0.0/8}, {cidr: 172.16.0.0/12, ports: [443]}]
  caps:
    - {name: watch-all, rate: 1Gbit, action: alert}
    - {name: uploads, rate: 5Mbit, match: {uids: [1001]}}
    - {name: trainer, rate: 50Mbit, match: {cgroups: [system.slice/trainer.service]}}
    - {name: host-default, rate: 20Mbit}
  budgets: [{name: daily, bytes: 50GB, window: 24h}, {name: hourly, bytes: 5GB, window: 1h, action: block}]
  thresholds: [{name: burst, bytes: 2GB, window: 10m, severity: high}]
"""


def day(n: int, seed: int = 7) -> list[str]:
    rng = random.Random(seed)
    clients = [f"203.0.{rng.randrange(256)}.{rng.randrange(1, 255)}" for _ in range(300)]
    lines = []
    for i in range(n):
        ts = T0 + i
        serving: list[dict[str, Any]] = [
            {"address": c, "port": rng.randrange(30000, 60000), "tx_bytes": rng.randrange(2000, 400_000),
             "accepted": True} for c in rng.sample(clients, 30)]
        procs: list[dict[str, Any]] = [
            {"pid": 4100, "uid": 1000, "exe": "/usr/bin/python3", "name": "vllm", "cgroup": "/system.slice/vllm.service",
             "tx_bytes": sum(d["tx_bytes"] for d in serving) + 50_000, "destinations": serving},
            {"pid": 5200, "uid": 1000, "exe": "/usr/bin/python3", "name": "torchrun",
             "cgroup": "/system.slice/trainer.service/rank0",
             "tx_bytes": 0, "destinations": [{"address": "10.0.4.20", "port": 443, "tx_bytes": rng.randrange(0, 8_000_000)},
                                             {"address": "172.16.8.3", "port": 443, "tx_bytes": 20_000}]},
            {"pid": 900, "uid": 65534, "exe": "/usr/bin/node_exporter", "name": "node_exporter",
             "cgroup": "/system.slice/node_exporter.service", "tx_bytes": 0,
             "destinations": [{"address": "10.0.0.5", "port": 9100, "tx_bytes": 30_000, "accepted": True}]},
        ]
        if 3600 <= i % 86400 < 5400:  # a nightly upload by a user
            procs.append({"pid": 7000 + i // 100_000, "uid": 1001, "exe": "/usr/bin/rclone", "name": "rclone",
                          "cgroup": "/user.slice/user-1001.slice/session-4.scope", "tx_bytes": 0,
                          "destinations": [{"address": "198.51.100.7", "port": 443, "tx_bytes": 625_000}]})
        if i % 17 == 0:  # short-lived helpers, each a new pid
            procs.append({"pid": 20000 + i, "uid": 0, "exe": "/usr/bin/curl", "name": "curl", "cgroup": "/",
                          "tx_bytes": 0, "destinations": [{"address": rng.choice(clients), "port": 443,
                                                           "tx_bytes": 1500}]})
        for p in procs:
            if not p["tx_bytes"]:
                p["tx_bytes"] = sum(d["tx_bytes"] for d in p["destinations"])
        attributed = sum(p["tx_bytes"] for p in procs)
        lines.append(json.dumps({"ts": ts, "interval_s": 1.0, "layer": "transport-payload",
                                 "interfaces": [{"name": "eth0", "tx_bytes": int(attributed * 1.05)}],
                                 "processes": procs, "attributed_tx_bytes": attributed,
                                 "unattributed_tx_bytes": int(attributed * 0.05), "unowned_flow_tx_bytes": 0,
                                 "lost_events": 0}))
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=86400)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp())
    lines = day(args.samples)
    samples_path = tmp / "day.jsonl"
    samples_path.write_text("\n".join(lines) + "\n")
    policy_path = tmp / "policy.yaml"
    policy_path.write_text(POLICY)
    size_mb = samples_path.stat().st_size / 1e6
    n = args.samples

    # The peers: reading and parsing every line, nothing else (streamed, as the CLI reads), with the
    # standard library and with orjson, which the CLI uses.
    peers = {}
    for label, loads in (("json.loads", json.loads), ("orjson.loads", orjson.loads)):
        t, c = time.perf_counter(), time.process_time()
        procs = dests = 0
        with samples_path.open("rb") as fh:
            for line in fh:
                doc = loads(line)
                procs += len(doc["processes"])
                dests += sum(len(p["destinations"]) for p in doc["processes"])
        peers[label] = (time.perf_counter() - t, time.process_time() - c)
    parse_cpu = peers["orjson.loads"][1]

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "weightwarden.agent", "policy", "simulate", str(policy_path),
                          "--samples", str(samples_path), "--json"], capture_output=True, text=True, check=True,
                         cwd=str(REPO))
    cli_wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cli_cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    report = json.loads(out.stdout)
    assert report["samples"] == n, "every sample replayed"

    print(f"\n{n} samples of 1 Hz from one host ({size_mb:.0f} MB of JSON lines, {procs / n:.1f} processes and "
          f"{dests / n:.1f} destinations per sample); load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs\n")
    print(f"{'path':<46} {'wall s':>7} {'CPU s':>7} {'samples/s':>10}")
    print(f"{'policy simulate CLI, end to end':<46} {cli_wall:>7.2f} {cli_cpu:>7.2f} {n / cli_wall:>10,.0f}")
    for label, (wall, cpu) in peers.items():
        print(f"{'peer: ' + label + ' of every line, nothing else':<46} {wall:>7.2f} {cpu:>7.2f} {n / wall:>10,.0f}")
    print(f"\nreplay beyond parsing: {max(cli_cpu - parse_cpu, 0) / n * 1e6:.0f} us of CPU per sample; "
          f"{len(report['alerts'])} alerts; held back {[c['held_back_s'] for c in report['caps']]} s per cap")
    day_s = cli_wall * 86400 / n
    verdict = "PASS" if day_s < FLOOR_S else "FAIL"
    print(f"floor: a day of 1 Hz samples in under {FLOOR_S:.0f} s: {day_s:.2f} s wall, "
          f"{cli_cpu * 86400 / n:.2f} s CPU ({verdict})")
    return 0 if verdict == "PASS" else 1


if __name__ == "__main__":
    raise SystemExit(main())
