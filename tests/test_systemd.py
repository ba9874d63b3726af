"""The shipped units: valid systemd, hardened, and the agent really runs under its unit's sandbox."""

from __future__ import annotations

import configparser
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers.agent_run import DaemonRun
from tests.helpers.netns import NetnsPair
from tests.helpers.sandbox import allowed_syscalls, parse_unit

REPO = Path(__file__).resolve().parents[1]
UNITS = sorted((REPO / "weightwarden" / "systemd").glob("*.service"))
AGENT_UNIT = REPO / "weightwarden" / "systemd" / "weightwarden-agent.service"
REQUIRE = os.environ.get("WEIGHTWARDEN_REQUIRE_PRIVILEGED") == "1"
# Syscalls the agent makes beyond everyday ones, and what needs each.
AGENT_SPECIAL = {"fanotify_init": "the weight-file watch", "fanotify_mark": "the weight-file watch",
                 "bpf": "kernel-side attribution", "socket": "netlink, MQTT", "sendmsg": "netlink",
                 "setsockopt": "netlink groups", "prctl": "python", "ioctl": "tc/nft helpers"}


def _unit(path: Path) -> configparser.RawConfigParser:
    parser = configparser.RawConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(path.read_text().replace("\nExecReload=", "\nExecReload2=").replace(
        "\nSystemCallFilter=~", "\nSystemCallFilterDeny=~"))
    return parser


def _need(tool: str) -> None:
    if shutil.which(tool) is None:
        if REQUIRE:
            pytest.fail(f"{tool} is not installed (scripts/bootstrap.sh installs it)")
        pytest.skip(f"{tool} is not installed")


def test_agent_unit_is_hardened_and_checks_its_policy_first() -> None:
    svc = _unit(AGENT_UNIT)["Service"]
    assert svc["Restart"] == "on-failure" and svc["Type"] == "notify" and "WatchdogSec" in svc
    assert svc["NoNewPrivileges"] == "yes" and svc["ProtectSystem"] == "strict"
    assert "policy check" in svc["ExecStartPre"]
    reloads = [ln for ln in AGENT_UNIT.read_text().splitlines() if ln.startswith("ExecReload=")]
    assert "policy check" in reloads[0] and "-HUP" in reloads[-1], "a reload is checked before it is signalled"


def test_collector_unit_has_no_privilege_at_all() -> None:
    svc = _unit(REPO / "weightwarden" / "systemd" / "weightwarden-collector.service")["Service"]
    assert svc["Restart"] == "on-failure" and svc["DynamicUser"] == "yes"
    assert svc["CapabilityBoundingSet"] == "" and svc["AmbientCapabilities"] == ""
    assert svc["NoNewPrivileges"] == "yes" and svc["ProtectSystem"] == "strict" and svc["PrivateUsers"] == "yes"


def test_agent_syscall_filter_allows_what_the_agent_needs() -> None:
    _need("systemd-analyze")
    allowed = allowed_syscalls(parse_unit(AGENT_UNIT.read_text()))
    missing = {name: why for name, why in AGENT_SPECIAL.items() if name not in allowed}
    assert not missing, f"the unit's SystemCallFilter kills the agent on: {missing}"
    assert "reboot" not in allowed and "mount" not in allowed and "init_module" not in allowed


@pytest.mark.parametrize("path", UNITS, ids=lambda p: p.name)
def test_systemd_analyze_verify(path: Path, tmp_path: Path) -> None:
    _need("systemd-analyze")
    binary = Path(sys.executable).parent
    text = path.read_text().replace("/usr/local/bin/", f"{binary}/")
    unit = tmp_path / path.name
    unit.write_text(text)
    res = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True)
    problems = [ln for ln in res.stderr.splitlines() if path.name in ln]
    assert res.returncode == 0 and not problems, res.stderr


POLICY = """apiVersion: weightwarden/v1
kind: EgressPolicy
metadata: {{name: sandboxed}}
spec:
  interval: 1s
  caps:
    - {{name: all, rate: 20Mbit}}
  weights:
    paths: ["{weights}/**"]
    canaries: ["{weights}/.canary"]
"""


@pytest.mark.privileged
def test_agent_runs_under_its_units_sandbox(netns_pair: NetnsPair, tmp_path: Path) -> None:
    """The daemon as the unit runs it: its syscall filter (SIGSYS on anything else), address families,
    capability bounding set, no new privileges, read-only filesystem but its state directory. It applies
    caps, watches the weights, reloads and stops cleanly: nothing it does is outside the unit's sandbox."""
    _need("systemd-analyze")
    pair = netns_pair
    weights = tmp_path / "weights"
    weights.mkdir()
    (weights / "model.safetensors").write_bytes(os.urandom(3_000_000))
    (weights / ".canary").write_bytes(b"x" * 100)
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY.format(weights=weights))
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    wrapper = (sys.executable, "-m", "tests.helpers.sandbox", "--unit", str(AGENT_UNIT), "--rw", str(state), "--")
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify"))
    notify.settimeout(0.2)
    messages: list[str] = []

    def heard(prefix: str, timeout: float = 10) -> list[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not any(m.startswith(prefix) for m in messages):
            with contextlib.suppress(TimeoutError):
                messages.append(notify.recv(4096).decode())
        return [m for m in messages if m.startswith(prefix)]

    daemon = DaemonRun(pair, policy, state, "--heartbeat-interval", "1", wrapper=wrapper,
                       env={"NOTIFY_SOCKET": str(tmp_path / "notify"), "WATCHDOG_USEC": "2000000"})
    try:
        # systemd's side of Type=notify: ready once caps are in, a status line, watchdog pings.
        assert heard("READY=1"), messages
        assert any("sandboxed" in m and "1 caps" in m for m in heard("STATUS=")), messages
        assert heard("WATCHDOG=1"), messages
        daemon.wait_event("policy_applied")
        daemon.wait_event("agent_started")
        assert "7757" in pair.run(pair.a, "tc", "qdisc", "show").stdout, "the cap reached the kernel"
        reader = pair.run(pair.a, "dd", f"if={weights / 'model.safetensors'}", "of=/dev/null", "bs=1M", check=False)
        assert reader.returncode == 0, reader.stderr
        daemon.wait_event("file_access", path=str(weights / "model.safetensors"))
        pair.run(pair.a, "dd", f"if={weights / '.canary'}", "of=/dev/null")
        daemon.wait_event("canary_read")
        daemon.wait_event("heartbeat")
        seen = len(daemon.events)
        policy.write_text(POLICY.format(weights=weights).replace("20Mbit", "30Mbit"))
        daemon.proc.send_signal(signal.SIGHUP)
        daemon.wait_event("policy_applied", after=seen)
        assert heard("RELOADING=1") and "MONOTONIC_USEC=" in heard("RELOADING=1")[0], messages
        code = daemon.stop()
        assert code == 0, f"the agent died under its unit's sandbox (exit {code}: -31 is SIGSYS): " \
                          + "".join(daemon.stderr[-10:])
        assert daemon.events[-1]["type"] == "agent_stopping"
    finally:
        notify.close()
        if daemon.proc.poll() is None:
            daemon.kill()
        pair.run(pair.a, sys.executable, "-m", "weightwarden.agent", "enforce", "clear", "--state-dir", str(state),
                 check=False)
