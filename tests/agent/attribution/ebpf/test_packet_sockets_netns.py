"""No way around the meter on packet sockets: hand-built frames on AF_PACKET, with and without
PACKET_QDISC_BYPASS, are credited to their process in the kernel (bytes and interface) within 2%, and
raise raw_socket; with raw_sockets.action kill the sender is stopped from the send path and the bytes
that escaped are reported; an allowlisted program raises nothing alarming; and frames nobody could be
credited with (the packet-socket program refused) are unexplained egress on the interface they left by, as is
a TCP upload no program sees (what detached programs leave).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.agent_run import DaemonRun, per_pid
from tests.helpers.containers import REPO, Lab, lab_fixture
from tests.helpers.netns import wait_for
from tests.helpers.sensor import HostNs, build_rawsend, in_host, link_counters, uplink
from weightwarden.agent.attribution.ebpf.loader import ENV_REFUSE

pytestmark = pytest.mark.privileged

FRAME = 1000
PORT = 8100


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    yield from lab_fixture()


@pytest.fixture(scope="module")
def senders(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The same sender built twice: two programs, one of which the policy allows (a DHCP client, say)."""
    d = tmp_path_factory.mktemp("rawsend")
    return build_rawsend(d, "exfil"), build_rawsend(d, "dhcp-client")


@pytest.fixture(scope="module", autouse=True)
def sink(lab: Lab) -> None:
    lab.sink(PORT, PORT + 1)


def _agent(lab: Lab, tmp_path: Path, raw: str, env: dict[str, str] | None = None) -> DaemonRun:
    policy = tmp_path / "policy.yaml"
    policy.write_text("apiVersion: weightwarden/v1\nkind: EgressPolicy\nmetadata: {name: raw}\n"
                      f"spec:\n  interval: 1s\n  raw_sockets: {raw}\n")
    agent = DaemonRun(HostNs(lab), policy, tmp_path / "state", "--attribution", "ebpf",  # type: ignore[arg-type]
                      "--bpf-cgroup", str(lab.root), env=env, allow_degraded=env is not None)
    agent.wait_event("agent_started", timeout=30)
    agent.wait_event("egress_sample", timeout=15)
    return agent


class Sender:
    """A packet-socket sender on the host itself (the lab's host namespace, under the agent's cgroup)."""

    def __init__(self, lab: Lab, binary: Path, frames: int, bypass: bool, dgram: bool = False) -> None:
        argv = in_host(lab, lab.root / "system.slice" / "raw.service", str(binary), uplink(lab), str(frames),
                       str(FRAME), "1" if bypass else "0", "1" if dgram else "0")
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        lab.procs.append(self.proc)
        assert self.proc.stdout is not None
        self.pid = int(self.proc.stdout.readline())

    def go(self) -> int | None:
        """Send; the bytes the kernel took, or None if it was killed."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(b"go\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline().decode()
        self.proc.wait(timeout=30)
        return int(line.split()[1]) if line.startswith("sent") else None


def _raw_events(agent: DaemonRun, pid: int) -> list[dict[str, Any]]:
    return [e["data"] for e in agent.events if e["type"] == "raw_socket" and e["data"]["pid"] == pid]


def _credited(agent: DaemonRun, pid: int) -> int:
    return int(per_pid([e["data"] for e in agent.events if e["type"] == "egress_sample"]).get(pid, {}).get("tx_bytes", 0))


@pytest.mark.parametrize("bypass", [False, True], ids=["qdisc", "qdisc-bypass"])
def test_a_packet_socket_sender_is_credited_to_its_pid_and_reported(lab: Lab, tmp_path: Path,
                                                                     senders: tuple[Path, Path], bypass: bool) -> None:
    agent = _agent(lab, tmp_path, "{action: alert}")
    try:
        sender = Sender(lab, senders[0], 6000, bypass)
        sent = sender.go()
        assert sent == 6000 * FRAME
        assert wait_for(lambda: _credited(agent, sender.pid) >= sent * 0.98, 10), _credited(agent, sender.pid)
        assert abs(_credited(agent, sender.pid) - sent) <= 0.02 * sent
        proc = next(p for e in agent.events if e["type"] == "egress_sample" for p in e["data"]["processes"]
                    if p["pid"] == sender.pid)
        assert proc["destinations"][0]["address"] == f"packet:{uplink(lab)}"
        assert proc["destinations"][0]["protocol"] == "raw" and proc["exe"] == str(senders[0])
        assert wait_for(lambda: bool(_raw_events(agent, sender.pid)), 5)
        event = _raw_events(agent, sender.pid)[0]
        assert (event["family"], event["socket_type"], event["interface"], event["bypass"]) == (
            "packet", "raw", uplink(lab), bypass)
        assert (event["allowed"], event["action"], event["killed"], event["protocol"]) == (False, "alert", False, 0x88b5)
        assert event["exe"] == str(senders[0]) and event["tx_bytes"] > 0
        # Credited whole, so nothing on the interface is left unexplained by them.
        assert not [e for e in agent.events if e["type"] in ("unexplained_egress", "sensor_tampered")]
        unexplained = sum(i.get("unexplained_tx_bytes", 0) for e in agent.events if e["type"] == "egress_sample"
                          for i in e["data"]["interfaces"] if i["name"] == uplink(lab))
        assert unexplained < 0.02 * sent, unexplained
    finally:
        assert agent.stop() == 0


def test_kill_stops_a_sender_and_reports_what_escaped_while_an_allowlisted_one_goes_on(
        lab: Lab, tmp_path: Path, senders: tuple[Path, Path]) -> None:
    exfil, dhcp = senders
    agent = _agent(lab, tmp_path, f"{{action: kill, allow: [{dhcp}]}}")
    try:
        before = link_counters(lab.host, uplink(lab))
        thief = Sender(lab, exfil, 100_000, bypass=True)
        assert thief.go() is None and thief.proc.returncode == -9  # SIGKILL from the kernel's send path
        left = link_counters(lab.host, uplink(lab))["tx_bytes"] - before["tx_bytes"]
        assert wait_for(lambda: any(e["killed"] for e in _raw_events(agent, thief.pid)), 5), agent.events[-3:]
        killed = next(e for e in _raw_events(agent, thief.pid) if e["killed"])
        escaped = killed["escaped_bytes"]
        print(f"kill: {escaped} bytes escaped before SIGKILL took effect ({escaped // FRAME} frames); the "
              f"interface sent {left} bytes meanwhile")
        assert killed["action"] == "kill" and not killed["allowed"] and killed["bypass"]
        assert FRAME <= escaped <= 4 * FRAME  # the send that triggered the kill, and any already under way
        assert left <= escaped + 2000  # what left is what was reported (plus the odd neighbour solicitation)

        benign = Sender(lab, dhcp, 2000, bypass=False)
        assert benign.go() == 2000 * FRAME and benign.proc.returncode == 0
        assert wait_for(lambda: bool(_raw_events(agent, benign.pid)), 5)
        assert all(e["allowed"] and e["action"] == "none" and not e["killed"] for e in _raw_events(agent, benign.pid))
    finally:
        assert agent.stop() == 0


def test_frames_nobody_was_credited_with_are_unexplained_egress(lab: Lab, tmp_path: Path,
                                                                senders: tuple[Path, Path]) -> None:
    agent = _agent(lab, tmp_path, "{action: alert}", env={ENV_REFUSE: "ww_packet"})  # as if the sensor were blind
    try:
        up = int(lab.run_ctr(sys.executable, "-m", "tests.helpers.upload", lab.out_addr, str(PORT),
                             str(4 << 20)).stdout.split()[0])
        assert wait_for(lambda: _credited(agent, up) >= 4 << 20, 10)  # an upload the sensor sees: explained
        assert not [e for e in agent.events if e["type"] == "unexplained_egress"]
        sender = Sender(lab, senders[0], 8000, bypass=True)
        sent = sender.go()
        assert sent == 8000 * FRAME

        def unexplained() -> int:
            return sum(e["data"]["unexplained_tx_bytes"] for e in agent.events if e["type"] == "unexplained_egress"
                       and e["data"]["interface"] == uplink(lab))

        assert wait_for(lambda: unexplained() >= 0.9 * sent, 10), unexplained()
        event = next(e["data"] for e in agent.events if e["type"] == "unexplained_egress")
        assert event["sensor"]["features"]["packet_sockets"]["on"] is False
        assert _credited(agent, sender.pid) == 0
    finally:
        assert agent.stop() == 0


def test_an_upload_no_program_sees_is_unexplained_egress(lab: Lab, tmp_path: Path) -> None:
    """What detached programs leave behind: a TCP upload by a process outside the cgroup the programs are
    attached to is credited to nobody, and the interface it left by says so (the collector's host-level
    rule counts unexplained bytes after a weights read)."""
    agent = _agent(lab, tmp_path, "{action: alert}")
    outside = lab.root.parent / f"{lab.root.name}-outside"  # a sibling of the scope: no program of ours runs there
    try:
        out = subprocess.run(in_host(lab, outside, sys.executable, "-m", "tests.helpers.upload", lab.out_addr,
                                     str(PORT), str(8 << 20)), capture_output=True, text=True, check=True,
                             cwd=str(REPO)).stdout.split()
        pid, sent = int(out[0]), int(out[2])

        def unexplained() -> int:
            return sum(e["data"]["unexplained_tx_bytes"] for e in agent.events if e["type"] == "unexplained_egress"
                       and e["data"]["interface"] == uplink(lab))

        assert wait_for(lambda: unexplained() >= 0.9 * sent, 10), (unexplained(), sent)
        event = next(e["data"] for e in agent.events if e["type"] == "unexplained_egress")
        assert event["sensor"]["degraded"] is False  # a whole sensor, and still bytes nobody was credited with
        assert _credited(agent, pid) == 0
    finally:
        assert agent.stop() == 0
        if outside.exists():
            outside.rmdir()
