"""The event schema shared by agent and collector (schema version 1): one frozen model per type.

Every event is one JSON object with top-level ``schema``, ``id``, ``host``,
``seq``, ``ts``, ``type`` and a type-specific ``data`` object. ``seq`` counts
up by one per agent and survives restarts; ``id`` is unique per event, so a
redelivered event is recognisable as a duplicate.

The agent builds each payload as its model (a typo in a field is an error in
the agent's tests, not a silent gap in the collector); the collector parses
with :func:`parse_event_json`, which checks everything before anything else
touches it: unknown keys, types (strictly: no "12" for 12), ranges (no NaN,
no 2**63, no negative bytes), string sizes, NUL characters and lone
surrogates (neither fits PostgreSQL's TEXT), and list lengths. So a message
that parses is safe to store and to correlate. ``docs/events.md``'s schema is
generated from these models (``python -m weightwarden.events --markdown``).
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import socket
import tempfile
import time
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Protocol, Union

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, TypeAdapter, model_validator

from weightwarden.jsontypes import JsonObject

SCHEMA_VERSION: Literal[1] = 1
HOST_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")

# Bounds that keep one event small enough for the collector's size limit, whatever the host does.
MAX_PROCESSES = 200  # per egress sample; the rest are summed into other_processes
MAX_DESTINATIONS = 32  # per process; the rest are summed into other_destinations
MAX_INTERFACES = 256
MAX_PIPES = 64
MAX_LOCAL_PEERS = 16  # per process; the rest are summed into other_local_peers
MAX_ARGS = 32
MAX_SEQ = 2**62
MAX_BYTES = 2**62
MAX_TS = 2.0**33  # year 2242: beyond it is garbage, not a clock
MAX_SECONDS = 1e9


def _clean(value: str) -> str:
    if "\x00" in value:
        raise ValueError("contains a NUL character")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("contains a lone surrogate (not valid UTF-8)") from None
    return value


def safe_text(value: str | bytes | None, limit: int = 4096) -> str:
    """Any string the kernel or /proc hands us (non-UTF-8 file names arrive with surrogate
    escapes) as valid UTF-8 without NULs, cut to ``limit``: what the models accept."""
    if value is None:
        return ""
    if isinstance(value, bytes):
        text = value.decode("utf-8", "backslashreplace")
    else:
        text = value.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return text.replace("\x00", "\\x00")[:limit]


def _finite(value: float) -> float:
    if not math.isfinite(value):
        raise ValueError("must be a finite number")
    return value


Text = Annotated[str, Field(max_length=4096), AfterValidator(_clean)]
Name = Annotated[str, Field(max_length=256), AfterValidator(_clean)]
Address = Annotated[str, Field(max_length=128), AfterValidator(_clean)]
Count = Annotated[int, Field(ge=0, le=MAX_BYTES)]
Pid = Annotated[int, Field(ge=0, le=2**31 - 1)]
Uid = Annotated[int, Field(ge=0, le=2**32 - 1)]
Port = Annotated[int, Field(ge=0, le=65535)]
Inode = Annotated[int, Field(ge=0, le=2**64 - 1)]
Timestamp = Annotated[float, Field(ge=0, le=MAX_TS), AfterValidator(_finite)]
Seconds = Annotated[float, Field(ge=0, le=MAX_SECONDS), AfterValidator(_finite)]
Rate = Annotated[float, Field(ge=0, le=1e15), AfterValidator(_finite)]
Severity = Literal["low", "medium", "high", "critical"]


class Model(BaseModel):
    """Frozen, and unknown keys are errors: a misspelt field never silently disappears."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Payload(Model):
    """The ``data`` of one event type; ``TYPE`` is that type's name."""

    TYPE: ClassVar[str] = ""


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


# -- the envelope -------------------------------------------------------------------


class Event(Model):
    """The envelope; its subclasses below fix ``type`` and type ``data``."""

    schema_: Literal[1] = Field(default=SCHEMA_VERSION, alias="schema")
    id: str = Field(pattern=r"^[0-9a-f]{32}$")
    host: str = Field(pattern=HOST_ID.pattern)
    seq: int = Field(ge=0, le=MAX_SEQ)  # 0 only for agent_lost, the Last-Will, which is outside the sequence
    ts: Timestamp
    type: str
    data: Payload

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @model_validator(mode="after")
    def _seq_zero_only_for_will(self) -> Event:
        if (self.seq == 0) != (self.type == "agent_lost"):
            raise ValueError("seq is 0 exactly for agent_lost events")
        return self

    def to_json(self) -> JsonObject:
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


class AgentStartedEvent(Event):
    type: Literal["agent_started"] = "agent_started"
    data: AgentStarted


class AgentStoppingEvent(Event):
    type: Literal["agent_stopping"] = "agent_stopping"
    data: AgentStopping


class HeartbeatEvent(Event):
    type: Literal["heartbeat"] = "heartbeat"
    data: Heartbeat


class EgressSampleEvent(Event):
    type: Literal["egress_sample"] = "egress_sample"
    data: EgressSample


class ThresholdCrossedEvent(Event):
    type: Literal["threshold_crossed"] = "threshold_crossed"
    data: ThresholdCrossed


class CapHitEvent(Event):
    type: Literal["cap_hit"] = "cap_hit"
    data: CapHit


class BudgetExhaustedEvent(Event):
    type: Literal["budget_exhausted"] = "budget_exhausted"
    data: BudgetExhausted


class EnforcementDriftEvent(Event):
    type: Literal["enforcement_drift"] = "enforcement_drift"
    data: EnforcementDrift


class EnforcementErrorEvent(Event):
    type: Literal["enforcement_error"] = "enforcement_error"
    data: EnforcementError


class PolicyAppliedEvent(Event):
    type: Literal["policy_applied"] = "policy_applied"
    data: PolicyApplied


class PolicyRejectedEvent(Event):
    type: Literal["policy_rejected"] = "policy_rejected"
    data: PolicyRejected


class FileAccessEvent(Event):
    type: Literal["file_access"] = "file_access"
    data: FileAccess


class WeightsCopyEvent(Event):
    type: Literal["weights_copy"] = "weights_copy"
    data: WeightsCopy


class WeightHolderEvent(Event):
    type: Literal["weight_holder"] = "weight_holder"
    data: WeightHolder


class CanaryReadEvent(Event):
    type: Literal["canary_read"] = "canary_read"
    data: CanaryRead


class EventsDroppedEvent(Event):
    type: Literal["events_dropped"] = "events_dropped"
    data: EventsDropped


class AgentLostEvent(Event):
    type: Literal["agent_lost"] = "agent_lost"
    data: AgentLost


class WeightsRelinkedEvent(Event):
    type: Literal["weights_relinked"] = "weights_relinked"
    data: WeightsRelinked


class RawSocketEvent(Event):
    type: Literal["raw_socket"] = "raw_socket"
    data: RawSocket


class SensorTamperedEvent(Event):
    type: Literal["sensor_tampered"] = "sensor_tampered"
    data: SensorTampered


class UnexplainedEgressEvent(Event):
    type: Literal["unexplained_egress"] = "unexplained_egress"
    data: UnexplainedEgress


AnyEvent = Annotated[
    Union[AgentStartedEvent, AgentStoppingEvent, HeartbeatEvent, EgressSampleEvent, ThresholdCrossedEvent,  # noqa: UP007
          CapHitEvent, BudgetExhaustedEvent, EnforcementDriftEvent, EnforcementErrorEvent, PolicyAppliedEvent,
          PolicyRejectedEvent, FileAccessEvent, WeightsCopyEvent, WeightHolderEvent, CanaryReadEvent,
          EventsDroppedEvent, AgentLostEvent, WeightsRelinkedEvent, RawSocketEvent, SensorTamperedEvent,
          UnexplainedEgressEvent],
    Field(discriminator="type"),
]
ENVELOPES: dict[str, type[Event]] = {
    cls.model_fields["type"].default: cls for cls in (
        AgentStartedEvent, AgentStoppingEvent, HeartbeatEvent, EgressSampleEvent, ThresholdCrossedEvent,
        CapHitEvent, BudgetExhaustedEvent, EnforcementDriftEvent, EnforcementErrorEvent, PolicyAppliedEvent,
        PolicyRejectedEvent, FileAccessEvent, WeightsCopyEvent, WeightHolderEvent, CanaryReadEvent,
        EventsDroppedEvent, AgentLostEvent, WeightsRelinkedEvent, RawSocketEvent, SensorTamperedEvent,
        UnexplainedEgressEvent)
}
_ADAPTER: TypeAdapter[Event] = TypeAdapter(AnyEvent)


def parse_event_json(raw: bytes | str) -> Event:
    """Parse and validate one event from JSON, strictly; raises pydantic.ValidationError."""
    return _ADAPTER.validate_json(raw, strict=True)


def parse_event(doc: Mapping[str, object]) -> Event:
    """Validate one event already decoded from JSON (a spool row, a stored event)."""
    return _ADAPTER.validate_python(doc, strict=False)


def envelope(type_: str, **fields: Any) -> Event:
    """An event of ``type_`` built from already validated parts (tests, the Last-Will)."""
    return ENVELOPES[type_](**fields)


def seq_ranges(seqs: list[int]) -> list[list[int]]:
    """Sequence numbers as sorted inclusive [first, last] runs: [1, 2, 3, 7] -> [[1, 3], [7, 7]]."""
    out: list[list[int]] = []
    for s in sorted(seqs):
        if out and s == out[-1][1] + 1:
            out[-1][1] = s
        else:
            out.append([s, s])
    return out


def default_host_id() -> str:
    """The hostname, cleaned to what a topic segment and the schema accept."""
    name = re.sub(r"[^A-Za-z0-9_.-]", "-", socket.gethostname()).strip("-.") or "host"
    return name[:63]


def write_private(path: Path, text: str) -> None:
    """Write a state file atomically, readable by its owner only: a fresh, exclusively created
    temporary file in the same directory (never a fixed name another process could own), fsynced,
    then renamed over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)  # O_EXCL, mode 0600
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        Path(tmp).replace(path)
    except BaseException:
        with contextlib.suppress(OSError):
            Path(tmp).unlink()
        raise


class Sequencer:
    """Per-agent sequence numbers that survive restarts.

    The next number is written (and fsynced) before it is handed out, so a
    crash can skip numbers only if the event was never produced, never reuse.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self.last = int(path.read_text().strip() or 0)
        except (OSError, ValueError):
            self.last = 0

    def next(self) -> int:
        value = self.last + 1
        write_private(self.path, str(value))
        self.last = value
        return value


class SequenceSource(Protocol):
    """Where an agent's sequence numbers come from (``Sequencer``, or a sink's own)."""

    last: int  # the last number handed out

    def next(self) -> int: ...


class EventFactory:
    def __init__(self, host: str, sequencer: SequenceSource, clock: Callable[[], float] = time.time) -> None:
        if not HOST_ID.match(host):
            raise ValueError(f"invalid host id {host!r}: letters, digits, '_', '.', '-' (max 63)")
        self.host = host
        self.seq = sequencer
        self.clock = clock

    def make(self, data: Payload, ts: float | None = None) -> Event:
        return ENVELOPES[data.TYPE].model_validate({
            "schema": SCHEMA_VERSION, "id": uuid.uuid4().hex, "host": self.host, "seq": self.seq.next(),
            "ts": self.clock() if ts is None else ts, "type": data.TYPE, "data": data,
        })


__all__ = [
    "EVENT_TYPES", "ENVELOPES", "PAYLOADS", "PAYLOAD_OF", "SCHEMA_VERSION", "AnyEvent", "Event", "EventFactory",
    "EventType", "Payload", "Sequencer", "default_host_id", "parse_event", "parse_event_json", "safe_text",
    "seq_ranges", "write_private", "LocalPeer", "SensorFeature", "SensorState", "FileIdentity", "TamperChange",
] + [p.__name__ for p in PAYLOADS]
