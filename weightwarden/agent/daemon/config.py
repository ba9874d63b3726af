"""How ``weightwarden-agent run`` was started (its flags), and where the policy in force came from."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass
class DaemonConfig:
    policy_path: Path
    state_dir: Path
    host_id: str
    backend: str = "auto"
    sample_interval: float = 1.0
    nfqueue: bool = True
    queue_num: int = 4242
    heartbeat_interval: float = 5.0  # the collector finds an agent silent after three of these
    attribution: str = "auto"
    bpf_cgroup: str | None = None
    metrics_listen: str | None = None  # HOST:PORT for /metrics (weightwarden/agent/daemon/metrics.py)
    bpf_pin_dir: str | None = None  # eBPF programs pinned there keep counting while the agent restarts


@dataclass(frozen=True)
class Origin:
    """Where the policy in force came from: the file, or a signed central publication."""

    source: str = "file"
    version: int | None = None
    key_id: str | None = None
    path: str | None = None  # the MQTT topic of a central policy
