"""Console settings an admin may change at run time, kept in the ``settings`` table."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TypedDict, cast

from sqlalchemy import Connection, text


class ConsoleSettings(TypedDict):
    metrics_requires_token: bool
    session_idle_minutes: int


# name -> default (_check checks each); unknown names are refused, like unknown policy keys.
DEFAULTS: ConsoleSettings = {"metrics_requires_token": False, "session_idle_minutes": 30}


class SettingsError(ValueError):
    """A setting that does not exist or a value it cannot take."""


def _check(name: str, value: object) -> bool | int:
    if name == "metrics_requires_token":
        if not isinstance(value, bool):
            raise SettingsError("metrics_requires_token must be true or false")
        return value
    if name == "session_idle_minutes":
        if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 24 * 60:
            raise SettingsError("session_idle_minutes must be a whole number of minutes, 1..1440")
        return value
    raise SettingsError(f"unknown setting {name!r}; known: {', '.join(sorted(DEFAULTS))}")


def read(conn: Connection) -> ConsoleSettings:
    out: dict[str, object] = dict(DEFAULTS)
    for name, value in conn.execute(text("SELECT name, value FROM settings")):
        if name in DEFAULTS:
            out[name] = json.loads(value)  # written by update(), after _check
    return cast(ConsoleSettings, out)


def describe(before: ConsoleSettings, changes: Mapping[str, object]) -> str:
    """What changed, for the audit trail: ``name: old -> new`` for each setting that did."""
    said = [f"{n}: {json.dumps(before.get(n))} -> {json.dumps(v)}" for n, v in sorted(changes.items())
            if before.get(n) != v]
    return "; ".join(said) or "nothing changed"


def update(conn: Connection, changes: Mapping[str, object]) -> None:
    checked = {name: _check(name, value) for name, value in changes.items()}
    for name, value in checked.items():
        conn.execute(text("INSERT INTO settings(name, value) VALUES (:n, :v) "
                          "ON CONFLICT (name) DO UPDATE SET value = excluded.value"), {"n": name, "v": json.dumps(value)})
