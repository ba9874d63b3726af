"""The two models ``policy simulate`` replays traffic through: a shaping cap as a fluid queue draining at
its rate, and payload bytes as the link-layer bytes the kernel's caps count (see simulate.py)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from weightwarden.agent.policy.simreport import CapReport

ETH_HEADER = 14


@dataclass(frozen=True)
class LinkModel:
    mtu: int = 1500

    def factor(self, ipv6: bool) -> float:
        ip_tcp = (40 if ipv6 else 20) + 20 + 12  # IP + TCP + timestamps option
        mss = self.mtu - ip_tcp
        return (self.mtu + ETH_HEADER) / mss

    def describe(self) -> str:
        v4 = self.factor(False)
        return (f"samples count transport payload, caps count link-layer frames: payload is scaled by "
                f"{self.mtu + ETH_HEADER}/{self.mtu - 52} = {v4:.4f} (IPv4, TCP, MTU {self.mtu}; "
                f"{self.factor(True):.4f} for IPv6); budgets are modelled as payload")


@dataclass
class CapSim:
    name: str
    action: str
    rate_bps: int
    matched_bytes: int = 0  # transport payload
    matched_wire_bytes: float = 0.0
    peak_bps: float = 0.0  # offered, link layer, averaged over one sample interval
    peak_at: float | None = None
    held_back_s: float = 0.0
    max_delay_s: float = 0.0
    max_delay_at: float | None = None
    blocked_bytes: int = 0
    first_held_at: float | None = None
    backlog: float = 0.0  # wire bytes queued
    window_bytes: float = 0.0  # what the kernel's counter would show in this enforcement interval
    last_hit: float = -math.inf

    def queue(self, ts: float, wire: float, dt: float) -> float:
        """Offer ``wire`` bytes over ``dt`` seconds; returns the bytes that left."""
        r = self.rate_bps / 8.0
        q0 = self.backlog
        arrive = wire / dt
        if q0 <= 0 and arrive <= r:
            bind, q1 = 0.0, 0.0
        elif arrive >= r:
            bind, q1 = dt, q0 + wire - r * dt
        else:
            empty_after = q0 / (r - arrive)
            bind, q1 = (dt, q0 - (r - arrive) * dt) if empty_after >= dt else (empty_after, 0.0)
        if bind > 0 and self.first_held_at is None:
            self.first_held_at = ts - dt
        self.held_back_s += bind
        delay = max(q0, q1) / r
        if delay > self.max_delay_s:
            self.max_delay_s, self.max_delay_at = delay, ts
        self.backlog = q1
        return q0 + wire - q1

    def report(self) -> CapReport:
        drain = self.backlog / (self.rate_bps / 8.0) if self.action == "shape" and self.rate_bps else 0.0
        return {
            "name": self.name, "action": self.action, "rate_bps": self.rate_bps,
            "matched_bytes": self.matched_bytes, "matched_wire_bytes": round(self.matched_wire_bytes),
            "peak_bps": round(self.peak_bps), "peak_at": self.peak_at,
            # traffic still queued when the samples end is held back until it drains
            "held_back_s": round(self.held_back_s + drain, 3), "max_delay_s": round(self.max_delay_s, 3),
            "max_delay_at": self.max_delay_at, "first_held_at": self.first_held_at,
            "blocked_bytes": self.blocked_bytes, "backlog_at_end_bytes": round(self.backlog),
        }
