"""Reading stored JSON back (evidence, notifications, events' data): the shape a reader expects, or an
error naming what was there instead. For JSON the collector wrote itself; typed data stays typed."""

from __future__ import annotations

from weightwarden.jsontypes import JsonObject, JsonValue


def json_int(value: JsonValue) -> int:
    """A number; anything else is an error naming it."""
    if isinstance(value, (int, float, str)):
        return int(value)
    raise TypeError(f"expected a number, not {value!r}")


def json_list(value: JsonValue) -> list[JsonValue]:
    """A list; absent (None) is empty; anything else is an error naming it."""
    if value is None:
        return []
    if isinstance(value, list):
        return value
    raise TypeError(f"expected a list, not {value!r}")


def as_object(value: JsonValue) -> JsonObject:
    """An object, or an empty one where the document has none (or something else) in its place."""
    return value if isinstance(value, dict) else {}


def as_list(value: JsonValue) -> list[JsonValue]:
    """A list, or an empty one where the document has none (or something else) in its place."""
    return value if isinstance(value, list) else []


__all__ = ["as_list", "as_object", "json_int", "json_list"]
