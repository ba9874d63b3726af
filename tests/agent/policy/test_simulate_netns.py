"""policy simulate against the real kernel: a recorded upload, replayed under a 20 Mbit cap, is held back
as long as the same upload under the same cap in the kernel."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.agent_run import REPO, TopRun
from tests.helpers.netns import NetnsPair
from weightwarden.agent.policy.loader import parse_policy
from weightwarden.agent.policy.simulate import simulate

pytestmark = pytest.mark.privileged

PORT = 8080
SIZE = 12_500_000  # 5 s at 20 Mbit/s: long enough that connection set-up and slow start are noise
POLICY = """apiVersion: weightwarden/v1
kind: EgressPolicy
metadata: {name: sim}
spec:
  caps: [{name: host-default, rate: 20Mbit}]
"""


def upload(pair: NetnsPair, payload: Path) -> float:
    """Seconds until the receiver has every byte and answered (curl's time_total)."""
    out = pair.run(pair.a, "curl", "-s", "-H", "Expect:", "-o", "/dev/null", "-w", "%{time_total}", "-T", str(payload),
                   f"http://{pair.addr_b}:{PORT}/up")
    return float(out.stdout)


def retransmitted_segments(pair: NetnsPair) -> int:
    """TCP segments namespace a has sent again (a busy machine's veth drops some): they are bytes that left."""
    out = pair.run(pair.a, "nstat", "-asz", "--json", "TcpRetransSegs").stdout
    return int(json.loads(out)["kernel"]["TcpRetransSegs"])


def test_simulated_hold_back_matches_the_kernel_cap(netns_pair: NetnsPair, tmp_path: Path) -> None:
    pair = netns_pair
    sink = pair.popen(pair.b, sys.executable, "-m", "tests.helpers.sink", pair.addr_b, str(PORT), "9000",
                      stdout=subprocess.PIPE, cwd=str(REPO))
    assert sink.stdout is not None and sink.stdout.readline().strip() == b"ready"
    payload = tmp_path / "blob"
    payload.write_bytes(os.urandom(SIZE))

    # Record the upload, uncapped, as top --json sees it.
    top = TopRun(pair, "--interval", "1")
    top.wait_ready()
    resent = retransmitted_segments(pair)
    free = upload(pair, payload)
    resent = retransmitted_segments(pair) - resent
    samples = top.stop()
    (tmp_path / "samples.jsonl").write_text("".join(json.dumps(s) + "\n" for s in samples))

    report = simulate(parse_policy(POLICY).policy, samples)
    (cap,) = report["caps"]
    # Every payload byte that left, once, plus the ones TCP sent again (at most an MSS each, 1448 here).
    assert SIZE <= cap["matched_bytes"] <= 1.01 * SIZE + resent * 1448, (cap, resent)
    assert free < 1.0, f"uncapped, the upload took {free:.2f}s: the veth should be far faster than 20 Mbit/s"

    # The same upload under the same cap, in the kernel.
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    state = str(tmp_path / "state")
    applied = pair.run(pair.a, sys.executable, "-m", "weightwarden.agent", "enforce", "apply", "--policy", str(policy),
                       "--state-dir", state, check=False)
    assert applied.returncode == 0, applied.stderr
    try:
        capped = upload(pair, payload)
    finally:
        pair.run(pair.a, sys.executable, "-m", "weightwarden.agent", "enforce", "clear", "--state-dir", state,
                 check=False)
    # The kernel held the upload back for (nearly) its whole capped duration.
    print(f"simulated held back {cap['held_back_s']}s, max delay {cap['max_delay_s']}s; "
          f"kernel: {capped:.3f}s capped, {free:.3f}s free")
    assert abs(cap["held_back_s"] - capped) <= 0.10 * capped, (cap, capped, free)
    assert abs(cap["max_delay_s"] - (capped - free)) <= 1.0 + 0.10 * capped, "to within one sample interval"
    cli = subprocess.run([sys.executable, "-m", "weightwarden.agent", "policy", "simulate", str(policy), "--samples",
                          str(tmp_path / "samples.jsonl"), "--json"], capture_output=True, text=True, check=True)
    assert json.loads(cli.stdout)["caps"][0]["held_back_s"] == cap["held_back_s"]
