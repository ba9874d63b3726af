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
generated from these models (``python -m weightwarden.eventdocs``).

The schema is kept in parts, all re-exported here (``from weightwarden.events import X`` is the way in):
``fields`` (bounds, field types, base models), ``parts`` (pieces several events share), ``payloads`` (one
model per event type), ``envelope`` (the envelope, parsing), ``factory`` (making events on an agent).
"""

from weightwarden.events.envelope import (
    ENVELOPES,
    AgentLostEvent,
    AgentStartedEvent,
    AgentStoppingEvent,
    AnyEvent,
    BudgetExhaustedEvent,
    CanaryReadEvent,
    CapHitEvent,
    EgressSampleEvent,
    EnforcementDriftEvent,
    EnforcementErrorEvent,
    Event,
    EventsDroppedEvent,
    FileAccessEvent,
    HeartbeatEvent,
    PolicyAppliedEvent,
    PolicyRejectedEvent,
    RawSocketEvent,
    SensorTamperedEvent,
    ThresholdCrossedEvent,
    UnexplainedEgressEvent,
    WeightHolderEvent,
    WeightsCopyEvent,
    WeightsRelinkedEvent,
    envelope,
    parse_event,
    parse_event_json,
    seq_ranges,
)
from weightwarden.events.factory import (
    EventFactory,
    Sequencer,
    SequenceSource,
    default_host_id,
    write_private,
)
from weightwarden.events.fields import (
    HOST_ID,
    MAX_ARGS,
    MAX_BYTES,
    MAX_DESTINATIONS,
    MAX_INTERFACES,
    MAX_LOCAL_PEERS,
    MAX_PIPES,
    MAX_PROCESSES,
    MAX_SECONDS,
    MAX_SEQ,
    MAX_TS,
    SCHEMA_VERSION,
    Address,
    Count,
    Inode,
    Model,
    Name,
    Payload,
    Pid,
    Port,
    Rate,
    Seconds,
    Severity,
    Text,
    Timestamp,
    Uid,
    safe_text,
)
from weightwarden.events.parts import (
    BudgetUsage,
    CapInfo,
    Container,
    Destination,
    EgressSummary,
    FeatureState,
    FileWatchState,
    InterfaceCounters,
    LocalPeer,
    MappedFile,
    OtherBytes,
    ProcessEgress,
    ProcessFields,
    ProcessTotal,
    SensorFeature,
    SensorState,
    SeqRange,
    WeightsTotal,
)
from weightwarden.events.payloads import (
    EVENT_TYPES,
    PAYLOAD_OF,
    PAYLOADS,
    AgentLost,
    AgentStarted,
    AgentStopping,
    BudgetExhausted,
    CanaryRead,
    CapHit,
    EgressSample,
    EnforcementDrift,
    EnforcementError,
    EventsDropped,
    EventType,
    FileAccess,
    FileIdentity,
    Heartbeat,
    PolicyApplied,
    PolicyRejected,
    RawSocket,
    SensorTampered,
    TamperChange,
    ThresholdCrossed,
    UnexplainedEgress,
    WeightHolder,
    WeightsCopy,
    WeightsRelinked,
)

__all__ = [
    "SCHEMA_VERSION", "HOST_ID", "MAX_PROCESSES", "MAX_DESTINATIONS", "MAX_INTERFACES", "MAX_PIPES",
    "MAX_LOCAL_PEERS", "MAX_ARGS", "MAX_SEQ", "MAX_BYTES", "MAX_TS", "MAX_SECONDS", "safe_text", "Text", "Name",
    "Address", "Count", "Pid", "Uid", "Port", "Inode", "Timestamp", "Seconds", "Rate", "Severity", "Model",
    "Payload", "Container", "ProcessFields", "OtherBytes", "Destination", "LocalPeer", "ProcessEgress",
    "InterfaceCounters", "SensorFeature", "SensorState", "WeightsTotal", "FeatureState", "BudgetUsage",
    "FileWatchState", "CapInfo", "ProcessTotal", "EgressSummary", "MappedFile", "SeqRange", "AgentStarted",
    "Heartbeat", "EgressSample", "ThresholdCrossed", "CapHit", "BudgetExhausted", "EnforcementDrift",
    "EnforcementError", "PolicyApplied", "PolicyRejected", "EventsDropped", "AgentStopping", "AgentLost",
    "FileIdentity", "FileAccess", "WeightHolder", "WeightsCopy", "CanaryRead", "WeightsRelinked", "RawSocket",
    "TamperChange", "SensorTampered", "UnexplainedEgress", "PAYLOADS", "EventType", "EVENT_TYPES", "PAYLOAD_OF",
    "Event", "AgentStartedEvent", "AgentStoppingEvent", "HeartbeatEvent", "EgressSampleEvent",
    "ThresholdCrossedEvent", "CapHitEvent", "BudgetExhaustedEvent", "EnforcementDriftEvent",
    "EnforcementErrorEvent", "PolicyAppliedEvent", "PolicyRejectedEvent", "FileAccessEvent", "WeightsCopyEvent",
    "WeightHolderEvent", "CanaryReadEvent", "EventsDroppedEvent", "AgentLostEvent", "WeightsRelinkedEvent",
    "RawSocketEvent", "SensorTamperedEvent", "UnexplainedEgressEvent", "AnyEvent", "ENVELOPES", "parse_event_json",
    "parse_event", "envelope", "seq_ranges", "default_host_id", "write_private", "Sequencer", "SequenceSource",
    "EventFactory",
]
