"""eBPF attribution of real containers: podman + runc (tests/helpers/containers.py's Podman), in the
lab's container network namespace, in a kubelet-shaped pod cgroup the runtime made, with their own
PID and mount namespaces. The agent runs in the lab's host namespace, as for the hand-made containers
(test_containers_netns.py), and must name the same things: the process, its bytes, its container.
Ground truth: iperf3's own byte count, curl's upload sizes."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.agent.attribution.test_containers_netns import IPERF_PORT, TCP_PORT, UDP_PORT, _per_pid, _since
from tests.helpers.containers import POD_UID, AgentTop, Lab, Podman, lab_fixture, podman_fixture
from tests.helpers.flaky import load_sensitive
from tests.helpers.iperf import credited_as_sent, left_the_host
from tests.helpers.netns import wait_for

pytestmark = pytest.mark.privileged


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    yield from lab_fixture()


@pytest.fixture(scope="module")
def podman(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Podman]:
    yield from podman_fixture(lab, tmp_path_factory.mktemp("podman"))


@pytest.fixture(scope="module")
def agent(lab: Lab, podman: Podman) -> Iterator[AgentTop]:
    lab.sink(TCP_PORT, UDP_PORT, quiet=False)
    top = AgentTop(lab, "--interval", "1")
    top.wait_ready()
    yield top
    top.stop()


def iperf_from_a_container(lab: Lab, podman: Podman, agent: AgentTop,
                           size: str) -> tuple[dict[str, Any], dict[str, Any], str]:
    """iperf3 in a real container: (its process as the agent reported it, iperf3's report, container id)."""
    lab.popen(lab.out, "iperf3", "-s", "-1", "-p", str(IPERF_PORT), "-B", lab.out_addr,
              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert wait_for(lambda: f":{IPERF_PORT}" in subprocess.run(
        ["ip", "netns", "exec", lab.out, "ss", "-ltn"], capture_output=True, text=True).stdout)
    start = len(agent.samples)
    res = podman.run("iperf3", "-c", lab.out_addr, "-p", str(IPERF_PORT), "-n", size, "-J")
    cid = podman.last_id()
    report = json.loads(res.stdout)
    pids = _per_pid(_since(agent, start))
    senders = [p for p in pids.values() if any(d["port"] == IPERF_PORT for d in p["destinations"])]
    assert len(senders) == 1, pids
    return senders[0], report, cid


def test_a_real_containers_upload_is_credited_to_its_process_and_named_by_its_runtime(
        lab: Lab, podman: Podman, agent: AgentTop) -> None:
    proc, report, cid = iperf_from_a_container(lab, podman, agent, "100M")
    assert credited_as_sent(proc["tx_bytes"], report), (proc["tx_bytes"], left_the_host(report))
    cgroup = f"{podman.pod_parent()}/libpod-{cid}"
    assert proc["cgroup"] == cgroup, "the runtime's own cgroup, as runc made it"
    assert proc["container"] == {"cgroup": cgroup, "runtime": "podman", "id": cid, "pod_uid": POD_UID}
    assert (lab.out_addr, IPERF_PORT, "tcp") in {(d["address"], d["port"], d["protocol"]) for d in proc["destinations"]}


def test_a_real_containers_first_program_is_named_by_what_it_runs(lab: Lab, podman: Podman, agent: AgentTop) -> None:
    """runc's init execs the container's program in place (same pid, same start): the kernel announces it again."""
    proc, _report, _cid = iperf_from_a_container(lab, podman, agent, "20M")
    assert proc["name"] == "iperf3", proc["name"]


@load_sensitive  # a short-lived curl is now and then reported without its container under load: open, issue 19's note
def test_hundred_short_lived_uploads_from_a_real_container(lab: Lab, podman: Podman, agent: AgentTop,
                                                           tmp_path: Path) -> None:
    blob = tmp_path / "blob"
    blob.write_bytes(os.urandom(200_000))
    start = len(agent.samples)
    podman.run("bash", "-c", f"for i in $(seq 100); do curl -s -H 'Expect:' -o /dev/null -T /data/blob "
               f"http://{lab.out_addr}:{TCP_PORT}/up || exit 1; done", volumes=(f"{tmp_path}:/data:ro",))
    cid = podman.last_id()
    by_pid = {pid: p for pid, p in _per_pid(_since(agent, start)).items() if p["name"] == "curl"}
    curls = list(by_pid.values())
    credited = sum(p["tx_bytes"] for p in curls)
    assert 0.98 * 100 * 200_000 <= credited <= 1.01 * 100 * 200_000, (credited, len(curls))
    assert len(curls) >= 98
    assert all(p["container"] and p["container"]["id"] == cid and p["container"]["runtime"] == "podman"
               for p in curls), (cid, [(pid, p["container"]) for pid, p in by_pid.items()
                                       if not (p["container"] and p["container"]["id"] == cid)][:3])
