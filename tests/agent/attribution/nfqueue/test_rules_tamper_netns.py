"""The fallback path's rules are watched too: the NFQUEUE rules flushed behind the agent's back are put
back within 2 s, and said so (sensor_tampered, rules_flushed)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.helpers.agent_run import DaemonRun
from tests.helpers.netns import NetnsPair, wait_for
from weightwarden.agent.attribution.nfqueue.rules import CHAIN

pytestmark = pytest.mark.privileged

POLICY = "apiVersion: weightwarden/v1\nkind: EgressPolicy\nmetadata: {name: rules}\nspec: {interval: 1s}\n"


def test_flushed_nfqueue_rules_are_put_back_within_2s(netns_pair: NetnsPair, tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    agent = DaemonRun(netns_pair, policy, tmp_path / "state")
    try:
        started = agent.wait_event("agent_started", timeout=30)["data"]
        assert started["sensor"]["path"] == "nfqueue" and started["sensor"]["degraded"] is True
        agent.wait_event("egress_sample", timeout=15)
        mark, t0 = len(agent.events), time.time()
        for args in (["-D", "OUTPUT", "-j", CHAIN], ["-F", CHAIN]):
            netns_pair.run(netns_pair.a, "iptables", "-w", "-t", "mangle", *args)
        ev = agent.wait_event("sensor_tampered", timeout=5, after=mark)
        took = time.time() - t0
        print(f"NFQUEUE rules flush noticed after {took:.2f} s")
        data = ev["data"]
        assert took < 2.5 and data["detected_ts"] - t0 < 2.0 and data["reattached"] is True
        assert [c["kind"] for c in data["changes"]] == ["rules_flushed"]
        assert wait_for(lambda: f"-A OUTPUT -j {CHAIN}" in netns_pair.run(
            netns_pair.a, "iptables-save", "-t", "mangle").stdout, 5)
    finally:
        assert agent.stop() == 0
