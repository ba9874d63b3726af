"""The collector's side of central policies and of simulation: the version each host runs, and export."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from tests.agent.policy.test_policy import CONTRACT
from tests.helpers.events import heartbeat, sample
from weightwarden.agent.transport.mqtt import MemorySequencer
from weightwarden.collector.ingest.pipeline import Pipeline
from weightwarden.collector.store.database import Store
from weightwarden.events import EventFactory, Payload, PolicyApplied

T0 = 1_795_000_000.0


def _messages(factory: EventFactory, payloads: Sequence[tuple[float, Payload]]) -> list[tuple[str, bytes]]:
    out = []
    for ts, data in payloads:
        ev = factory.make(data, ts=ts)
        out.append((f"weightwarden/v1/{ev.host}/{ev.type}", json.dumps(ev.to_json()).encode()))
    return out


def test_hosts_show_the_central_version_and_export_feeds_simulate(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path}/c.db"
    pipe = Pipeline(Store(db))
    gpu = EventFactory("gpu-a", MemorySequencer(0))
    applied = PolicyApplied(policy="example", policy_digest="abc", policy_path="mqtt:weightwarden/policy/v1/gpu-*",
                            source="mqtt", version=1718000000, key_id="3f2a9c1d0b7e4a55")
    stream: list[tuple[float, Payload]] = [(T0, heartbeat(weights={"total_bytes": 10**9})), (T0 + 0.5, applied)]
    stream += [(T0 + 1 + i, sample(ts=T0 + 1 + i, nbytes=1_000_000)) for i in range(5)]
    counts = pipe.ingest(_messages(gpu, stream) + _messages(EventFactory("gpu-b", MemorySequencer(0)), [(T0, sample(ts=T0))]))
    assert counts["rejected"] == 0 and not pipe.errors, pipe.errors

    hosts = {h["host"]: h for h in pipe.store.hosts()}
    assert hosts["gpu-a"]["policy_version"] == 1718000000 and hosts["gpu-a"]["policy_source"] == "mqtt"
    assert hosts["gpu-b"]["policy_version"] is None
    table = subprocess.run([sys.executable, "-m", "weightwarden.collector", "hosts", "--db", db],
                           capture_output=True, text=True, check=True).stdout
    assert "example v1718000000" in table

    run = subprocess.run([sys.executable, "-m", "weightwarden.collector", "export", "--host", "gpu-a", "--since",
                          str(T0 - 1), "--until", str(T0 + 3.5), "--db", db], capture_output=True, text=True, check=True)
    export = run.stdout
    assert run.stderr == ""
    # Asked for more than the samples kept: exported, and said so (retention rolls older ones up by the minute).
    longer = subprocess.run([sys.executable, "-m", "weightwarden.collector", "export", "--host", "gpu-a", "--since",
                             str(T0 - 3600), "--until", str(T0 + 3.5), "--db", db], capture_output=True, text=True,
                            check=True)
    assert longer.stdout == export and "kept only as per-minute totals" in longer.stderr
    events = [json.loads(line) for line in export.splitlines()]
    assert [e["type"] for e in events] == ["heartbeat", "egress_sample", "egress_sample", "egress_sample"]
    assert all(e["host"] == "gpu-a" for e in events)
    samples = tmp_path / "gpu-a.jsonl"
    samples.write_text(export)
    policy = tmp_path / "p.yaml"
    policy.write_text(CONTRACT)
    sim = json.loads(subprocess.run([sys.executable, "-m", "weightwarden.agent", "policy", "simulate", str(policy),
                                     "--samples", str(samples), "--json"], capture_output=True, text=True,
                                    check=True).stdout)
    assert sim["samples"] == 3 and sim["caps"][0]["matched_bytes"] == 3_000_000  # 198.18.0.2 is not allowlisted
    assert sim["time_to_exfiltrate"]["weights_bytes"] == 10**9
    none = subprocess.run([sys.executable, "-m", "weightwarden.collector", "export", "--host", "nobody", "--since",
                           "1h", "--db", db], capture_output=True, text=True, check=False)
    assert none.returncode == 1 and "no egress_sample" in none.stderr
    bad = subprocess.run([sys.executable, "-m", "weightwarden.collector", "export", "--host", "gpu-a", "--since",
                          "yesterday", "--db", db], capture_output=True, text=True, check=False)
    assert bad.returncode == 2 and "not a time" in bad.stderr
