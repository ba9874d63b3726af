"""Pure byte accounting: monotonic per-flow totals in, per-process deltas out.

No I/O here. A flow is anything with a monotonic byte total (a TCP socket by
cookie, a UDP conntrack flow by tuple); the ledger remembers what it already
credited, so each byte is credited once, to the owner known at that time.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Hashable
from dataclasses import dataclass, field

Dest = tuple[str, int]


@dataclass(slots=True)
class FlowState:
    owner: int | None
    counted: int
    dest: Dest
    protocol: str | None = None
    accepted: bool | None = None


@dataclass(slots=True)
class Interval:
    """Bytes credited since the last ``take_interval``."""

    by_owner: dict[int, dict[Dest, int]] = field(default_factory=dict)
    unowned: int = 0
    # (owner, dest) -> (protocol, accepted, flows credited): what else we know of those bytes
    meta: dict[tuple[int, Dest], tuple[str | None, bool | None, int]] = field(default_factory=dict)

    @property
    def attributed(self) -> int:
        return sum(sum(d.values()) for d in self.by_owner.values())


class Ledger:
    def __init__(self) -> None:
        self.flows: dict[Hashable, FlowState] = {}
        self._by_owner: defaultdict[int, defaultdict[Dest, int]] = defaultdict(lambda: defaultdict(int))
        self._unowned = 0
        self._meta: dict[tuple[int, Dest], tuple[str | None, bool | None, set[Hashable]]] = {}

    def baseline(self, key: Hashable, total: int, dest: Dest, owner: int | None) -> None:
        """A flow that predates measurement: its past bytes are not this interval's."""
        self.flows[key] = FlowState(owner, total, dest)

    def _credit(self, state: FlowState, total: int, key: Hashable = None) -> int:
        # A total below what we counted means the counter was reset or reused:
        # count it from zero rather than going negative.
        delta = total - state.counted if total >= state.counted else total
        state.counted = total
        if delta:
            if state.owner is None:
                self._unowned += delta
            else:
                self._by_owner[state.owner][state.dest] += delta
                got = self._meta.get((state.owner, state.dest))
                if got is None:
                    self._meta[(state.owner, state.dest)] = (state.protocol, state.accepted, {key})
                else:
                    got[2].add(key)
        return delta

    def update(self, key: Hashable, total: int, dest: Dest, owner: int | None = None,
               protocol: str | None = None, accepted: bool | None = None) -> int:
        """Credit a live flow's growth; a flow first seen now counts from zero."""
        state = self.flows.get(key)
        if state is None:
            state = self.flows[key] = FlowState(owner, 0, dest, protocol, accepted)
        elif owner is not None:
            state.owner = owner
        if accepted is not None:
            state.accepted = accepted
        return self._credit(state, total, key)

    def finish(self, key: Hashable, total: int, dest: Dest, owner: int | None = None,
               protocol: str | None = None, accepted: bool | None = None) -> int:
        """Credit a flow's final total and forget it."""
        delta = self.update(key, total, dest, owner, protocol, accepted)
        del self.flows[key]
        return delta

    def forget(self, keep: set[Hashable]) -> None:
        """Drop flows that vanished without a final total (their bytes were credited already)."""
        for key in [k for k in self.flows if k not in keep]:
            del self.flows[key]

    def take_interval(self) -> Interval:
        out = Interval({o: dict(d) for o, d in self._by_owner.items()}, self._unowned,
                       {k: (p, a, len(keys)) for k, (p, a, keys) in self._meta.items()})
        self._by_owner.clear()
        self._meta = {}
        self._unowned = 0
        return out
