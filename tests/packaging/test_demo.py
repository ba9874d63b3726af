"""The README's demo shows a theft: ./scripts/run-stack.sh (what ./scripts/run.sh starts after bootstrap)
watches demo weights it makes, ./scripts/demo-theft.sh reads and uploads them from a namespace of its
own, the alert is printed in the run terminal, and Ctrl-C (SIGINT to the terminal's process group)
stops everything with exit 0 and "stopped"."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

from tests.helpers.broker import free_port
from tests.helpers.netns import wait_for

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.privileged


def test_the_demo_raises_an_alert_for_the_theft_and_ctrl_c_exits_0(tmp_path: Path) -> None:
    env = {**os.environ, "WW_RUN_DIR": str(tmp_path / "run"), "WW_MQTT_PORT": str(free_port()), "LANG": "C"}
    env.pop("WEIGHTWARDEN_ATTRIBUTION", None)  # the demo's agent runs as a user's would: eBPF where it can
    out = tmp_path / "run.out"
    with open(out, "wb") as fh:
        stack = subprocess.Popen([str(REPO / "scripts" / "run-stack.sh")], stdout=fh, stderr=subprocess.STDOUT, env=env,
                                 start_new_session=True)  # its own process group, as a terminal gives it
    try:
        assert wait_for(lambda: "weightwarden is running" in out.read_text(), 60), out.read_text()
        assert wait_for(lambda: "eBPF attribution on" in (tmp_path / "run" / "agent.log").read_text(), 60)
        policy = (tmp_path / "run" / "demo-policy.yaml").read_text()
        assert f"{tmp_path}/run/demo-weights/*.safetensors" in policy
        theft = subprocess.run([str(REPO / "scripts" / "demo-theft.sh")], capture_output=True, text=True, env=env,
                               timeout=120)
        assert theft.returncode == 0, theft.stdout + theft.stderr
        assert "ALERT CRITICAL" in theft.stdout and "curl" in theft.stdout
        assert wait_for(lambda: "ALERT CRITICAL" in out.read_text(), 10), "shown in the run terminal too"
        os.killpg(stack.pid, signal.SIGINT)
        assert stack.wait(timeout=60) == 0, out.read_text()
        assert out.read_text().rstrip().splitlines()[-1].startswith("stopped.")
        assert "a component stopped" not in out.read_text()
    finally:
        if stack.poll() is None:
            os.killpg(stack.pid, signal.SIGKILL)
            stack.wait(timeout=10)
    leftovers = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert "ww-demo" not in leftovers
