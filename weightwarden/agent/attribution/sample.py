"""One interval's sample as the sampler builds it, and as ``top --json`` prints it and the daemon publishes it
(events.EgressSample): typed, keys checked by mypy, optional keys absent rather than null."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NotRequired, TypedDict

from weightwarden.agent.attribution.report import OtherEntry, ProcessEntry
from weightwarden.events import EgressSample
from weightwarden.jsontypes import JsonObject


class InterfaceEntry(TypedDict):
    """One interface's bytes in a sample (events.InterfaceCounters)."""

    name: str
    tx_bytes: int
    rx_bytes: int
    tx_packets: int
    tx_rate_bps: float
    attributed_tx_bytes: NotRequired[int]
    overhead_tx_bytes: NotRequired[int]
    unexplained_tx_bytes: NotRequired[int]


class SampleJson(TypedDict):
    """A sample as ``top --json`` prints it and the daemon publishes it (events.EgressSample)."""

    ts: float
    interval_s: float
    layer: str
    interfaces: list[InterfaceEntry]
    processes: list[ProcessEntry]
    attributed_tx_bytes: int
    unattributed_tx_bytes: int
    unowned_flow_tx_bytes: int
    lost_events: int
    start_ts: NotRequired[float]
    attribution: NotRequired[str]
    sensor: NotRequired[JsonObject]
    other_processes: NotRequired[OtherEntry]


@dataclass
class Sample:
    ts: float
    interval_s: float
    interfaces: list[InterfaceEntry]
    processes: list[ProcessEntry]
    attributed_tx_bytes: int
    unattributed_tx_bytes: int
    unowned_flow_tx_bytes: int
    lost_events: int
    start_ts: float | None = None
    attribution: str | None = None
    sensor: JsonObject | None = None  # the sensor's state (events.SensorState as JSON)
    other_processes: OtherEntry | None = None  # the senders beyond MAX_PROCESSES, summed

    def to_payload(self) -> EgressSample:
        return EgressSample.model_validate(self.to_json())

    def to_json(self) -> SampleJson:
        out: SampleJson = {
            "ts": self.ts,
            "interval_s": round(self.interval_s, 6),
            "layer": "transport-payload",
            "interfaces": self.interfaces,
            "processes": self.processes,
            "attributed_tx_bytes": self.attributed_tx_bytes,
            "unattributed_tx_bytes": self.unattributed_tx_bytes,
            "unowned_flow_tx_bytes": self.unowned_flow_tx_bytes,
            "lost_events": self.lost_events,
        }
        if self.start_ts is not None:
            out["start_ts"] = self.start_ts
        if self.attribution is not None:
            out["attribution"] = self.attribution
        if self.sensor is not None:
            out["sensor"] = self.sensor
        if self.other_processes is not None:
            out["other_processes"] = self.other_processes
        return out
