"""Caps per container on real containers (podman + runc, tests/helpers/containers.py): a pod's cap is
found from the cgroups the runtime made (kubelet cgroupfs layout) and the network namespace its
containers joined, and held by the host-side veth, while another pod's real container runs free.
Ground truth: tc's byte count of the cap's class and iperf3's goodput, as in
test_container_caps_netns.py (whose hand-made lab covers the systemd driver's names)."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Generator, Iterator
from pathlib import Path

import pytest

from tests.agent.enforce.test_container_caps_netns import (
    CAP,
    Agent,
    Box,
    add_box,
    caps_chain,
    class_bytes,
    ctr_iface,
    goodput,
    out_iface,
    remove_box,
)
from tests.helpers.containers import Lab, Podman, make_lab, podman_fixture, podman_missing
from tests.helpers.netns import sh, wait_for

pytestmark = pytest.mark.privileged

POD_A = "7c1e0a9d-2b3c-4d5e-8f60-1234567890ab"
POD_B = "8d2f1bae-3c4d-4e5f-9a71-234567890abc"


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Lab, Box, Podman]]:
    lab = make_lab()
    boxes: list[Box] = []
    podmans: Generator[Podman, None, None] = podman_fixture(lab, tmp_path_factory.mktemp("podman"))
    try:
        podman = next(podmans)
        box_b = add_box(lab, "b", 250, lab.root, boxes)  # B's network; its container is podman's, pod B
        for port in ("5201", "5202"):
            lab.popen(lab.out, "iperf3", "-s", "-p", port, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        assert wait_for(lambda: sh("ss", "-ltn", netns=lab.out).stdout.count(":520") >= 2)
        yield lab, box_b, podman
    finally:
        for proc in lab.procs:
            if proc.poll() is None:
                proc.kill()
        podmans.close()  # containers, storage and runc's v1 cgroups
        for box in boxes:
            remove_box(box)
        lab.teardown()


def test_a_real_pods_container_is_capped_by_its_veth_and_another_pod_is_not(
        lab: tuple[Lab, Box, Podman], tmp_path: Path) -> None:
    assert podman_missing() is None
    lab_, box_b, podman = lab
    policy = tmp_path / "policy.yaml"
    policy.write_text("apiVersion: weightwarden/v1\nkind: EgressPolicy\nmetadata: {name: pod-cap}\nspec:\n"
                      f"  interfaces: [{out_iface(lab_)}]\n  interval: 1s\n  caps:\n"
                      f"    - {{name: pod-a, rate: 20Mbit, match: {{containers: [{{runtime: podman, pod_uid: {POD_A}}}]}}}}\n")
    # The pod is running before the agent looks (its pause-like container), as on a node.
    sleeper = podman.start("sleep", "300", pod_uid=POD_A)
    agent = Agent(lab_, policy, tmp_path / "state")
    try:
        assert wait_for(lambda: ctr_iface(lab_) in caps_chain(lab_) or agent.proc.poll() is not None, 20), (
            caps_chain(lab_), "".join(agent.stderr[-10:]))
        assert box_b.host_veth not in caps_chain(lab_)
        before, t0 = class_bytes(lab_), time.monotonic()
        a = subprocess.Popen(podman.argv("iperf3", "-c", lab_.out_addr, "-p", "5201", "-t", "4", "-J", pod_uid=POD_A),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        b = subprocess.Popen(podman.argv("iperf3", "-c", lab_.out_addr, "-p", "5202", "-t", "4", "-J",
                                         netns=box_b.ns, pod_uid=POD_B), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        out_a, err_a = a.communicate(timeout=120)
        out_b, err_b = b.communicate(timeout=120)
        assert a.returncode == 0 and b.returncode == 0, (err_a[-500:], err_b[-500:])
        wire = (class_bytes(lab_) - before) * 8 / (time.monotonic() - t0)
        rate_a, rate_b = goodput(out_a), goodput(out_b)
        print(f"podman pod A link-layer {wire / 1e6:.2f} Mbit/s, goodput {rate_a / 1e6:.1f}; pod B {rate_b / 1e6:.1f}")
        assert 0.90 * CAP < rate_a < 1.05 * CAP, rate_a
        assert wire < 1.05 * CAP, wire
        assert rate_b > 10 * CAP, rate_b
        assert not agent.of_type("enforcement_error"), agent.of_type("enforcement_error")
    finally:
        agent.proc.send_signal(signal.SIGTERM)
        agent.proc.wait(timeout=20)
        subprocess.run([*podman.base(), "rm", "-f", "-t", "0", sleeper], capture_output=True, timeout=60)
