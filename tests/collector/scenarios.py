"""Event streams for correlation tests, each annotated with the alerts it must produce.

Events are made with the agent's own model (agent.events), as an agent would
publish them; times are explicit so hour-long stories run in milliseconds.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from weightwarden.events import PAYLOAD_OF, EventFactory

T0 = 1_795_000_000.0
MB = 10**6
WEIGHTS = "/srv/models/llama/model-00001.safetensors"
DEFAULTS: dict[str, dict[str, Any]] = {
    "heartbeat": {"uptime_s": 1.0, "policy": "p", "policy_digest": "d"},
    "agent_started": {"pid": 1, "policy": "p", "policy_digest": "d", "policy_path": "/etc/weightwarden/p.yaml"},
}


class _Seq:
    def __init__(self) -> None:
        self.last = 0

    def next(self) -> int:
        self.last += 1
        return self.last


@dataclass
class Stream:
    host: str = "gpu-1"
    events: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.factory = EventFactory(self.host, _Seq())

    def add(self, type_: str, at: float, **data: Any) -> dict[str, Any]:
        # What every agent sends with these, so a test names only what it is about.
        data = {**DEFAULTS.get(type_, {}), **data}
        ev = self.factory.make(PAYLOAD_OF[type_].model_validate(data), ts=at).to_json()
        self.events.append(ev)
        return ev

    def messages(self) -> list[tuple[str, bytes]]:
        return [(f"weightwarden/v1/{e['host']}/{e['type']}", json.dumps(e).encode()) for e in self.events]

    # helpers that look like the agent's own events
    def started(self, ts: float, weights: int = 256 * MB) -> None:
        self.add("agent_started", ts, pid=1, policy="p", policy_digest="d", features={},
                 weights={"paths": ["/srv/models"], "files": 1, "total_bytes": weights})

    def read(self, ts: float, pid: int, nbytes: int, path: str = WEIGHTS, exe: str = "/usr/bin/python3.11",
             ppid: int = 1, staged: list[str] | None = None, pipes: list[int] | None = None) -> None:
        data = {"pid": pid, "ppid": ppid, "pipes": pipes or [], "path": path, "size": nbytes,
                "name": exe.rsplit("/", 1)[-1], "exe": exe,
                "uid": 1000, "bytes_read": nbytes, "opens": 1, "reads": 0, "closes": 1, "close_write": 0,
                "first_ts": ts, "last_ts": ts + 1, "still_open": False, "final": True}
        if staged:
            data["staged_copy_of"] = staged
        self.add("file_access", ts + 2, **data)

    def send(self, ts: float, pid: int, nbytes: int, address: str = "203.0.113.9", port: int = 443,
             exe: str = "/usr/bin/python3.11", ppid: int = 1, allowed: bool = False,
             pipes: list[int] | None = None) -> None:
        proc = {"pid": pid, "ppid": ppid, "pipes": pipes or [], "name": exe.rsplit("/", 1)[-1], "exe": exe,
                "uid": 1000, "user": "u",
                "cgroup": "/", "tx_bytes": nbytes,
                "destinations": [{"address": address, "port": port, "tx_bytes": nbytes, "allowed": allowed}]}
        self.add("egress_sample", ts, ts=ts, interval_s=1.0, layer="transport-payload",
                 interfaces=[{"name": "eth0", "tx_bytes": nbytes, "rx_bytes": 0, "tx_packets": 1, "tx_rate_bps": 0}],
                 processes=[proc], attributed_tx_bytes=nbytes, unattributed_tx_bytes=0, unowned_flow_tx_bytes=0,
                 lost_events=0)
