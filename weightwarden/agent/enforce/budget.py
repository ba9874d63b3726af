"""Byte budgets over a rolling window, and per-process thresholds. Pure logic.

Bytes are kept in fixed buckets (1/60 of the window), so a 24 h window costs
60 numbers; the state serialises to JSON so it survives agent restarts.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TypedDict

from weightwarden.agent.policy.model import Budget, Threshold

BUCKETS = 60


@dataclass
class RollingWindow:
    window: float
    buckets: deque[tuple[float, int]] = field(default_factory=deque)
    # The sum of the buckets, kept as they come and go: total() runs per process per sample (and a
    # day's replay in policy simulate calls it millions of times), so it must not re-add 60 numbers.
    _sum: int = field(default=0, init=False, repr=False, compare=False)

    _width: float = field(default=0.0, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._sum = sum(n for _, n in self.buckets)
        self._width = self.window / BUCKETS

    @property
    def width(self) -> float:
        return self._width

    def add(self, now: float, n: int) -> None:
        if n <= 0:
            return
        start = now - (now % self._width)
        if self.buckets and self.buckets[-1][0] == start:
            self.buckets[-1] = (start, self.buckets[-1][1] + n)
        else:
            self.buckets.append((start, n))
        self._sum += n
        self._expire(now)

    def _expire(self, now: float) -> None:
        while self.buckets and self.buckets[0][0] + self._width <= now - self.window:
            self._sum -= self.buckets.popleft()[1]

    def total(self, now: float) -> int:
        self._expire(now)
        return self._sum

    def to_json(self) -> list[list[float]]:
        return [[s, n] for s, n in self.buckets]

    @classmethod
    def from_json(cls, window: float, data: object) -> RollingWindow:
        w = cls(window)
        if isinstance(data, list):
            for item in data:
                if isinstance(item, list) and len(item) == 2:
                    w.buckets.append((float(item[0]), int(item[1])))
        w._sum = sum(n for _, n in w.buckets)
        return w


class SavedBudget(TypedDict):
    """One budget in ``budgets.json``: its window, its buckets, whether it ran out."""

    window: float
    buckets: list[list[float]]
    exhausted: bool


class BudgetUsageJson(TypedDict):
    used_bytes: int
    limit_bytes: int
    exhausted: bool
    action: str


@dataclass
class BudgetState:
    name: str
    limit: int
    window: RollingWindow
    action: str
    exhausted: bool = False


class BudgetBook:
    """All budgets of a policy; ``add`` returns the budgets that just ran out."""

    def __init__(self, budgets: list[Budget], saved: Mapping[str, object] | None = None) -> None:
        saved = saved or {}
        self.budgets: dict[str, BudgetState] = {}
        for b in budgets:
            prev = saved.get(b.name)
            if not isinstance(prev, dict):
                prev = {}
            window = RollingWindow.from_json(b.window, prev.get("buckets") if prev.get("window") == b.window else [])
            self.budgets[b.name] = BudgetState(b.name, b.bytes, window, b.action, bool(prev.get("exhausted")))

    def add(self, now: float, n: int) -> list[BudgetState]:
        newly = []
        for state in self.budgets.values():
            state.window.add(now, n)
            over = state.window.total(now) >= state.limit
            if over and not state.exhausted:
                newly.append(state)
            state.exhausted = over
        return newly

    def blocking(self) -> list[str]:
        return sorted(s.name for s in self.budgets.values() if s.exhausted and s.action == "block")

    def to_json(self) -> dict[str, SavedBudget]:
        return {
            name: {"window": s.window.window, "buckets": s.window.to_json(), "exhausted": s.exhausted}
            for name, s in self.budgets.items()
        }

    def usage(self, now: float) -> dict[str, BudgetUsageJson]:
        return {name: {"used_bytes": s.window.total(now), "limit_bytes": s.limit, "exhausted": s.exhausted,
                       "action": s.action} for name, s in self.budgets.items()}


ProcKey = tuple[int, float | None]  # (pid, start time): one process, even after its pid is reused
MAX_WINDOWS = 50_000


class ThresholdWatch:
    """Per-process sums over each threshold's window; fires once per crossing.

    Processes are keyed by (pid, start time), so a recycled pid starts from nothing
    instead of inheriting another process's bytes. A window is forgotten once it
    holds nothing (its bytes aged out) or its process is gone: a dead process cannot
    send more, so it cannot cross later. At most MAX_WINDOWS are kept (least
    recently updated go first), whatever the host does.
    """

    def __init__(self, thresholds: list[Threshold]) -> None:
        self.thresholds = thresholds
        self._windows: dict[tuple[str, ProcKey], RollingWindow] = {}
        self._updated: dict[tuple[str, ProcKey], float] = {}
        self._fired: set[tuple[str, ProcKey]] = set()

    def add(self, now: float, proc: ProcKey, n: int) -> list[tuple[Threshold, int]]:
        """Returns (threshold, bytes in window) for each threshold this process just crossed."""
        crossed = []
        for th in self.thresholds:
            key = (th.name, proc)
            window = self._windows.get(key)
            if window is None:  # not setdefault: that would build a window on every call
                window = self._windows[key] = RollingWindow(th.window)
            window.add(now, n)
            self._updated[key] = now
            total = window.total(now)
            if total >= th.bytes and key not in self._fired:
                self._fired.add(key)
                crossed.append((th, total))
            elif total < th.bytes:
                self._fired.discard(key)
        return crossed

    def forget(self, now: float, alive: Callable[[ProcKey], bool]) -> None:
        """Drop windows that are empty or whose process is gone; keep the count bounded."""
        for key in list(self._windows):
            # Empty, or its process gone (one that sent in this sample is alive).
            if self._windows[key].total(now) == 0 or (self._updated[key] < now and not alive(key[1])):
                self._drop(key)
        if len(self._windows) > MAX_WINDOWS:
            for key in sorted(self._updated, key=self._updated.__getitem__)[:len(self._windows) - MAX_WINDOWS]:
                self._drop(key)

    def _drop(self, key: tuple[str, ProcKey]) -> None:
        self._windows.pop(key, None)
        self._updated.pop(key, None)
        self._fired.discard(key)

    def __len__(self) -> int:
        return len(self._windows)
