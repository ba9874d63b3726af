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

from weightwarden.events import Event, parse_event_json

MAX_PAYLOAD = 1 << 20
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


__all__ = ["MAX_PAYLOAD", "Rejection", "validate"]
