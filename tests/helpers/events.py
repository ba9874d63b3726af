"""Typed events for tests: each built with the shared models, as an agent would."""

from __future__ import annotations

from typing import Any

from weightwarden.events import PAYLOAD_OF, EgressSample, Event, EventFactory, Heartbeat, Payload


def payload(type_: str, **data: Any) -> Payload:
    return PAYLOAD_OF[type_].model_validate(data)


def make(factory: EventFactory, type_: str, ts: float | None = None, **data: Any) -> Event:
    return factory.make(payload(type_, **data), ts=ts)


def heartbeat(**extra: Any) -> Heartbeat:
    return Heartbeat.model_validate({"uptime_s": 1.0, "policy": "p", "policy_digest": "d", **extra})


def sample(pid: int = 7, nbytes: int = 1000, exe: str = "/bin/x", cmdline: list[str] | None = None,
           ts: float = 1_795_000_000.0) -> EgressSample:
    """An egress sample of one process; ``cmdline`` pads it to a chosen size."""
    return EgressSample.model_validate({
        "ts": ts, "interval_s": 1.0, "attributed_tx_bytes": nbytes,
        "processes": [{"pid": pid, "exe": exe, "tx_bytes": nbytes, "cmdline": cmdline or [],
                       "destinations": [{"address": "198.18.0.2", "port": 443, "tx_bytes": nbytes}]}],
    })
