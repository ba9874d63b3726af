#!/usr/bin/env python3
"""Cap precision, reload-to-enforcement time, and the cost of our rules, in namespaces.

- precision: a cap of R is applied (enforce apply), one iperf3 upload runs for
  a few seconds, the interface's own byte counter gives the link-layer rate;
  measured/requested is printed for 1 Mbit/s .. 1 Gbit/s;
- reload: the daemon runs with a 1 s interval, the policy file is rewritten
  with a new rate, and we time until tc reports the new class rate;
- overhead: uncapped (allowlisted) iperf3 throughput with no rules, and with
  the agent's rules loaded.

Run as root: python bench/caps.py
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
# Agents started here measure on the fallback path: the eBPF path would attach to this machine's
# root cgroup (bench/connections.py measures the eBPF path, in a cgroup of its own).
os.environ.setdefault("WEIGHTWARDEN_ATTRIBUTION", "nfqueue")

from tests.helpers.netns import NetnsPair, make_pair, wait_for  # noqa: E402

POLICY = """apiVersion: weightwarden/v1
kind: EgressPolicy
metadata: {{name: bench}}
spec:
  interval: 1s
  allow: [{{cidr: 198.18.9.0/24}}]
  caps: [{{name: c, rate: {rate}}}]
"""
RATES = ["1Mbit", "5Mbit", "20Mbit", "100Mbit", "500Mbit", "1Gbit"]


def agent(pair: NetnsPair, *args: str) -> subprocess.CompletedProcess[str]:
    return pair.run(pair.a, sys.executable, "-m", "weightwarden.agent", *args, check=False)


def tx(pair: NetnsPair) -> int:
    return int(pair.run(pair.a, "cat", f"/sys/class/net/{pair.veth_a}/statistics/tx_bytes").stdout)


def upload(pair: NetnsPair, dst: str, seconds: int) -> tuple[float, float]:
    before, t0 = tx(pair), time.monotonic()
    out = pair.run(pair.a, "iperf3", "-c", dst, "-t", str(seconds), "-J", check=False).stdout
    wire = (tx(pair) - before) * 8 / (time.monotonic() - t0)
    return wire, float(json.loads(out)["end"]["sum_received"]["bits_per_second"])


def parse_bps(rate: str) -> float:
    scale = {"k": 1e3, "M": 1e6, "G": 1e9}
    return float(rate[:-4]) * scale[rate[-4]]


def main() -> int:
    pair = make_pair()
    tmp = Path(tempfile.mkdtemp())
    state = tmp / "state"
    try:
        vb = pair.veth_a.replace("wwa", "wwb")
        pair.run(pair.a, "ip", "addr", "add", "198.18.9.1/24", "dev", pair.veth_a)
        pair.run(pair.b, "ip", "addr", "add", "198.18.9.2/24", "dev", vb)
        pair.popen(pair.b, "iperf3", "-s", stdout=subprocess.DEVNULL)
        assert wait_for(lambda: ":5201" in pair.run(pair.b, "ss", "-ltn").stdout)

        print(f"{'requested':>10} {'link-layer':>12} {'ratio':>7} {'TCP goodput':>12}")
        for rate in RATES:
            policy = tmp / "p.yaml"
            policy.write_text(POLICY.format(rate=rate))
            assert agent(pair, "enforce", "apply", "--policy", str(policy), "--state-dir", str(state)).returncode == 0
            wire, good = upload(pair, pair.addr_b, 5)
            want = parse_bps(rate)
            print(f"{rate:>10} {wire / 1e6:>10.2f}M {wire / want:>7.3f} {good / 1e6:>10.2f}M")

        base = [upload(pair, "198.18.9.2", 4)[1] for _ in range(3)]
        agent(pair, "enforce", "clear", "--state-dir", str(state))
        bare = [upload(pair, "198.18.9.2", 4)[1] for _ in range(3)]
        print(f"\nuncapped (allowlisted) throughput: no rules {max(bare) / 1e9:.2f} Gbit/s, "
              f"with rules {max(base) / 1e9:.2f} Gbit/s ({max(base) / max(bare) * 100:.1f}%)")

        policy = tmp / "p.yaml"
        policy.write_text(POLICY.format(rate="20Mbit"))
        daemon = pair.popen(pair.a, sys.executable, "-m", "weightwarden.agent", "run", "--policy", str(policy), "--state-dir",
                            str(state), "--sink", "stdout", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            cwd=str(REPO))
        assert wait_for(lambda: "rate 20Mbit" in pair.run(pair.a, "tc", "class", "show", "dev", pair.veth_a).stdout,
                        20)
        timings = []
        for i, rate in enumerate(["30Mbit", "40Mbit", "50Mbit", "60Mbit", "70Mbit"]):
            time.sleep(0.3 + 0.17 * i)  # land at different points of the 1 s interval
            policy.write_text(POLICY.format(rate=rate))
            t0 = time.monotonic()
            wait_for(lambda r=rate: f"rate {r}" in pair.run(pair.a, "tc", "class", "show", "dev", pair.veth_a).stdout,
                     10, 0.01)
            timings.append(time.monotonic() - t0)
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=20)
        print(f"policy file change -> new cap in the kernel (interval 1 s): "
              f"min {min(timings):.2f}s, median {sorted(timings)[2]:.2f}s, max {max(timings):.2f}s")
        agent(pair, "enforce", "clear", "--state-dir", str(state))
    finally:
        pair.teardown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
