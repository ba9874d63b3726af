"""What a policy does, in words, and how long moving the weights off would take. Pure."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TypedDict

from weightwarden.agent.policy.model import Cap, Destination, Policy
from weightwarden.units import format_duration, format_rate, format_rate_both, format_size


class RouteJson(TypedDict):
    name: str
    description: str
    rate_bps: float | None
    blocked: bool
    seconds: float | None


class Explanation(TypedDict):
    """``policy explain --json``: the policy in words, each route off the host, the fastest of them."""

    policy: str
    weights_bytes: int
    summary: list[str]
    routes: list[RouteJson]
    min_seconds: float
    min_time: str
    min_seconds_not_allowlisted: float
    min_time_not_allowlisted: str


class TimeToExfiltrate(TypedDict):
    weights_bytes: int
    min_seconds: float
    min_time: str
    min_seconds_not_allowlisted: float
    min_time_not_allowlisted: str


@dataclass
class Route:
    name: str
    description: str
    rate_bps: float | None  # None: not limited by us
    blocked: bool
    seconds: float | None  # to move the weights; None: unbounded by policy

    def to_json(self) -> RouteJson:
        return {"name": self.name, "description": self.description, "rate_bps": self.rate_bps,
                "blocked": self.blocked, "seconds": self.seconds}


def weights_size(policy: Policy) -> int:
    """Total bytes under spec.weights.paths on this host (what the agent reports too)."""
    from weightwarden.agent.files.patterns import WeightPaths

    w = policy.spec.weights
    return WeightPaths(list(w.paths), list(w.canaries)).total_size()[1]


def describe_dest(d: Destination) -> str:
    base = d.cidr or f"host {d.host}"
    return base + (f" port {','.join(map(str, d.ports))}" if d.ports else "")


def describe_who(cap: Cap) -> str:
    parts = []
    m = cap.match
    if m.uids:
        parts.append("uid " + ", ".join(map(str, m.uids)))
    if m.executables:
        parts.append("programs " + ", ".join(m.executables))
    if m.cgroups:
        parts.append("cgroups " + ", ".join(m.cgroups))
    if m.containers:
        parts.append("containers " + " or ".join(
            "{" + ", ".join(f"{k}={v}" for k, v in c.model_dump(exclude_none=True).items()) + "}" for c in m.containers))
    who = " and ".join(parts) or "any process"
    to = ("to " + ", ".join(describe_dest(d) for d in m.destinations)) if m.destinations else "to any non-allowlisted destination"
    return f"{who} {to}"


def explain(policy: Policy, size: int, n_interfaces: int = 1) -> Explanation:
    spec = policy.spec
    lines: list[str] = []
    routes: list[Route] = []
    ifaces = ", ".join(spec.interfaces) if spec.interfaces else "every non-loopback interface"
    if not (spec.caps or spec.budgets or spec.thresholds):
        lines.append(f"Monitor only: egress on {ifaces} is measured and reported, nothing is limited.")
    else:
        lines.append(f"Applies to egress on {ifaces}.")
    for dest in spec.allow:
        lines.append(f"Traffic to {describe_dest(dest)} is allowlisted: measured, never capped.")
        routes.append(Route(f"allow:{describe_dest(dest)}", "allowlisted destination", None, False, None))
    for cap in spec.caps:
        who = describe_who(cap)
        if cap.action == "block":
            lines.append(f"Cap {cap.name!r}: traffic from {who} is blocked.")
            routes.append(Route(f"cap:{cap.name}", f"blocked: {who}", 0, True, math.inf))
            continue
        rate = cap.rate * n_interfaces
        verb = "is shaped to" if cap.action == "shape" else "raises an alert above"
        per = " per interface" if n_interfaces > 1 else ""
        lines.append(f"Cap {cap.name!r}: traffic from {who} {verb} {format_rate_both(cap.rate)}{per}.")
        seconds = size * 8 / rate if cap.action == "shape" else None
        routes.append(Route(f"cap:{cap.name}", f"{cap.action}: {who}", rate if cap.action == "shape" else None,
                            False, seconds))
    for budget in spec.budgets:
        what = "then blocked" if budget.action == "block" else "then an alert is raised"
        lines.append(f"Budget {budget.name!r}: at most {format_size(budget.bytes)} of non-allowlisted egress per "
                     f"{format_duration(budget.window)}, {what}.")
    for th in spec.thresholds:
        lines.append(f"Threshold {th.name!r}: a process sending over {format_size(th.bytes)} within "
                     f"{format_duration(th.window)} raises a {th.severity} event.")
    raw = spec.raw_sockets
    allowed = f" except {', '.join(raw.allow)}" if raw.allow else ""
    if raw.action == "kill":
        lines.append(f"Packet sockets (AF_PACKET, AF_XDP): every sender{allowed} is killed in the kernel when it sends "
                     "(before anything leaves where the bpf LSM is enabled; otherwise its first send leaves), and "
                     "reported (raw_socket).")
    else:
        lines.append(f"Packet sockets (AF_PACKET, AF_XDP): every one in use is reported (raw_socket), credited to its "
                     f"process; senders{allowed} raise an alert. Their frames skip caps when they bypass the qdisc.")
    if spec.weights.paths:
        lines.append(f"Weights watched: {', '.join(spec.weights.paths)}.")
    if spec.weights.canaries:
        lines.append(f"Canary files (any read is an incident): {', '.join(spec.weights.canaries)}.")

    shaped_all = any(c.action in ("shape", "block") and not (c.match.uids or c.match.executables or c.match.cgroups
                                                             or c.match.containers or c.match.destinations)
                     for c in spec.caps)
    if not shaped_all:
        routes.append(Route("other", "non-allowlisted traffic matched by no cap", None, False, None))
    blocking = [b for b in spec.budgets if b.action == "block"]
    for route in routes:
        if route.blocked or not blocking or route.name.startswith("allow:"):
            continue
        # A blocking budget bounds every non-allowlisted route: budget per window.
        b = min(blocking, key=lambda b: b.bytes / b.window)
        windows = math.ceil(size / b.bytes) if b.bytes else math.inf
        budget_seconds = (windows - 1) * b.window if windows != math.inf else math.inf
        base = route.seconds or 0.0
        route.seconds = max(base, budget_seconds)
        route.description += f" (bounded by budget {b.name!r})"
    for route in routes:
        when = "unbounded by this policy (link speed)" if route.seconds is None else format_duration(route.seconds)
        route_rate = "" if route.rate_bps is None else f" at {format_rate(route.rate_bps)}"
        lines.append(f"Moving {format_size(size)} via {route.name}{route_rate}: {when}.")
    fastest, fastest_text = _fastest(routes)
    outside = [r for r in routes if not r.name.startswith("allow:")]
    out_seconds, out_text = _fastest(outside)
    return {
        "policy": policy.metadata.name,
        "weights_bytes": size,
        "summary": lines,
        "routes": [r.to_json() for r in routes],
        "min_seconds": fastest,
        "min_time": fastest_text,
        # An allowlisted route is trusted by definition; the question for a policy author is the fastest other one.
        "min_seconds_not_allowlisted": out_seconds,
        "min_time_not_allowlisted": out_text,
    }


def _fastest(routes: list[Route]) -> tuple[float, str]:
    open_routes = [r.name for r in routes if r.seconds is None]
    if open_routes or not routes:
        return 0.0, "limited only by link speed" + (f" (via {open_routes[0]})" if open_routes else "")
    best = min(routes, key=lambda r: r.seconds if r.seconds is not None else math.inf)
    fastest = best.seconds if best.seconds is not None else 0.0
    return fastest, f"{format_duration(fastest)} (via {best.name})"
