"""End to end, a theft from inside a real container (podman + runc, tests/helpers/containers.py):
the weights reach the container as a volume the runtime bind-mounts read-only at another path, the
container has its own PID and mount namespaces and a kubelet-shaped cgroup the runtime made. The host's
one agent (eBPF attribution, file watcher) and the collector's pipeline must raise `exfiltration`
naming the weight file by its host path, the destination and the container (runtime, id, pod)."""

from __future__ import annotations

import json
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.agent.test_container_theft_netns import PORT, SIZE, STEAL, _HostNs
from tests.corpus.replay import message
from tests.helpers.agent_run import DaemonRun
from tests.helpers.containers import POD_UID, Lab, Podman, lab_fixture, podman_fixture
from tests.helpers.netns import wait_for
from weightwarden.collector.ingest.pipeline import Pipeline
from weightwarden.collector.store.database import Store

pytestmark = pytest.mark.privileged


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    yield from lab_fixture()


@pytest.fixture(scope="module")
def podman(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Podman]:
    yield from podman_fixture(lab, tmp_path_factory.mktemp("podman"))


def test_a_real_container_that_uploads_its_weights_volume_is_named_in_the_alert(
        lab: Lab, podman: Podman, tmp_path: Path) -> None:
    models = Path(tempfile.mkdtemp(prefix="ww-models-", dir="/srv" if Path("/srv").is_dir() else None))
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

        podman.run(sys.executable, "-c", STEAL, f"/models/{weights.name}", lab.out_addr, str(PORT),
                   volumes=(f"{models}:/models:ro",))
        cid = podman.last_id()

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
            [(e["type"], e["data"].get("path")) for e in agent.events if e["type"] not in ("egress_sample", "heartbeat")],
            "".join(agent.stderr[-10:]))
        [alert] = alerted()
        ev = alert["evidence"]
        assert alert["severity"] in ("high", "critical")
        assert any(str(weights) in str(f) for f in ev["files"]), ev["files"]  # the host path, not /models
        assert any(lab.out_addr in str(d) for d in ev["destinations"]), ev["destinations"]
        container = ev["process"].get("container")
        container = json.loads(container) if isinstance(container, str) else container
        assert container and container.get("runtime") == "podman" and container.get("id") == cid, ev["process"]
        assert container.get("pod_uid") == POD_UID
        reads = [e["data"] for e in agent.events if e["type"] == "file_access"]
        assert any(r.get("view_path") == f"/models/{weights.name}" for r in reads), reads
        agent.stop()
    finally:
        for p in models.iterdir():
            p.unlink()
        models.rmdir()
