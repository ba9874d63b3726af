"""No open of the weights ever waits for the agent: stopped (SIGSTOP) or killed, a reader's open and
read of a weight file take what they take without it, and a read made while the agent was stopped
is still reported once it runs again. The agent is the real daemon, in a network namespace."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from tests.helpers.agent_run import DaemonRun
from tests.helpers.flaky import load_sensitive
from tests.helpers.netns import NetnsPair

pytestmark = pytest.mark.privileged
SIZE = 8 * 2**20


def daemon(pair: NetnsPair, tmp_path: Path, sensor: str) -> tuple[DaemonRun, Path]:
    models = tmp_path / "models"
    models.mkdir()
    weight = models / "model.safetensors"
    weight.write_bytes(os.urandom(SIZE))
    policy = tmp_path / "p.yaml"
    policy.write_text(f"""apiVersion: weightwarden/v1
kind: EgressPolicy
metadata: {{name: w}}
spec:
  weights:
    paths: ["{models}/*.safetensors"]
""")
    run = DaemonRun(pair, policy, tmp_path / "state", env={"WEIGHTWARDEN_FILE_SENSOR": sensor})
    started = run.wait_event("agent_started")
    assert started["data"]["features"]["file_watch"]["ok"], started
    # Warm: the watcher is up and reporting before the agent is stopped.
    subprocess.run(["cat", str(weight)], stdout=subprocess.DEVNULL, check=True)
    run.wait_event("file_access", path=str(weight), final=True)
    return run, weight


def timed_cat(weight: Path) -> tuple[float, int]:
    t0 = time.monotonic()
    cat = subprocess.Popen(["cat", str(weight)], stdout=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    assert cat.wait(timeout=10) == 0, "the open of a weight file waited for the agent"
    return time.monotonic() - t0, cat.pid


@load_sensitive  # the taskstats exit record of the frozen time is late under load
@pytest.mark.parametrize("sensor", ["ebpf", "off"])
def test_a_stopped_agent_stops_no_reader(netns_pair: NetnsPair, tmp_path: Path, sensor: str) -> None:
    run, weight = daemon(netns_pair, tmp_path, sensor)
    try:
        os.kill(run.proc.pid, signal.SIGSTOP)
        try:
            elapsed, cat = timed_cat(weight)
            assert elapsed < 1.0, f"open+read took {elapsed:.2f} s with the agent stopped"
            time.sleep(1.0)  # stays stopped a while after the read
        finally:
            os.kill(run.proc.pid, signal.SIGCONT)
        # Read while the agent was stopped, reported once it runs: its bytes were counted meanwhile (in the
        # kernel; without the kernel sensor, from the reader's taskstats exit record, queued meanwhile).
        rec = run.wait_event("file_access", pid=cat, final=True)["data"]
        assert rec["path"] == str(weight) and rec["bytes_estimated"] is False, rec
        if sensor == "ebpf":
            # Counted and named by the kernel while the agent was stopped.
            assert rec["bytes_read"] == SIZE and rec["how"] == "kernel" and rec["exe"] == "/usr/bin/cat", rec
        else:
            assert SIZE - 1024 < rec["bytes_read"] <= SIZE + 64 * 1024 and rec["how"] == "taskstats", rec
    finally:
        assert run.stop() == 0


def test_a_killed_agent_stops_no_reader(netns_pair: NetnsPair, tmp_path: Path) -> None:
    run, weight = daemon(netns_pair, tmp_path, "ebpf")
    loaders = [p for p in psutil.Process(run.proc.pid).children() if "weightwarden-files-bpf" in " ".join(p.cmdline())]
    assert len(loaders) == 1, "the kernel sensor's loader runs beside the agent"
    run.kill()
    elapsed, _cat = timed_cat(weight)
    assert elapsed < 1.0, f"open+read took {elapsed:.2f} s with the agent killed"
    # The loader goes with the agent (and the kernel detaches its programs): nothing is left behind.
    _gone, alive = psutil.wait_procs(loaders, timeout=5)
    assert not alive
