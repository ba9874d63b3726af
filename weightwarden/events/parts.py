"""Parts shared by several event types: who a process is, where bytes went, the sensor, budgets."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, Field

from weightwarden.events.fields import (
    MAX_ARGS,
    MAX_DESTINATIONS,
    MAX_LOCAL_PEERS,
    MAX_PIPES,
    MAX_SEQ,
    Address,
    Count,
    Inode,
    Model,
    Name,
    Pid,
    Port,
    Rate,
    Text,
    Timestamp,
    Uid,
    _clean,
)

# -- shared parts -------------------------------------------------------------


class Container(Model):
    """Where a process runs, read from its cgroup path (what the path shows, nothing guessed)."""

    cgroup: Text
    runtime: Name | None = None  # docker, containerd, cri-o, podman, enroot/slurm, systemd
    id: Name | None = None
    pod_uid: Name | None = None
    pod_namespace: Name | None = None
    pod_name: Name | None = None
    unit: Name | None = None  # the systemd unit or scope


class ProcessFields(Model):
    """Who a process is; carried flat by file events, nested in samples."""

    pid: Pid | None = None
    ppid: Pid | None = None
    name: Name | None = None
    exe: Text | None = None
    uid: Uid | None = None
    user: Name | None = None
    cmdline: list[Text] = Field(default_factory=list, max_length=MAX_ARGS)
    cgroup: Text | None = None
    container: Container | None = None
    start_time: Timestamp | None = None  # with pid, names one process even after its pid is reused
    pipes: list[Inode] = Field(default_factory=list, max_length=MAX_PIPES)
    # Ends of those pipes the process holds: "r" (reads), "w" (writes) or "rw", by inode (str keys).
    pipe_ends: dict[Annotated[str, Field(max_length=24)], Literal["r", "w", "rw"]] = Field(
        default_factory=dict, max_length=MAX_PIPES)


class OtherBytes(Model):
    """What did not fit in a bounded list: how many entries, and their bytes."""

    count: Count
    tx_bytes: Count


class Destination(Model):
    address: Address
    port: Port
    tx_bytes: Count
    protocol: Literal["tcp", "udp", "icmp", "raw", "unix", "other"] | None = None
    name: Annotated[str, Field(max_length=253), AfterValidator(_clean)] | None = None  # DNS name looked up
    allowed: bool = False
    accepted: bool | None = None  # True: bytes on connections the peer opened (replies, serving)
    connections: Count | None = None
    first_ts: Timestamp | None = None  # first and last send within the interval, where known
    last_ts: Timestamp | None = None


class LocalPeer(Model):
    """A process on this host that this one sent bytes to: a possible relay (reader -> relay -> sender)."""

    via: Literal["unix", "tcp", "udp"]
    tx_bytes: Count
    pid: Pid | None = None  # None: the receiving end could not be named (it exited, or nobody holds it)
    start_time: Timestamp | None = None
    name: Name | None = None
    exe: Text | None = None
    port: Port | None = None  # tcp/udp: the peer's port (53: the local resolver)


class ProcessEgress(ProcessFields):
    pid: Pid
    tx_bytes: Count  # bytes that left the host; 0 for a process that only sent locally
    destinations: list[Destination] = Field(default_factory=list, max_length=MAX_DESTINATIONS)
    other_destinations: OtherBytes | None = None
    local_peers: list[LocalPeer] = Field(default_factory=list, max_length=MAX_LOCAL_PEERS)
    other_local_peers: OtherBytes | None = None


class InterfaceCounters(Model):
    name: Name
    tx_bytes: Count
    rx_bytes: Count = 0
    tx_packets: Count = 0
    tx_rate_bps: Rate = 0.0
    # Every byte that left is explained or alarming: payload credited to processes, protocol overhead
    # expected from the packet count (headers), and the rest, unexplained (None: not computed here).
    attributed_tx_bytes: Count | None = None
    overhead_tx_bytes: Count | None = None
    unexplained_tx_bytes: Count | None = None


class SensorFeature(Model):
    """One capability of the kernel sensor: on, or off with the kernel's own reason."""

    on: bool
    reason: Text | None = None  # why it is off: the verifier's or the kernel's words, shortened


class SensorState(Model):
    """What the sensor can see on this kernel: the attribution path and each feature, on or off."""

    path: Name  # ebpf, nfqueue, sample-time, none (the values of ``attribution``)
    kernel: Name | None = None  # the kernel release (uname -r)
    features: dict[Name, SensorFeature] = Field(default_factory=dict, max_length=100)
    degraded: bool = False  # a feature this kernel should have is off, or the path is the fallback
    detail: Text | None = None


class WeightsTotal(Model):
    paths: list[Text] = Field(default_factory=list, max_length=1000)
    canaries: list[Text] = Field(default_factory=list, max_length=1000)
    files: Count = 0
    total_bytes: Count = 0
    measured_at: Timestamp | None = None


class FeatureState(Model):
    ok: bool
    detail: Text


class BudgetUsage(Model):
    used_bytes: Count
    limit_bytes: Count
    exhausted: bool
    action: Name


class FileWatchState(Model):
    mode: Name
    detail: Text
    dropped: Count = 0


class CapInfo(Model):
    name: Name
    index: Count
    action: Name
    rate_bps: Count
    burst_bytes: Count
    classid: Name
    counter: Name


class ProcessTotal(Model):
    process: Text
    tx_bytes: Count


class EgressSummary(Model):
    attributed_tx_bytes: Count = 0
    unattributed_tx_bytes: Count = 0
    top_processes: list[ProcessTotal] = Field(default_factory=list, max_length=100)


class MappedFile(Model):
    path: Text
    mapped_bytes: Count
    resident_bytes: Count


def _range(value: tuple[int, int]) -> tuple[int, int]:
    if value[0] > value[1]:
        raise ValueError("a sequence range is [first, last] with first <= last")
    return value


SeqRange = Annotated[tuple[Annotated[int, Field(ge=0, le=MAX_SEQ)], Annotated[int, Field(ge=0, le=MAX_SEQ)]],
                     AfterValidator(_range)]
