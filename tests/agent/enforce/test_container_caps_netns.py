"""Caps per container, in the kernel: a pod's containers are capped by their host-side veth.

The lab (tests/helpers/containers.py): a "host" namespace where the agent runs, a
"container" A behind a veth in a Kubernetes-shaped cgroup, an "outside" namespace.
Added here: container B (another pod, not matched) and, once the agent runs,
container C (A's pod, matched). Ground truth: tc's own byte count of the cap's
class (link-layer bytes, what the cap limits) and iperf3's goodput.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.agent_run import collect
from tests.helpers.containers import REPO, Lab, make_lab
from tests.helpers.netns import sh, wait_for

pytestmark = pytest.mark.privileged

POD_A = "7c1e0a9d-2b3c-4d5e-8f60-1234567890ab"  # A and C: the pod the policy caps
POD_B = "8d2f1bae-3c4d-4e5f-9a71-234567890abc"
ID_A, ID_B, ID_C = "a7" * 32, "b7" * 32, "c7" * 32
CAP = 20_000_000
INTERVAL = 1.0


@dataclass
class Box:
    """A container: a network namespace behind a veth of the lab's host, and a cgroup."""

    ns: str
    host_veth: str
    addr: str
    cgroup: Path

    def argv(self, *cmd: str) -> list[str]:
        return ["sh", "-c", f'echo $$ > {self.cgroup}/cgroup.procs && exec nsenter --net=/run/netns/{self.ns} "$@"',
                "sh", *cmd]


def _scope(lab: Lab, pod: str, cid: str) -> Path:
    path = (lab.root / "kubepods.slice" / "kubepods-besteffort.slice"
            / f"kubepods-besteffort-pod{pod.replace('-', '_')}.slice" / f"cri-containerd-{cid}.scope")
    path.mkdir(parents=True, exist_ok=True)
    return path


def add_box(lab: Lab, name: str, net: int, cgroup: Path, boxes: list[Box]) -> Box:
    """A routed container namespace, 198.19.{net}.0/30 (the lab's own subnets stay below 220)."""
    box = Box(f"wwx{name}-{lab.tag}", f"wx{name}{lab.tag}"[:15], f"198.19.{net}.2", cgroup)
    boxes.append(box)
    sh("ip", "netns", "add", box.ns)
    sh("ip", "link", "set", "lo", "up", netns=box.ns)
    sh("ip", "link", "add", box.host_veth, "netns", lab.host, "type", "veth", "peer", "name", "eth0", "netns", box.ns)
    sh("ip", "addr", "add", f"198.19.{net}.1/30", "dev", box.host_veth, netns=lab.host)
    sh("ip", "addr", "add", f"{box.addr}/30", "dev", "eth0", netns=box.ns)
    sh("ip", "link", "set", box.host_veth, "up", netns=lab.host)
    sh("ip", "link", "set", "eth0", "up", netns=box.ns)
    sh("ip", "route", "add", "default", "via", f"198.19.{net}.1", netns=box.ns)
    return box


def remove_box(box: Box) -> None:
    for pid in sh("ip", "netns", "pids", box.ns, check=False).stdout.split():
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), signal.SIGKILL)
    sh("ip", "netns", "del", box.ns, check=False)


class Agent:
    """``weightwarden-agent run`` in the lab's host namespace (keeping the mounts: /proc and cgroups as they are)."""

    def __init__(self, lab: Lab, policy: Path, state: Path) -> None:
        self.proc = subprocess.Popen(
            ["nsenter", f"--net=/run/netns/{lab.host}", sys.executable, "-m", "weightwarden.agent", "run",
             "--policy", str(policy), "--state-dir", str(state), "--sink", "stdout", "--host-id", "t",
             "--backend", "nftables", "--attribution", "nfqueue", "--no-nfqueue"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=str(REPO))
        lab.procs.append(self.proc)
        self.events: list[dict[str, Any]] = []
        self.stderr: list[str] = []
        collect(self.proc, self.events, self.stderr)

    def of_type(self, type_: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("type") == type_]


@pytest.fixture(scope="module")
def lab() -> Iterator[tuple[Lab, list[Box]]]:
    lab = make_lab()
    boxes: list[Box] = []
    try:
        # The lab's own container becomes A (pod A); B is another pod.
        lab.pod_cgroup = _scope(lab, POD_A, ID_A)
        add_box(lab, "b", 250, _scope(lab, POD_B, ID_B), boxes)
        for port in ("5201", "5202", "5203"):
            lab.popen(lab.out, "iperf3", "-s", "-p", port, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        assert wait_for(lambda: sh("ss", "-ltn", netns=lab.out).stdout.count(":520") >= 3)
        yield lab, boxes
    finally:
        for proc in lab.procs:
            if proc.poll() is None:
                proc.kill()
        for box in boxes:
            remove_box(box)
        lab.teardown()


def out_iface(lab: Lab) -> str:
    return f"wh{lab.tag}o"[:15]


def ctr_iface(lab: Lab) -> str:
    return f"wh{lab.tag}c"[:15]


@pytest.fixture(scope="module")
def policy(lab: tuple[Lab, list[Box]], tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ctrcaps") / "policy.yaml"
    path.write_text("apiVersion: weightwarden/v1\nkind: EgressPolicy\nmetadata: {name: pod-cap}\nspec:\n"
                    f"  interfaces: [{out_iface(lab[0])}]\n  interval: {INTERVAL}s\n  caps:\n"
                    f"    - {{name: pod-a, rate: 20Mbit, match: {{containers: [{{pod_uid: {POD_A}}}]}}}}\n")
    return path


@pytest.fixture(scope="module")
def agent(lab: tuple[Lab, list[Box]], policy: Path) -> Iterator[Agent]:
    # A process in container A, so the pod is running before the agent starts.
    lab[0].popen_ctr("sleep", "120")
    running = Agent(lab[0], policy, policy.parent / "state")
    assert wait_for(lambda: running.of_type("policy_applied") or running.proc.poll() is not None, 20), "".join(running.stderr)
    yield running
    running.proc.send_signal(signal.SIGTERM)
    running.proc.wait(timeout=20)


def class_bytes(lab: Lab) -> int:
    """Bytes htb sent through the cap's class (link layer). This tc prints no JSON for htb classes."""
    text = sh("tc", "-s", "class", "show", "dev", out_iface(lab), "classid", "7757:100", netns=lab.host).stdout
    sent = re.search(r"Sent (\d+) bytes", text)
    assert sent, f"the cap's class is missing: {text!r}"
    return int(sent.group(1))


def caps_chain(lab: Lab) -> str:
    return sh("nft", "-j", "list", "chain", "inet", "weightwarden", "caps", netns=lab.host, check=False).stdout


def goodput(out: bytes) -> float:
    return float(json.loads(out)["end"]["sum_received"]["bits_per_second"])


def test_dry_run_shows_the_veth_rule(lab: tuple[Lab, list[Box]], policy: Path) -> None:
    lab_, _ = lab
    proc = lab_.popen_ctr("sleep", "30")
    assert wait_for(lambda: Path(lab_.pod_cgroup, "cgroup.procs").read_text().strip() != "")
    res = subprocess.run(["nsenter", f"--net=/run/netns/{lab_.host}", sys.executable, "-m", "weightwarden.agent",
                          "run", "--policy", str(policy), "--dry-run"], capture_output=True, text=True, cwd=str(REPO))
    proc.kill()
    assert res.returncode == 0, res.stderr
    plan = json.loads(res.stdout)
    rules = [c["add"]["rule"]["expr"] for c in plan["nftables"]["nftables"] if "rule" in c.get("add", {})]
    iif = {"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": ctr_iface(lab_)}}
    (cap,) = [r for r in rules if {"counter": "cap-0"} in r]
    assert iif in cap, cap  # A's veth and only A's: B is another pod
    assert f"-i {ctr_iface(lab_)}" in plan["iptables"]["4"]["restore"]


def test_iptables_backend_caps_the_pod_by_its_veth(lab: tuple[Lab, list[Box]], policy: Path, tmp_path: Path) -> None:
    """The same cap through iptables (-i in WEIGHTWARDEN-CAPS, jumped from POSTROUTING), applied once, no daemon."""
    lab_, boxes = lab
    lab_.popen_ctr("sleep", "30")
    assert wait_for(lambda: Path(lab_.pod_cgroup, "cgroup.procs").read_text().strip() != "")
    state = tmp_path / "state"

    def agent_cmd(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["nsenter", f"--net=/run/netns/{lab_.host}", sys.executable, "-m", "weightwarden.agent",
                               *args, "--state-dir", str(state)], capture_output=True, text=True, cwd=str(REPO))

    res = agent_cmd("enforce", "apply", "--policy", str(policy), "--backend", "iptables")
    try:
        assert res.returncode == 0, res.stderr
        assert f"-i {ctr_iface(lab_)}" in sh("iptables-save", "-t", "mangle", netns=lab_.host).stdout
        before, t0 = class_bytes(lab_), time.monotonic()
        a = lab_.popen_ctr("iperf3", "-c", lab_.out_addr, "-p", "5201", "-t", "3", "-J", stdout=subprocess.PIPE)
        b = lab_.popen(boxes[0].ns, "iperf3", "-c", lab_.out_addr, "-p", "5202", "-t", "3", "-J",
                       stdout=subprocess.PIPE)
        rate_a, rate_b = goodput(a.communicate(timeout=60)[0]), goodput(b.communicate(timeout=60)[0])
        wire = (class_bytes(lab_) - before) * 8 / (time.monotonic() - t0)
        print(f"iptables: pod A link-layer {wire / 1e6:.2f} Mbit/s, goodput {rate_a / 1e6:.1f}; "
              f"pod B {rate_b / 1e6:.1f} Mbit/s")
        assert abs(wire - CAP) / CAP < 0.05 and 0.90 * CAP < rate_a < 1.05 * CAP, (wire, rate_a)
        assert rate_b > 10 * CAP
    finally:
        assert agent_cmd("enforce", "clear").returncode == 0
    assert "WEIGHTWARDEN" not in sh("iptables-save", "-t", "mangle", netns=lab_.host).stdout


def test_the_pod_is_capped_while_another_pod_and_the_host_are_not(lab: tuple[Lab, list[Box]], agent: Agent) -> None:
    lab_, boxes = lab
    b = boxes[0]
    assert ctr_iface(lab_) in caps_chain(lab_) and b.host_veth not in caps_chain(lab_)
    before, t0 = class_bytes(lab_), time.monotonic()
    procs = {
        "a": lab_.popen_ctr("iperf3", "-c", lab_.out_addr, "-p", "5201", "-t", "4", "-J", stdout=subprocess.PIPE),
        "b": lab_.popen(b.ns, "iperf3", "-c", lab_.out_addr, "-p", "5202", "-t", "4", "-J", stdout=subprocess.PIPE),
        "host": lab_.popen(lab_.host, "iperf3", "-c", lab_.out_addr, "-p", "5203", "-t", "4", "-J",
                           stdout=subprocess.PIPE),
    }
    outs = {name: p.communicate(timeout=60)[0] for name, p in procs.items()}
    wire = (class_bytes(lab_) - before) * 8 / (time.monotonic() - t0)
    rates = {name: goodput(out) for name, out in outs.items()}
    print(f"pod A link-layer {wire / 1e6:.2f} Mbit/s, goodput "
          + ", ".join(f"{k} {v / 1e6:.1f}" for k, v in rates.items()) + " Mbit/s")
    assert abs(wire - CAP) / CAP < 0.05, f"link-layer rate of the pod's class {wire / 1e6:.2f} Mbit/s"
    assert 0.90 * CAP < rates["a"] < 1.05 * CAP, rates
    assert rates["b"] > 10 * CAP and rates["host"] > 10 * CAP, rates


def test_a_container_started_later_is_capped_within_an_interval(lab: tuple[Lab, list[Box]], agent: Agent) -> None:
    lab_, boxes = lab
    c = add_box(lab_, "c", 251, _scope(lab_, POD_A, ID_C), boxes)
    started = time.monotonic()
    lab_.procs.append(subprocess.Popen(c.argv("sleep", "60")))
    assert wait_for(lambda: c.host_veth in caps_chain(lab_), 5 * INTERVAL, 0.05), caps_chain(lab_)
    took = time.monotonic() - started
    print(f"new container capped after {took:.2f} s (interval {INTERVAL} s)")
    assert took <= INTERVAL + 1.0, took  # one interval, plus the plan's own work on this 2-core machine
    out = subprocess.run(c.argv("iperf3", "-c", lab_.out_addr, "-p", "5201", "-t", "2", "-J"), capture_output=True,
                         check=True).stdout
    assert goodput(out) < 1.05 * CAP
    assert ctr_iface(lab_) in caps_chain(lab_)

    # It goes away: its interface leaves the rule, A's stays, the caps stay in force throughout.
    remove_box(c)
    assert wait_for(lambda: c.host_veth not in caps_chain(lab_), 5 * INTERVAL, 0.05)
    assert ctr_iface(lab_) in caps_chain(lab_)
    assert agent.proc.poll() is None and not agent.of_type("enforcement_error"), agent.stderr[-5:]
