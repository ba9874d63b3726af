"""The envelope every event travels in (one subclass per type fixes ``type`` and ``data``), and parsing."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal, Union

from pydantic import ConfigDict, Field, TypeAdapter, model_validator

from weightwarden.events.fields import HOST_ID, MAX_SEQ, SCHEMA_VERSION, Model, Payload, Timestamp
from weightwarden.events.payloads import (
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
    FileAccess,
    Heartbeat,
    PolicyApplied,
    PolicyRejected,
    RawSocket,
    SensorTampered,
    ThresholdCrossed,
    UnexplainedEgress,
    WeightHolder,
    WeightsCopy,
    WeightsRelinked,
)
from weightwarden.jsontypes import JsonObject

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
