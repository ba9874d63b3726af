"""One payload model per event type (an event's ``data``), and the table of them."""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import Field

from weightwarden.events.fields import (
    MAX_INTERFACES,
    MAX_PROCESSES,
    MAX_SEQ,
    Count,
    Inode,
    Model,
    Name,
    Payload,
    Pid,
    Seconds,
    Severity,
    Text,
    Timestamp,
)
from weightwarden.events.parts import (
    BudgetUsage,
    CapInfo,
    EgressSummary,
    FeatureState,
    FileWatchState,
    InterfaceCounters,
    MappedFile,
    OtherBytes,
    ProcessEgress,
    ProcessFields,
    SensorState,
    SeqRange,
    WeightsTotal,
)

# -- payloads, one per event type ------------------------------------------------


class AgentStarted(Payload):
    TYPE: ClassVar[str] = "agent_started"
    pid: Pid
    policy: Name
    policy_digest: Name
    policy_path: Text
    features: dict[Name, FeatureState] = Field(default_factory=dict, max_length=100)
    weights: WeightsTotal | None = None
    version: Name | None = None
    attribution: Name | None = None
    sensor: SensorState | None = None


class Heartbeat(Payload):
    TYPE: ClassVar[str] = "heartbeat"
    uptime_s: Seconds
    sampler_lag_s: Seconds = 0.0
    event_queue: Count = 0
    events_dropped: Count = 0
    spool_depth: Count = 0
    events_replayed: Count = 0
    policy: Name
    policy_digest: Name
    backend: Name | None = None
    rules_in_force: bool = False
    caps: Count = 0
    budgets: dict[Name, BudgetUsage] = Field(default_factory=dict, max_length=200)
    weights: WeightsTotal | None = None
    file_watch: FileWatchState | None = None
    attribution: Name | None = None  # the owner-resolution path in use (ebpf, nfqueue, sample-time)
    drift_count: Count = 0
    stuck_s: Seconds = 0.0  # how long the sample loop has not finished a sample (0: healthy)
    sensor: SensorState | None = None


class EgressSample(Payload):
    TYPE: ClassVar[str] = "egress_sample"
    ts: Timestamp
    start_ts: Timestamp | None = None  # the interval's start: bytes here left within [start_ts, ts]
    interval_s: Seconds
    layer: Literal["transport-payload"] = "transport-payload"
    interfaces: list[InterfaceCounters] = Field(default_factory=list, max_length=MAX_INTERFACES)
    processes: list[ProcessEgress] = Field(default_factory=list, max_length=MAX_PROCESSES)
    other_processes: OtherBytes | None = None
    attributed_tx_bytes: Count = 0
    unattributed_tx_bytes: Count = 0
    unowned_flow_tx_bytes: Count = 0
    lost_events: Count = 0
    attribution: Name | None = None
    sensor: SensorState | None = None


class ThresholdCrossed(Payload):
    TYPE: ClassVar[str] = "threshold_crossed"
    threshold: Name
    severity: Severity
    bytes_in_window: Count
    window_s: Seconds
    limit_bytes: Count
    process: ProcessEgress


class CapHit(Payload):
    TYPE: ClassVar[str] = "cap_hit"
    cap: Name
    action: Name
    rate_bps: Count
    observed_bps: Count
    bytes: Count


class BudgetExhausted(Payload):
    TYPE: ClassVar[str] = "budget_exhausted"
    budget: Name
    limit_bytes: Count
    window_s: Seconds
    action: Name
    used_bytes: Count


class EnforcementDrift(Payload):
    TYPE: ClassVar[str] = "enforcement_drift"
    drift: list[Text] = Field(max_length=200)
    restored: bool


class EnforcementError(Payload):
    TYPE: ClassVar[str] = "enforcement_error"
    error: Text


class PolicyApplied(Payload):
    TYPE: ClassVar[str] = "policy_applied"
    policy: Name
    policy_digest: Name
    policy_path: Text
    backend: Name | None = None
    interfaces: list[Name] = Field(default_factory=list, max_length=MAX_INTERFACES)
    notes: list[Text] = Field(default_factory=list, max_length=500)
    caps: list[CapInfo] = Field(default_factory=list, max_length=500)
    blocked_budgets: list[Name] = Field(default_factory=list, max_length=200)
    version: Count | None = None  # a centrally published policy's version
    source: Name | None = None  # file or mqtt
    key_id: Name | None = None  # the signing key of a centrally published policy


class PolicyRejected(Payload):
    TYPE: ClassVar[str] = "policy_rejected"
    path: Text
    problems: list[Text] = Field(max_length=500)
    kept: Name
    kept_digest: Name
    source: Name | None = None
    version: Count | None = None


class EventsDropped(Payload):
    TYPE: ClassVar[str] = "events_dropped"
    reason: Text
    dropped: Count | None = None  # None: unknown (a corrupt spool was moved aside)
    by_type: dict[Name, Count] = Field(default_factory=dict, max_length=64)
    seq_ranges: list[SeqRange] = Field(default_factory=list, max_length=10_000)
    first_ts: Timestamp | None = None
    last_ts: Timestamp | None = None
    egress_summary: EgressSummary | None = None
    moved_to: Text | None = None
    last_seq_before: Annotated[int, Field(ge=0, le=MAX_SEQ)] | None = None
    source: Name | None = None


class AgentStopping(Payload):
    TYPE: ClassVar[str] = "agent_stopping"
    reason: Text
    rules_left_in_force: bool


class AgentLost(Payload):
    TYPE: ClassVar[str] = "agent_lost"
    reason: Text
    connected_at: Timestamp
    pid: Pid


class FileIdentity(Model):
    """A file known by its inode, whatever name it is reached by (hard links, renames, bind mounts)."""

    inode: Inode | None = None
    dev: Annotated[int, Field(ge=0, le=2**64 - 1)] | None = None
    names: list[Text] = Field(default_factory=list, max_length=64)  # every name the agent knows it by


class FileAccess(ProcessFields, FileIdentity, Payload):
    TYPE: ClassVar[str] = "file_access"
    pid: Pid | None = None  # None only from the inotify fallback
    path: Text
    size: Count = 0
    bytes_read: Count
    opens: Count = 0
    reads: Count = 0
    closes: Count = 0
    close_write: Count = 0
    first_ts: Timestamp
    last_ts: Timestamp
    still_open: bool = False
    final: bool = True
    bytes_estimated: bool = False
    staged_copy_of: list[Text] = Field(default_factory=list, max_length=100)
    # ``path`` is the file's host path whenever the agent can name it (the same file read from several
    # containers has one path); ``host_path`` repeats it when the process reached the file through another
    # mount namespace (a container), and ``view_path`` is then the path as that process saw it, when known.
    host_path: Text | None = None  # the file's path in the host's mount namespace, when it differs
    how: Name | None = None  # how the bytes were measured: kernel (eBPF), rchar, taskstats, position, estimate, mmap, io_uring
    view_path: Text | None = None
    # The process maps this file (at the last look): it holds the weights (an inference server) rather
    # than streaming them through read(); resident_bytes is how much of the mapping it touched.
    mapped_bytes: Count | None = None
    resident_bytes: Count | None = None


class WeightHolder(ProcessFields, FileIdentity, Payload):
    TYPE: ClassVar[str] = "weight_holder"
    pid: Pid
    path: Text
    files: list[MappedFile] = Field(default_factory=list, max_length=1000)
    mapped_bytes: Count
    resident_bytes: Count
    bytes_read: Count


class WeightsCopy(ProcessFields, FileIdentity, Payload):
    TYPE: ClassVar[str] = "weights_copy"
    pid: Pid
    sources: list[Text] = Field(max_length=1000)
    source_bytes_read: Count
    destination: Text
    destination_size: Count
    path: Text
    derivative: bool = False  # not a byte copy: compressed, encrypted or split output of a weights reader
    remote: Name | None = None  # the filesystem type when the copy went to network storage (nfs, cifs, fuse)
    view_path: Text | None = None  # the destination as the writer saw it, when it wrote in another mount namespace
    source_bytes_estimated: bool = False  # some of source_bytes_read could not be measured (see FileAccess.how)


class CanaryRead(ProcessFields, FileIdentity, Payload):
    TYPE: ClassVar[str] = "canary_read"
    path: Text
    severity: Severity = "critical"
    note: Text | None = None


class WeightsRelinked(ProcessFields, FileIdentity, Payload):
    """A weight file got a new name: a hard link made anywhere, or a rename or move out of the tree.
    The file stays watched (by inode) under every name."""

    TYPE: ClassVar[str] = "weights_relinked"
    how: Literal["hardlink", "rename", "symlink", "other"]
    from_path: Text  # the weights path (in the tree)
    to_path: Text  # the new name
    outside_tree: bool  # the new name is outside the policy's weights paths
    size: Count = 0


class RawSocket(ProcessFields, Payload):
    """A packet socket (AF_PACKET, or AF_XDP) opened or used on the host: frames that skip the
    transport layer, and with qdisc bypass every qdisc, netfilter and cgroup program too."""

    TYPE: ClassVar[str] = "raw_socket"
    family: Literal["packet", "xdp"] = "packet"
    socket_type: Literal["raw", "dgram", "other"] = "raw"
    protocol: Annotated[int, Field(ge=0, le=65535)] = 0  # the ethertype bound, host order (0: none yet)
    interface: Name | None = None
    ifindex: Annotated[int, Field(ge=0, le=2**31 - 1)] | None = None
    bypass: bool = False  # PACKET_QDISC_BYPASS: dev_direct_xmit, no qdisc, no netfilter, no cgroup_skb
    tx_bytes: Count = 0  # bytes sent on it so far (the frames, headers included)
    tx_packets: Count = 0
    allowed: bool = False  # its executable is allowlisted by the policy (raw_sockets.allow)
    action: Literal["alert", "kill", "none"] = "alert"
    killed: bool = False
    escaped_bytes: Count | None = None  # with kill: bytes that left before the process stopped
    first_ts: Timestamp | None = None
    last_ts: Timestamp | None = None


class TamperChange(Model):
    kind: Literal["program_detached", "link_detached", "program_replaced", "map_rewritten", "rules_flushed",
                  "loader_killed", "other"]
    name: Name  # the program, link, map or rule set
    detail: Text | None = None


class SensorTampered(Payload):
    """Someone changed the sensor behind the agent's back (detached a program or link, replaced one,
    rewrote a map, flushed the fallback's rules). Never resolved by itself."""

    TYPE: ClassVar[str] = "sensor_tampered"
    changes: list[TamperChange] = Field(max_length=200)
    reattached: bool  # the agent put back what it could
    detected_ts: Timestamp
    blind_from_ts: Timestamp | None = None  # the sensor may have missed bytes since (the last check it passed)


class UnexplainedEgress(Payload):
    """Bytes left an interface that no process was credited with and that headers cannot explain:
    raw frames, a detached sensor, or traffic the agent cannot see."""

    TYPE: ClassVar[str] = "unexplained_egress"
    interface: Name
    unexplained_tx_bytes: Count
    tx_bytes: Count
    attributed_tx_bytes: Count
    overhead_tx_bytes: Count
    tx_packets: Count = 0
    first_ts: Timestamp
    last_ts: Timestamp
    sensor: SensorState | None = None


PAYLOADS: tuple[type[Payload], ...] = (
    AgentStarted, AgentStopping, Heartbeat, EgressSample, ThresholdCrossed, CapHit, BudgetExhausted,
    EnforcementDrift, EnforcementError, PolicyApplied, PolicyRejected, FileAccess, WeightsCopy, WeightHolder,
    CanaryRead, EventsDropped, AgentLost, WeightsRelinked, RawSocket, SensorTampered, UnexplainedEgress,
)
EventType = Literal[
    "agent_started", "agent_stopping", "heartbeat", "egress_sample", "threshold_crossed", "cap_hit",
    "budget_exhausted", "enforcement_drift", "enforcement_error", "policy_applied", "policy_rejected",
    "file_access", "weights_copy", "weight_holder", "canary_read", "events_dropped", "agent_lost",
    "weights_relinked", "raw_socket", "sensor_tampered", "unexplained_egress",
]
EVENT_TYPES: tuple[str, ...] = tuple(p.TYPE for p in PAYLOADS)
PAYLOAD_OF: dict[str, type[Payload]] = {p.TYPE: p for p in PAYLOADS}
