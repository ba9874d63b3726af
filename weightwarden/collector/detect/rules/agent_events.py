"""The agent's one-event alerts, as a table: canary reads, caps, budgets, drift, enforcement errors,
thresholds and dropped events. Each row is a rule (detect.event_rule): the key's first part, the
alert kind, the event type, and how the event reads as an alert.
"""

from __future__ import annotations

from weightwarden.collector.detect.common import Draft, clock
from weightwarden.collector.detect.event_rule import EventRule, host_evidence, who, who_text
from weightwarden.collector.detect.registry import register
from weightwarden.events import (
    BudgetExhausted,
    CanaryRead,
    CapHit,
    EnforcementDrift,
    EnforcementError,
    Event,
    EventsDropped,
    ThresholdCrossed,
)
from weightwarden.units import format_duration, format_rate, format_size


def canary(rule: EventRule, ev: Event) -> Draft | None:
    d = ev.data
    assert isinstance(d, CanaryRead)
    return Draft(rule.key(ev.host, d.path, d.pid), ev.host, "canary_read", "critical",
                 f"Canary file opened on {ev.host} by {d.name or '?'} (pid {d.pid})",
                 f"{who_text(d)} opened {d.path} on {ev.host} at {clock(ev.ts)}. Nothing legitimate reads this file: "
                 f"it is a honey file placed among the weights to catch whoever is looking through them.",
                 {"process": who(d), "files": [d.path], "destinations": [], "events": [ev.id]}, ev.ts, ev.ts)


def cap_hit(rule: EventRule, ev: Event) -> Draft | None:
    d = ev.data
    assert isinstance(d, CapHit)
    return Draft(rule.key(ev.host, d.cap), ev.host, "cap_hit", "low" if d.action == "shape" else "medium",
                 f"Cap {d.cap!r} reached on {ev.host}",
                 f"Egress matched by cap {d.cap!r} on {ev.host} ran at {format_rate(d.observed_bps)} "
                 f"against a cap of {format_rate(d.rate_bps)} ({d.action}). The cap is doing "
                 f"its job; look at which process is pushing against it.",
                 host_evidence(d, ev), ev.ts, ev.ts)


def budget(rule: EventRule, ev: Event) -> Draft | None:
    d = ev.data
    assert isinstance(d, BudgetExhausted)
    return Draft(rule.key(ev.host, d.budget), ev.host, "budget_exhausted", "high",
                 f"Egress budget {d.budget!r} exhausted on {ev.host}",
                 f"{ev.host} sent {format_size(d.used_bytes)} of non-allowlisted egress within "
                 f"{format_duration(d.window_s)}, over its budget of {format_size(d.limit_bytes)}; action: {d.action}.",
                 host_evidence(d, ev), ev.ts, ev.ts)


def drift(rule: EventRule, ev: Event) -> Draft | None:
    d = ev.data
    assert isinstance(d, EnforcementDrift)
    return Draft(rule.key(ev.host), ev.host, "enforcement_drift", "high", f"Upload caps tampered with on {ev.host}",
                 f"The kernel rules enforcing {ev.host}'s upload caps changed behind the agent's back "
                 f"({'; '.join(d.drift)}). The agent {'restored them' if d.restored else 'could not restore them'}. "
                 f"Someone with root on the host removed or altered them.",
                 host_evidence(d, ev), ev.ts, ev.ts)


def enforce_error(rule: EventRule, ev: Event) -> Draft | None:
    d = ev.data
    assert isinstance(d, EnforcementError)
    return Draft(rule.key(ev.host), ev.host, "enforcement_error", "medium", f"Caps not enforced on {ev.host}",
                 f"The agent on {ev.host} could not apply its policy: {d.error}.", host_evidence(d, ev), ev.ts, ev.ts)


def threshold(rule: EventRule, ev: Event) -> Draft | None:
    d = ev.data
    assert isinstance(d, ThresholdCrossed)
    p = d.process
    return Draft(rule.key(ev.host, d.threshold, p.pid), ev.host, "threshold_crossed", d.severity,
                 f"{p.name or '?'} (pid {p.pid}) crossed threshold {d.threshold!r} on {ev.host}",
                 f"{who_text(p)} sent {format_size(d.bytes_in_window)} within {format_duration(d.window_s)} on "
                 f"{ev.host}, over the policy's threshold of {format_size(d.limit_bytes)}.",
                 {"process": who(p), "files": [],
                  "destinations": [x.model_dump(mode="json", exclude_none=True) for x in p.destinations],
                  "events": [ev.id]}, ev.ts, ev.ts)


def dropped(rule: EventRule, ev: Event) -> Draft | None:
    d = ev.data
    assert isinstance(d, EventsDropped)
    ranges = [list(r) for r in d.seq_ranges[:10]]
    return Draft(rule.key(ev.host), ev.host, "events_dropped", "low", f"Agent on {ev.host} dropped events",
                 f"The agent on {ev.host} dropped {d.dropped if d.dropped is not None else 'an unknown number of'}"
                 f" events ({d.reason}); sequence ranges {ranges}{' …' if len(d.seq_ranges) > 10 else ''}. Their "
                 f"summary: {d.egress_summary.model_dump() if d.egress_summary else 'none'}.",
                 host_evidence(d, ev), ev.ts, ev.ts)


RULES = [register(r) for r in (
    EventRule("canary", "canary_read", CanaryRead, canary),
    EventRule("cap", "cap_hit", CapHit, cap_hit),
    EventRule("budget", "budget_exhausted", BudgetExhausted, budget),
    EventRule("drift", "enforcement_drift", EnforcementDrift, drift),
    EventRule("enforce-error", "enforcement_error", EnforcementError, enforce_error),
    EventRule("threshold", "threshold_crossed", ThresholdCrossed, threshold),
    EventRule("dropped", "events_dropped", EventsDropped, dropped),
)]
