"""What the agent says about itself, typed: the health it beats (``Heartbeat``, ``health.json``, ``status``),
the weights it watches, its features at start (``agent_started``)."""

from __future__ import annotations

import os
from typing import TypedDict

from weightwarden.agent.attribution.sampler import Sampler
from weightwarden.agent.enforce.budget import BudgetUsageJson
from weightwarden.jsontypes import JsonObject


class WeightsJson(TypedDict):
    """The weight files the policy names, as last measured (events.WeightsTotal)."""

    paths: list[str]
    canaries: list[str]
    files: int
    total_bytes: int
    measured_at: float


class FileWatchJson(TypedDict):
    mode: str
    detail: str
    dropped: int


class FeatureJson(TypedDict):
    ok: bool
    detail: str


class Health(TypedDict):
    """One heartbeat's data (events.Heartbeat); ``health.json`` adds the time it was written."""

    uptime_s: float
    sampler_lag_s: float
    stuck_s: float
    drift_count: int
    event_queue: int
    events_dropped: int
    spool_depth: int
    events_replayed: int
    policy: str
    policy_digest: str
    backend: str
    rules_in_force: bool
    attribution: str
    sensor: JsonObject  # events.SensorState as JSON
    caps: int
    budgets: dict[str, BudgetUsageJson]
    weights: WeightsJson | None
    file_watch: FileWatchJson


def sensor_json(sampler: Sampler | None) -> JsonObject:
    """What the kernel sensor sees (events.SensorState as JSON); no sampler: attribution could not start."""
    if sampler is None:
        return {"path": "none", "kernel": os.uname().release, "degraded": True,
                "detail": "attribution could not start (see agent_started's features)"}
    return sampler.sensor().model_dump(mode="json", exclude_none=True)
