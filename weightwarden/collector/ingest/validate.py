"""Validate one MQTT message: size, topic, schema, and that the topic's host is the sender's.

Anything that fails is a Rejection with a reason; it goes to the dead-letter
table and is counted, never stored as an event and never an exception. The
event models (weightwarden.events) check every field's type and range while
parsing, so an event that passes is safe for every later stage.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pydantic import ValidationError

from weightwarden.collector.store.database import BACKDATED_S, backdated_by
from weightwarden.events import Event, parse_event_json

MAX_PAYLOAD = 1 << 20
# An event dated more than BACKDATED_S before it arrived is backdated: a spool delivered after a long
# outage, a clock set back, or someone hiding an event in the past. It is stored and judged like any
# other, and flagged: counted (``backdated`` in stats and /metrics), and its alert says so
# (``backdated`` in the API and `alerts list --json`, a badge in the console). Alerts sort by when the
# collector raised them, and retention counts from when an event was stored, so a backdated event
# neither sinks out of sight nor is purged on arrival.
TOPIC = re.compile(r"^weightwarden/v1/([A-Za-z0-9][A-Za-z0-9_.-]{0,62})/([a-z_]{1,40})$")


@dataclass(frozen=True)
class Rejection:
    reason: str
    code: str  # counter name


def validate(topic: str, payload: bytes) -> Event | Rejection:
    if len(payload) > MAX_PAYLOAD:
        return Rejection(f"payload of {len(payload)} bytes is over the {MAX_PAYLOAD}-byte limit", "rejected_size")
    m = TOPIC.match(topic)
    if not m:
        return Rejection(f"topic {topic[:120]!r} is not weightwarden/v1/<host>/<type>", "rejected_topic")
    try:
        event = parse_event_json(payload)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        if first["type"] == "json_invalid":
            return Rejection(f"not JSON: {first['msg']}"[:400], "rejected_json")
        if first["type"] in ("union_tag_invalid", "union_tag_not_found", "model_type", "model_attributes_type"):
            return Rejection(f"schema: {first['msg']}"[:400], "rejected_schema")
        where = ".".join(str(p) for p in first["loc"][1:])
        return Rejection(f"schema: {where}: {first['msg']}"[:400], "rejected_schema")
    except (ValueError, RecursionError, MemoryError) as exc:  # belt and braces: no input may raise
        return Rejection(f"not JSON: {type(exc).__name__}"[:400], "rejected_json")
    if event.host != m.group(1):
        return Rejection(f"forged host: topic says {m.group(1)!r}, event says {event.host!r}", "rejected_host")
    if event.type != m.group(2):
        return Rejection(f"topic type {m.group(2)!r} is not the event's {event.type!r}", "rejected_topic")
    return event


def count_backdated(events: list[Event], now: float) -> int:
    return sum(1 for ev in events if backdated_by(ev.ts, now))


__all__ = ["BACKDATED_S", "MAX_PAYLOAD", "Rejection", "backdated_by", "count_backdated", "validate"]
