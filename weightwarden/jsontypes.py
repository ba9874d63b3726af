"""JSON as a type: for data that is JSON by nature (evidence blobs stored as JSON, API output),
where a dataclass or a TypedDict would only restate "any JSON". Typed data inside the processes
uses real structures; this alias is for the free-form rest."""

from __future__ import annotations

from typing import TypeAlias

JsonValue: TypeAlias = str | int | float | bool | None | list["JsonValue"] | dict[str, "JsonValue"]
JsonObject: TypeAlias = dict[str, JsonValue]

__all__ = ["JsonObject", "JsonValue"]
