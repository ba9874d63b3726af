"""The event schema shared by agent and collector (schema version 1).

Every event is one JSON object with top-level ``schema``, ``id``, ``host``,
``seq``, ``ts``, ``type`` and a type-specific ``data`` object. ``seq`` counts
up by one per agent and survives restarts; ``id`` is unique per event, so a
redelivered event is recognisable as a duplicate.
"""

from __future__ import annotations

import os
import re
import socket
import time
import uuid
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

SCHEMA_VERSION = 1
HOST_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")

EventType = Literal[
    "agent_started",
    "agent_stopping",
    "heartbeat",
    "egress_sample",
    "threshold_crossed",
    "cap_hit",
    "budget_exhausted",
    "enforcement_drift",
    "enforcement_error",
    "policy_applied",
    "policy_rejected",
    "file_access",
    "weights_copy",
    "weight_holder",
    "canary_read",
    "events_dropped",
    "agent_lost",
]
EVENT_TYPES: tuple[str, ...] = EventType.__args__  # type: ignore[attr-defined]


class Event(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_: int = Field(default=SCHEMA_VERSION, alias="schema")
    id: str = Field(pattern=r"^[0-9a-f]{32}$")
    host: str = Field(pattern=HOST_ID.pattern)
    seq: int = Field(ge=0)  # 0 only for agent_lost, the Last-Will, which is outside the sequence
    ts: float
    type: EventType
    data: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _seq_zero_only_for_will(self) -> Event:
        if (self.seq == 0) != (self.type == "agent_lost"):
            raise ValueError("seq is 0 exactly for agent_lost events")
        return self

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True)


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
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        with open(tmp, "w") as fh:
            fh.write(str(value))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)
        self.last = value
        return value


class EventFactory:
    def __init__(self, host: str, sequencer: Sequencer) -> None:
        if not HOST_ID.match(host):
            raise ValueError(f"invalid host id {host!r}: letters, digits, '_', '.', '-' (max 63)")
        self.host = host
        self.seq = sequencer

    def make(self, type_: str, data: dict[str, Any] | None = None, ts: float | None = None) -> Event:
        return Event(
            schema=SCHEMA_VERSION,
            id=uuid.uuid4().hex,
            host=self.host,
            seq=self.seq.next(),
            ts=time.time() if ts is None else ts,
            type=type_,  # type: ignore[arg-type]
            data=data or {},
        )
