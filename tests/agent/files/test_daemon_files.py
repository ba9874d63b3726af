"""The daemon reports weight totals and file events (policy keys spec.weights.paths / canaries)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.agent_run import DaemonRun
from tests.helpers.netns import NetnsPair

pytestmark = pytest.mark.privileged


def test_daemon_emits_weight_events(netns_pair: NetnsPair, tmp_path: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    (models / "a.safetensors").write_bytes(b"\1" * 3_000_000)
    (models / "b.gguf").write_bytes(b"\2" * 1_000_000)
    (models / "notes.txt").write_text("ignored")
    canary = models / "zz-canary.safetensors"
    canary.write_bytes(b"honey")
    policy = tmp_path / "p.yaml"
    policy.write_text(f"""apiVersion: weightwarden/v1
kind: EgressPolicy
metadata: {{name: w}}
spec:
  weights:
    paths: ["{models}/*.safetensors", "{models}/*.gguf"]
    canaries: ["{canary}"]
""")
    daemon = DaemonRun(netns_pair, policy, tmp_path / "state")
    started = daemon.wait_event("agent_started")
    assert started["data"]["weights"]["total_bytes"] == 4_000_000
    assert started["data"]["weights"]["files"] == 2
    assert started["data"]["features"]["file_watch"]["ok"]
    subprocess.run(["cat", str(models / "a.safetensors")], stdout=subprocess.DEVNULL, check=True)
    subprocess.run([sys.executable, "-c", f"open({str(canary)!r}).read()"], check=True)
    access = daemon.wait_event("file_access", path=str(models / "a.safetensors"), final=True)
    # `cat` exits at once: its bytes are counted in the kernel (or, without the kernel sensor, come from
    # rchar or its taskstats exit record (whole KiB), which the agent takes in the host's network
    # namespace even though it runs in another one): never an estimate.
    data = access["data"]
    assert data["bytes_estimated"] is False and data["how"] in ("kernel", "rchar", "taskstats"), data
    assert 3_000_000 - 1024 < data["bytes_read"] <= 3_000_000 and data["exe"] == "/usr/bin/cat", data
    assert access["data"]["pid"] > 0 and access["data"]["size"] == 3_000_000
    # `ip netns exec` gives the agent a private mount namespace, as the unit's ProtectSystem=strict does:
    # a copy made from the host's namespace must still be seen.
    assert Path(f"/proc/{daemon.proc.pid}/ns/mnt").readlink() != Path("/proc/self/ns/mnt").readlink()
    copy = tmp_path / "elsewhere" / "innocent.bin"
    copy.parent.mkdir()
    subprocess.run(["cp", str(models / "a.safetensors"), str(copy)], check=True)
    made = daemon.wait_event("weights_copy", destination=str(copy))
    assert made["data"]["sources"] == [str(models / "a.safetensors")] and made["data"]["exe"] == "/usr/bin/cp"
    daemon.wait_event("canary_read", path=str(canary))
    assert daemon.stop() == 0
    health = daemon.events[-1]
    assert health["type"] == "agent_stopping"
