"""What ``policy simulate`` reports, typed: per cap, per allowlist entry and budget, the alerts the agent
would have sent (``--json`` prints it as is; ``policy.commands.render_simulation`` as a table)."""

from __future__ import annotations

from typing import NotRequired, TypedDict

from weightwarden.agent.policy.explain import TimeToExfiltrate
from weightwarden.jsontypes import JsonValue


class CapReport(TypedDict):
    """One cap in a simulation's report."""

    name: str
    action: str
    rate_bps: int
    matched_bytes: int
    matched_wire_bytes: int
    peak_bps: int
    peak_at: float | None
    held_back_s: float
    max_delay_s: float
    max_delay_at: float | None
    first_held_at: float | None
    blocked_bytes: int
    backlog_at_end_bytes: int


class Alert(TypedDict):
    """An event the agent would have sent: threshold_crossed, budget_exhausted or cap_hit."""

    type: str
    name: str
    ts: float
    severity: NotRequired[str]
    bytes_in_window: NotRequired[int]
    process: NotRequired[JsonValue]
    pid: NotRequired[int]
    action: NotRequired[str]
    used_bytes: NotRequired[int]
    limit_bytes: NotRequired[int]
    rate_bps: NotRequired[int]
    observed_bps: NotRequired[int]


class AllowReport(TypedDict):
    destination: str
    bytes: int


class BudgetReport(TypedDict):
    name: str
    limit_bytes: int
    window_s: float
    action: str
    peak_used_bytes: int


class SimReport(TypedDict):
    """``policy simulate --json``; the command adds what it read (hosts, skipped lines) and the time to
    exfiltrate."""

    policy: str
    samples: int
    from_ts: float | None
    to_ts: float | None
    duration_s: float
    total_bytes: int
    caps: list[CapReport]
    allowlisted_bytes: int
    allow: list[AllowReport]
    unmatched_bytes: int
    budget_blocked_bytes: int
    uncovered_bytes: int
    budgets: list[BudgetReport]
    alerts: list[Alert]
    notes: list[str]
    hosts: NotRequired[list[str]]
    skipped_lines: NotRequired[int]
    skipped: NotRequired[list[str]]
    time_to_exfiltrate: NotRequired[TimeToExfiltrate | None]
