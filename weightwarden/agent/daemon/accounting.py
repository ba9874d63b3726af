"""What the kernel's counters say since the enforce loop last looked: bytes per counter (a delta of
monotonic counters, resets guarded), and the caps hit (a block cap that dropped anything, a shape or
alert cap at 90% of its rate over the interval), each said at most once a minute."""

from __future__ import annotations

from weightwarden.agent.enforce.plan import Plan
from weightwarden.agent.kernel.interfaces import counter_delta
from weightwarden.events import CapHit

CAP_HIT_REPEAT_S = 60.0
CAP_HIT_FRACTION = 0.9  # policy simulate follows the same rule (policy/simulate.py)


class CapAccounting:
    def __init__(self) -> None:
        self._last: dict[str, int] = {}  # counter -> bytes at the last look
        self._hit_at: dict[str, float] = {}  # cap -> when it was last said to be hit

    def restart(self) -> None:
        """A table applied afresh starts its counters at zero."""
        self._last = {}

    def deltas(self, counters: dict[str, dict[str, int]]) -> dict[str, int]:
        """Bytes per counter since the last look."""
        out = {}
        for name, c in counters.items():
            out[name] = counter_delta(c["bytes"], self._last.get(name))
            self._last[name] = c["bytes"]
        return out

    def hits(self, plan: Plan, deltas: dict[str, int], now: float, interval: float) -> list[CapHit]:
        found = []
        for slot in plan.slots:
            sent = deltas.get(slot.counter, 0)
            rate = sent * 8 / max(interval, 1e-6)
            hit = (slot.action == "block" and sent > 0) or (slot.action != "block"
                                                             and rate >= CAP_HIT_FRACTION * slot.rate_bps)
            if hit and now - self._hit_at.get(slot.name, 0.0) >= CAP_HIT_REPEAT_S:
                self._hit_at[slot.name] = now
                found.append(CapHit(cap=slot.name, action=slot.action, rate_bps=slot.rate_bps,
                                    observed_bps=round(rate), bytes=sent))
        return found
