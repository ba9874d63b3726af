"""Tamper is an alarm: within 2 s the agent notices that one of its links was detached, a program
replaced, a map rewritten or its loader killed; it puts back what it can, emits sensor_tampered, and
attribution resumes. What each intruder's command does against pinned links is measured too:
``bpftool cgroup detach`` cannot detach a program attached through a link (it fails, nothing changes);
``bpftool link detach`` can (the link is left defunct), and is undone.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.helpers.agent_run import DaemonRun, per_pid
from tests.helpers.containers import Lab, lab_fixture
from tests.helpers.netns import wait_for
from tests.helpers.sensor import HostNs, bpffs, cgroup_links, cgroup_programs

pytestmark = pytest.mark.privileged

PORT, SIZE = 8098, 2 << 20
POLICY = "apiVersion: weightwarden/v1\nkind: EgressPolicy\nmetadata: {name: tamper}\nspec: {interval: 1s}\n"


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    yield from lab_fixture()


@pytest.fixture(scope="module", autouse=True)
def sink(lab: Lab) -> None:
    lab.sink(PORT, PORT + 1)


@pytest.fixture
def agent(lab: Lab, tmp_path: Path) -> Iterator[tuple[DaemonRun, Path]]:
    with bpffs() as fs:
        policy = tmp_path / "policy.yaml"
        policy.write_text(POLICY)
        run = DaemonRun(HostNs(lab), policy, tmp_path / "state", "--attribution", "ebpf",  # type: ignore[arg-type]
                        "--bpf-cgroup", str(lab.root), "--bpf-pin-dir", str(fs / "ww"))
        try:
            run.wait_event("agent_started", timeout=30)
            run.wait_event("egress_sample", timeout=15)
            yield run, fs / "ww"
        finally:
            run.stop()


def _tampered(agent: DaemonRun, after: int, since: float, timeout: float = 5.0) -> tuple[dict[str, Any], float]:
    """The next sensor_tampered event, and how long after ``since`` the agent emitted it."""
    seen: list[float] = []

    def found() -> dict[str, Any] | None:
        for ev in agent.events[after:]:
            if ev["type"] == "sensor_tampered":
                if not seen:
                    seen.append(time.time())
                return dict(ev["data"])
        return None

    assert wait_for(lambda: found() is not None, timeout), "no sensor_tampered: " + "".join(agent.stderr[-5:])
    data = found()
    assert data is not None
    return data, seen[0] - since


def _upload_is_credited(lab: Lab, agent: DaemonRun) -> None:
    out = lab.run_ctr(sys.executable, "-m", "tests.helpers.upload", lab.out_addr, str(PORT), str(SIZE)).stdout.split()
    pid, sent = int(out[0]), int(out[2])  # sent: SIZE and any retransmissions, as the kernel sent them

    def credited() -> dict[str, Any]:
        return per_pid([e["data"] for e in agent.events if e["type"] == "egress_sample"]).get(pid, {})

    assert wait_for(lambda: credited().get("tx_bytes", 0) >= sent, 10), (credited(), sent)
    assert credited()["tx_bytes"] == sent


def test_link_detach_is_noticed_within_2s_and_undone(lab: Lab, agent: tuple[DaemonRun, Path]) -> None:
    run, _pin = agent
    [link] = [link for link in cgroup_links(lab.root) if link.get("attach_type") == "cgroup_inet_egress"]
    mark, t0 = len(run.events), time.time()
    out = subprocess.run(["bpftool", "link", "detach", "id", str(link["id"])], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr  # measured: the intruder's one command does detach a cgroup link
    data, took = _tampered(run, mark, t0)
    print(f"link detach noticed after {took:.2f} s")
    assert took < 2.0 and data["reattached"] is True
    [change] = data["changes"]
    assert (change["kind"], change["name"]) == ("link_detached", "ww_egress")
    assert data["detected_ts"] - t0 < 1.0 and data["blind_from_ts"] <= t0 + 0.05
    assert "ww_egress" in {p["name"] for p in cgroup_programs(lab.root)}
    _upload_is_credited(lab, run)


def test_cgroup_detach_cannot_detach_a_program_attached_through_a_link(lab: Lab, agent: tuple[DaemonRun, Path]) -> None:
    run, _pin = agent
    before = cgroup_programs(lab.root)
    [egress] = [p for p in before if p["attach_type"] == "cgroup_inet_egress"]
    mark = len(run.events)
    out = subprocess.run(["bpftool", "cgroup", "detach", str(lab.root), "cgroup_inet_egress", "id", str(egress["id"])],
                         capture_output=True, text=True)
    print(f"bpftool cgroup detach: exit {out.returncode}: {out.stderr.strip()}")
    assert out.returncode != 0  # measured: BPF_PROG_DETACH finds no program attached without a link
    assert cgroup_programs(lab.root) == before
    _upload_is_credited(lab, run)
    assert not [e for e in run.events[mark:] if e["type"] == "sensor_tampered"]


def _bpftool_map(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bpftool", *args], capture_output=True, text=True)


def test_a_map_rewritten_to_hide_a_destination_is_noticed_and_put_back(lab: Lab, agent: tuple[DaemonRun, Path]) -> None:
    """The rewrite that blinds: the outside address added to the host's own addresses, so flows to it would
    pass for local traffic."""
    run, pin = agent
    key = ["4", "0", "0", "0", *lab.out_addr.split("."), *["0"] * 12]
    mark, t0 = len(run.events), time.time()
    out = _bpftool_map("map", "update", "pinned", str(pin / "maps" / "local_addrs"), "key", *key, "value", "1")
    assert out.returncode == 0, out.stderr
    data, took = _tampered(run, mark, t0)
    print(f"local_addrs rewrite noticed after {took:.2f} s")
    assert took < 2.0 and data["reattached"] is True
    assert [(c["kind"], c["name"]) for c in data["changes"]] == [("map_rewritten", "local_addrs")]
    assert lab.out_addr in data["changes"][0]["detail"]
    dump = json.loads(_bpftool_map("-j", "map", "dump", "pinned", str(pin / "maps" / "local_addrs")).stdout or "[]")
    assert all(bytes(int(b, 16) for b in e["key"][4:8]) != bytes(map(int, lab.out_addr.split("."))) for e in dump)
    _upload_is_credited(lab, run)


def test_the_loaders_settings_rewritten_are_noticed_and_put_back(lab: Lab, agent: tuple[DaemonRun, Path]) -> None:
    """.bss holds which load's tracepoint programs count: zeroed, they would all stop."""
    run, pin = agent
    bss = str(pin / "maps" / "bss")
    [entry] = json.loads(_bpftool_map("-j", "map", "dump", "pinned", bss).stdout)
    value = [int(b, 16) for b in entry["value"]]
    value[12:16] = [0, 0, 0, 0]  # active (gen, merge_ready, local_epoch, active, raw_action)
    mark, t0 = len(run.events), time.time()
    out = _bpftool_map("map", "update", "pinned", bss, "key", "0", "0", "0", "0", "value", *map(str, value))
    assert out.returncode == 0, out.stderr
    data, took = _tampered(run, mark, t0)
    print(f".bss rewrite noticed after {took:.2f} s")
    assert took < 2.0
    assert [(c["kind"], c["name"]) for c in data["changes"]] == [("map_rewritten", ".bss")]
    assert "active was 0" in data["changes"][0]["detail"]


def test_a_killed_loader_is_replaced_and_nothing_is_missed(lab: Lab, agent: tuple[DaemonRun, Path]) -> None:
    run, _pin = agent
    [loader] = [c for c in psutil.Process(run.proc.pid).children(recursive=True) if c.name() == "weightwarden-bpf"]
    mark, t0 = len(run.events), time.time()
    os.kill(loader.pid, signal.SIGKILL)
    _upload_is_credited(lab, run)  # sent while the loader was dead or being replaced: the pinned programs counted
    data, _took = _tampered(run, mark, t0)
    print(f"killed loader noticed after {data['detected_ts'] - t0:.2f} s")
    assert data["detected_ts"] - t0 < 2.0 and data["reattached"] is True
    [change] = data["changes"]
    assert change["kind"] == "loader_killed" and "signal 9" in change["detail"] and "took over" in change["detail"]
    assert "blind_from_ts" not in data  # pinned: nothing was missed
