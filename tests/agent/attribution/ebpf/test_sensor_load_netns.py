"""The kernel sensor loads on this kernel, one feature at a time, and says what it lost.

The object is loaded on the running kernel: every program a supported kernel should accept must load,
or the test fails with the verifier's own words. A program the verifier refuses (made to, with the
loader's test hook: a real refusal, with the kernel's message) is left out and the rest keep working;
the agent's sensor report (agent_started, heartbeats, status) names it; only when an essential program
is refused does attribution fall back to NFQUEUE, and says why.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.agent_run import DaemonRun, per_pid
from tests.helpers.containers import Lab, lab_fixture
from tests.helpers.netns import wait_for
from tests.helpers.sensor import HostNs
from weightwarden.agent.attribution.ebpf.loader import ENV_REFUSE, probe_programs
from weightwarden.agent.attribution.ebpf.sensor import CAPABILITIES

pytestmark = pytest.mark.privileged

EXPECTED = {p for c in CAPABILITIES if c.expected for p in c.programs}
VERIFIER_WORDS = re.compile(r"invalid mem access .*\(at .* @ weightwarden\.bpf\.c:\d+\)")
PORT, SIZE = 8094, 3 << 20
POLICY = "apiVersion: weightwarden/v1\nkind: EgressPolicy\nmetadata: {name: sensor}\nspec: {interval: 1s}\n"


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    yield from lab_fixture()


@pytest.fixture(scope="module", autouse=True)
def sink(lab: Lab) -> None:
    lab.sink(PORT, PORT + 1)


def test_the_object_loads_whole_on_this_kernel() -> None:
    found = probe_programs()
    assert found.error is None, f"the kernel refuses the essential programs: {found.error}"
    refused = {name: p.reason for name, p in found.programs.items() if name in EXPECTED and not p.on}
    assert not refused, "the verifier refused: " + "; ".join(f"{name}: {why}" for name, why in refused.items())
    assert set(found.programs) >= EXPECTED


def test_a_refused_program_is_left_out_and_named_with_the_verifiers_words(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_REFUSE, "ww_sockops")
    found = probe_programs()
    assert found.error is None
    sockops = found.programs["ww_sockops"]
    assert not sockops.on and VERIFIER_WORDS.search(sockops.reason or ""), sockops
    assert all(found.programs[p].on for p in EXPECTED - {"ww_sockops"})


def test_a_refused_essential_program_is_the_reason_attribution_cannot_run(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_REFUSE, "ww_egress")
    found = probe_programs()
    assert found.error is not None and "ww_egress" in found.error and VERIFIER_WORDS.search(found.error), found
    out = subprocess.run([sys.executable, "-m", "weightwarden.agent", "sensor", "probe"], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 1 and "ww_egress" in out.stdout


def _agent(lab: Lab, tmp_path: Path, refuse: str, *args: str) -> DaemonRun:
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    return DaemonRun(HostNs(lab), policy, tmp_path / "state", "--attribution", "ebpf",  # type: ignore[arg-type]
                     "--bpf-cgroup", str(lab.root), "--heartbeat-interval", "1", *args, env={ENV_REFUSE: refuse},
                     allow_degraded=True)


def _upload(lab: Lab) -> tuple[int, int]:
    """(pid, bytes the kernel sent: SIZE and any retransmissions)."""
    out = lab.run_ctr(sys.executable, "-m", "tests.helpers.upload", lab.out_addr, str(PORT), str(SIZE)).stdout.split()
    return int(out[0]), int(out[2])


def _credited(agent: DaemonRun, pid: int) -> int:
    samples = [e["data"] for e in agent.events if e["type"] == "egress_sample"]
    return int(per_pid(samples).get(pid, {}).get("tx_bytes", 0))


def test_an_agent_with_one_program_refused_keeps_the_rest_and_says_which(lab: Lab, tmp_path: Path) -> None:
    agent = _agent(lab, tmp_path, "ww_ingress")
    try:
        started: dict[str, Any] = agent.wait_event("agent_started", timeout=30)["data"]
        sensor = started["sensor"]
        assert sensor["path"] == "ebpf" and sensor["degraded"] is True
        dns = sensor["features"]["dns_names"]
        assert dns["on"] is False and dns["reason"].startswith("ww_ingress: ") and VERIFIER_WORDS.search(dns["reason"])
        assert all(sensor["features"][f]["on"] for f in ("egress_bytes", "socket_owners", "unix_relays",
                                                           "accepted_flags", "packet_sockets"))
        beat = agent.wait_event("heartbeat", timeout=15)["data"]
        assert beat["sensor"]["features"]["dns_names"]["on"] is False
        pid, sent = _upload(lab)  # what is left still counts, exactly
        assert wait_for(lambda: _credited(agent, pid) >= sent, 15), (_credited(agent, pid), sent)
        assert _credited(agent, pid) == sent
        sample = next(e["data"] for e in reversed(agent.events) if e["type"] == "egress_sample")
        assert sample["sensor"]["degraded"] is True and sample["attribution"] == "ebpf"
        assert wait_for(lambda: (tmp_path / "state" / "health.json").exists(), 10)
        status = subprocess.run(["nsenter", f"--net=/run/netns/{lab.host}", sys.executable, "-m", "weightwarden.agent",
                                 "status", "--json", "--state-dir", str(tmp_path / "state")],
                                capture_output=True, text=True, timeout=60)
        assert status.returncode == 4, status.stderr
        assert json.loads(status.stdout)["sensor"]["features"]["dns_names"]["on"] is False
    finally:
        agent.stop()


def test_only_a_refused_essential_program_means_the_fallback_and_it_says_why(lab: Lab, tmp_path: Path) -> None:
    agent = _agent(lab, tmp_path, "ww_egress", "--attribution", "auto")
    try:
        sensor = agent.wait_event("agent_started", timeout=30)["data"]["sensor"]
        assert sensor["path"] in ("nfqueue", "sample-time") and sensor["degraded"] is True
        why = sensor["features"]["ebpf_path"]
        assert why["on"] is False and "ww_egress" in why["reason"] and VERIFIER_WORDS.search(why["reason"]), why
    finally:
        agent.stop()
