"""The rows of what the collector knows about each host and its agent: the host itself, its processes,
its events as stored, the sensor's state, the agent's lifecycle, and each collector's own numbers."""

from __future__ import annotations

from typing import Required, TypedDict

from weightwarden.jsontypes import JsonObject


class HostRow(TypedDict):
    """A host as the collector knows it (``hosts``)."""

    host: str
    first_seen: float | None
    last_seen: float | None
    status: str | None
    seq_max: int
    seq_contig: int
    gap_seen_at: float | None
    policy: str | None
    policy_digest: str | None
    backend: str | None
    rules_in_force: int | None
    caps: int | None
    egress_bps: float | None
    weights_bytes: int | None
    last_heartbeat: float | None
    heartbeat_interval: float | None
    lost_at: float | None
    weights_at: float | None
    policy_version: int | None
    policy_source: str | None


class HostTouch(TypedDict, total=False):
    """A host heard from (Store.touch_hosts): its sequence number and, from a sample or a heartbeat,
    the fields it reports; ``ts`` orders the rows of one batch and is not stored."""

    host: Required[str]
    seq: Required[int]
    ts: float
    egress_bps: float | None
    policy: str | None
    policy_digest: str | None
    backend: str | None
    rules_in_force: int | None
    caps: int | None
    last_heartbeat: float | None
    weights_bytes: int | None


class ProcessRow(TypedDict):
    """Who a process is, written once per process (``processes``; ``ts`` is when it was seen)."""

    host: str
    pid: int
    exe: str
    ppid: int | None
    name: str | None
    uid: int | None
    user_name: str | None
    cmdline: str | None  # JSON list
    cgroup: str | None
    container: str | None  # JSON
    start_time: float | None
    ts: float


class ProcessInfo(TypedDict):
    """A process as the ``processes`` table last described it, its command line and container parsed."""

    host: str
    pid: int
    exe: str
    ppid: int | None
    name: str | None
    uid: int | None
    user_name: str | None
    cmdline: list[str]
    cgroup: str | None
    container: JsonObject | None
    start_time: float | None
    first_seen: float
    last_seen: float


class StoredEvent(TypedDict):
    """An event as stored, its payload parsed (Store.events_of)."""

    id: str
    seq: int
    ts: float
    data: JsonObject


class ExportedEvent(StoredEvent):
    """An event as the agent sent it (Store.export_events)."""

    schema: int
    host: str
    type: str


class CollectorStatus(TypedDict):
    """A running collector's own numbers (``collector_status``)."""

    client_id: str
    hostname: str | None
    pid: int | None
    version: str | None
    started_at: float | None
    updated_at: float
    received: int
    stored: int | None
    backlog: int
    backlog_bytes: int | None
    backlog_s: float | None
    paused: int | None
    ingest_rate: float
    batch: int | None


class SensorRow(TypedDict):
    """The sensor's state per host (``sensors``): ``state`` and ``degraded`` are the SensorState as JSON."""

    host: str
    state: str | None
    state_at: float | None
    whole_at: float | None
    degraded_at: float | None
    degraded: str | None


class LifecycleRow(TypedDict):
    """The agent's lifecycle per host (``lifecycle``)."""

    host: str
    started_at: float | None
    stopped_at: float | None
    stop_reason: str | None
    lost_conn: float | None
    lost_at: float | None
    lost_seen: float | None
    silent_from: float | None
    beat_at: float | None
    beat_gap: float | None


class HostState(TypedDict, total=False):
    """A host's row with its agent's lifecycle (the sweep's view; a host never heard from has only its name)."""

    host: Required[str]
    first_seen: float | None
    last_seen: float | None
    status: str | None
    seq_max: int
    seq_contig: int
    gap_seen_at: float | None
    weights_bytes: int | None
    started_at: float | None
    stopped_at: float | None
    stop_reason: str | None
    lost_conn: float | None
    lost_at: float | None
    lost_seen: float | None
    silent_from: float | None
    beat_at: float | None
    beat_gap: float | None


__all__ = ["CollectorStatus", "ExportedEvent", "HostRow", "HostState", "HostTouch", "LifecycleRow", "ProcessInfo",
           "ProcessRow", "SensorRow", "StoredEvent"]
