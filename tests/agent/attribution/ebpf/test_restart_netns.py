"""An agent restart keeps counting: the programs and their maps are pinned in a bpf filesystem, stay
attached while no agent runs, and the next agent takes them over; bytes sent before, during and after
the restart are each counted once, exactly. Without pins the same restart loses what was sent while
the agent was away (the control: this test can fail). ``sensor uninstall`` removes the pins, and the
programs detach.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.agent_run import DaemonRun, per_pid
from tests.helpers.containers import Lab, lab_fixture
from tests.helpers.netns import wait_for
from tests.helpers.sensor import HostNs, bpffs, cgroup_programs

pytestmark = pytest.mark.privileged

PORT = 8096
CHUNK, CHUNKS, PAUSE = 50_000, 80, 0.06  # 4 MB over ~5 s
POLICY = "apiVersion: weightwarden/v1\nkind: EgressPolicy\nmetadata: {name: restart}\nspec: {interval: 1s}\n"


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    yield from lab_fixture()


@pytest.fixture(scope="module", autouse=True)
def sink(lab: Lab) -> None:
    lab.sink(PORT, PORT + 1)


def _agent(lab: Lab, tmp_path: Path, pin: str) -> DaemonRun:
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    agent = DaemonRun(HostNs(lab), policy, tmp_path / "state", "--attribution", "ebpf",  # type: ignore[arg-type]
                      "--bpf-cgroup", str(lab.root), "--bpf-pin-dir", pin)
    agent.wait_event("agent_started", timeout=30)
    return agent


def _credited(agents: list[DaemonRun], pid: int) -> int:
    samples = [e["data"] for a in agents for e in a.events if e["type"] == "egress_sample"]
    return int(per_pid(samples).get(pid, {}).get("tx_bytes", 0))


def _restart_mid_upload(lab: Lab, tmp_path: Path, pin: str) -> tuple[int, int, list[DaemonRun]]:
    """(pid, bytes the kernel sent for it, the two agents)."""
    first = _agent(lab, tmp_path, pin)
    up = lab.popen_ctr(sys.executable, "-m", "tests.helpers.upload", lab.out_addr, str(PORT), str(CHUNK * CHUNKS),
                       str(CHUNKS), str(PAUSE), stdout=subprocess.PIPE)
    assert up.stdout is not None
    pid = int(up.stdout.readline())
    assert wait_for(lambda: _credited([first], pid) > 0, 10)  # the first agent saw part of it
    assert first.stop() == 0
    time.sleep(1.5)  # no agent at all: the upload goes on
    second = _agent(lab, tmp_path, pin)
    done = up.stdout.readline().split()
    assert done[0] == b"sent"
    sent = int(done[1])  # CHUNK * CHUNKS and any retransmissions
    up.wait(timeout=10)
    mark = len(second.events)
    # Two more intervals after the last byte: what is late arrives, nothing may arrive twice.
    assert wait_for(lambda: sum(e["type"] == "egress_sample" for e in second.events[mark:]) >= 3, 10)
    assert second.stop() == 0
    return pid, sent, [first, second]


def test_a_restart_mid_upload_counts_every_byte_once(lab: Lab, tmp_path: Path) -> None:
    with bpffs() as fs:
        pin = str(fs / "ww")
        pid, sent, agents = _restart_mid_upload(lab, tmp_path, pin)
        first, second = agents
        assert 0 < _credited([first], pid) < sent and _credited([second], pid) > 0
        assert _credited(agents, pid) == sent
        # A takeover is not tampering: the sums the loader checks add up across it.
        assert not [e for a in agents for e in a.events if e["type"] == "sensor_tampered"]
        started = [e["data"] for e in second.events if e["type"] == "agent_started"][0]
        assert started["sensor"]["features"]["pinned"]["on"] is True
        assert "took over" in started["features"]["ebpf"]["detail"], started["features"]["ebpf"]
        # Nobody runs now, and the programs are still attached: pinned, they outlive the agent.
        assert {p["name"] for p in cgroup_programs(lab.root)} >= {"ww_egress", "ww_sock_create"}
        out = subprocess.run([sys.executable, "-m", "weightwarden.agent", "sensor", "uninstall", "--bpf-pin-dir", pin],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert cgroup_programs(lab.root) == [] and not Path(pin).exists()


def test_without_pins_a_restart_loses_what_was_sent_meanwhile(lab: Lab, tmp_path: Path) -> None:
    pid, sent, agents = _restart_mid_upload(lab, tmp_path, "none")
    assert _credited(agents, pid) < sent - CHUNK  # the gap: over a second of the upload
    assert cgroup_programs(lab.root) == []
