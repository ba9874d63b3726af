"""What changes between two policies, for which traffic, in words. Pure.

Each change is said as what happens to the traffic it concerns: a removed
allowlist entry is followed to the cap that now takes its traffic (through the
same compiled match the kernel plan uses), a rate change says how much faster
or slower, and the time to move the weights off is given before and after.
"""

from __future__ import annotations

from typing import NotRequired, TypedDict

from weightwarden.agent.policy.explain import Explanation, describe_dest, describe_who, explain
from weightwarden.agent.policy.match import Compiled, Flow, Verdict, classify, compile_policy
from weightwarden.agent.policy.model import Budget, Cap, Destination, Policy, Threshold
from weightwarden.units import format_duration, format_rate_both, format_size


def _key(d: Destination) -> tuple[str, tuple[int, ...]]:
    return (d.cidr or f"host {d.host}", tuple(sorted(d.ports)))


def _flow_to(d: Destination) -> Flow | None:
    """A flow to a destination, for following it through a policy (hosts have no address here)."""
    if not d.cidr:
        return None
    net = d.cidr.split("/")[0]
    return Flow(net, d.ports[0] if d.ports else None)


def _flow_of(cap: Cap) -> Flow:
    m = cap.match
    dest = next((d for d in m.destinations if d.cidr), None)
    return Flow(dest.cidr.split("/")[0] if dest and dest.cidr else None, dest.ports[0] if dest and dest.ports else None,
                m.uids[0] if m.uids else None, m.executables[0] if m.executables else None,
                m.cgroups[0] if m.cgroups else None)


def fate(compiled: Compiled, verdict: Verdict) -> str:
    if verdict.allowed:
        return "allowlisted (measured, never capped)"
    if verdict.cap is not None:
        cap = compiled.caps[verdict.cap].cap
        if cap.action == "block":
            return f"blocked by cap {cap.name!r}"
        return f"shaped by cap {cap.name!r} to {format_rate_both(cap.rate)}"
    if verdict.alerts:
        names = ", ".join(repr(compiled.caps[i].cap.name) for i in verdict.alerts)
        return f"not limited, only counted by alert cap {names}"
    return "not limited by any cap (link speed)"


def _cap_text(cap: Cap) -> str:
    if cap.action == "block":
        return "block"
    return f"{cap.action} at {format_rate_both(cap.rate)}"


def _cap_changes(old: Cap, new: Cap) -> list[str]:
    out = []
    if old.action != new.action or old.rate != new.rate:
        line = f"{_cap_text(old)} -> {_cap_text(new)}"
        if old.action == new.action == "shape" and old.rate != new.rate:
            factor = new.rate / old.rate
            line += f" ({factor:.3g}x faster)" if factor > 1 else f" ({1 / factor:.3g}x slower)"
        out.append(line)
    if old.burst != new.burst:
        out.append(f"burst {format_size(old.burst) if old.burst else 'default'} -> "
                   f"{format_size(new.burst) if new.burst else 'default'}")
    if old.match != new.match:
        out.append(f"now matches {describe_who(new)} (was {describe_who(old)})")
    return out


class Fastest(TypedDict):
    min_seconds: float
    min_time: str
    min_seconds_not_allowlisted: float
    min_time_not_allowlisted: str


class FastestChange(TypedDict):
    before: Fastest
    after: Fastest


class PolicyDiff(TypedDict):
    """``policy diff --json``: each change in words, and the time to exfiltrate before and after."""

    old: str
    new: str
    changes: list[str]
    weights_bytes: NotRequired[int]
    time_to_exfiltrate: NotRequired[FastestChange]


def _fastest(e: Explanation) -> Fastest:
    return {"min_seconds": e["min_seconds"], "min_time": e["min_time"],
            "min_seconds_not_allowlisted": e["min_seconds_not_allowlisted"],
            "min_time_not_allowlisted": e["min_time_not_allowlisted"]}


def diff(old: Policy, new: Policy, size: int | None = None) -> PolicyDiff:
    changes: list[str] = []
    co, cn = compile_policy(old), compile_policy(new)
    if old.metadata.name != new.metadata.name:
        changes.append(f"Name: {old.metadata.name!r} -> {new.metadata.name!r}.")
    if old.spec.interfaces != new.spec.interfaces:
        ifs_was, ifs_now = (", ".join(i) or "every non-loopback interface" for i in (old.spec.interfaces, new.spec.interfaces))
        changes.append(f"Interfaces: {ifs_was} -> {ifs_now}.")

    old_allow = {_key(d): d for d in old.spec.allow}
    new_allow = {_key(d): d for d in new.spec.allow}
    for key, d in old_allow.items():
        if key not in new_allow:
            flow = _flow_to(d)
            after = fate(cn, classify(cn, flow)) if flow else "subject to the caps (a hostname: resolved at run time)"
            changes.append(f"Traffic to {describe_dest(d)} is no longer allowlisted: it is now {after}.")
    for key, d in new_allow.items():
        if key not in old_allow:
            flow = _flow_to(d)
            before = fate(co, classify(co, flow)) if flow else "subject to the caps"
            changes.append(f"Traffic to {describe_dest(d)} is now allowlisted (measured, never capped); it was {before}.")

    old_caps = {c.name: c for c in old.spec.caps}
    new_caps = {c.name: c for c in new.spec.caps}
    for name, cap in old_caps.items():
        if name not in new_caps:
            after = fate(cn, classify(cn, _flow_of(cap)))
            changes.append(f"Cap {name!r} ({_cap_text(cap)}, {describe_who(cap)}) is removed: that traffic is now {after}.")
    for name, cap in new_caps.items():
        if name not in old_caps:
            before = fate(co, classify(co, _flow_of(cap)))
            changes.append(f"Cap {name!r} is new: traffic from {describe_who(cap)} is {_cap_text(cap)} (it was {before}).")
        else:
            for change in _cap_changes(old_caps[name], cap):
                changes.append(f"Cap {name!r} ({describe_who(cap)}): {change}.")
    common_old = [c.name for c in old.spec.caps if c.name in new_caps]
    common_new = [c.name for c in new.spec.caps if c.name in old_caps]
    if common_old != common_new:
        changes.append(f"Cap order: {', '.join(common_old)} -> {', '.join(common_new)} (the first matching shape or "
                       "block cap takes the traffic).")

    for kind in ("budgets", "thresholds"):
        was = {b.name: b for b in getattr(old.spec, kind)}
        now = {b.name: b for b in getattr(new.spec, kind)}
        label = kind[:-1].capitalize()
        for name in sorted(was.keys() - now.keys()):
            changes.append(f"{label} {name!r} is removed.")
        for name in sorted(now.keys() - was.keys()):
            changes.append(f"{label} {name!r} is new: {_limit(now[name])}.")
        for name in sorted(was.keys() & now.keys()):
            if was[name] != now[name]:
                changes.append(f"{label} {name!r}: {_limit(was[name])} -> {_limit(now[name])}.")

    for kind in ("paths", "canaries"):
        b, a = getattr(old.spec.weights, kind), getattr(new.spec.weights, kind)
        for path in a:
            if path not in b:
                changes.append(f"Weights {kind}: {path} is now watched.")
        for path in b:
            if path not in a:
                changes.append(f"Weights {kind}: {path} is no longer watched.")
    if old.spec.interval != new.spec.interval:
        changes.append(f"Reconciliation interval: {format_duration(old.spec.interval)} -> "
                       f"{format_duration(new.spec.interval)}.")

    out: PolicyDiff = {"old": old.metadata.name, "new": new.metadata.name, "changes": changes}
    if size:
        out["weights_bytes"] = size
        out["time_to_exfiltrate"] = {"before": _fastest(explain(old, size)), "after": _fastest(explain(new, size))}
    return out


def _limit(item: Budget | Threshold) -> str:
    if isinstance(item, Budget):
        return f"{format_size(item.bytes)} per {format_duration(item.window)}, then {item.action}"
    return f"{format_size(item.bytes)} within {format_duration(item.window)}, {item.severity}"
