"""A labelled scenario and its annotations, as fail2ban annotates its sample logs.

A theft scenario must raise at least one alert matching each of its ``must`` lines (kind,
severity at least, and evidence naming the process, a weight file and the destination);
a benign one must raise nothing high or critical, and nothing its ``must_not`` lists.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from tests.collector.scenarios import Stream

LEVELS = ["low", "medium", "high", "critical"]


@dataclass(frozen=True)
class Expect:
    kinds: tuple[str, ...]
    at_least: str = "high"
    process: str | None = None  # the process name the evidence must name
    file: str | None = None  # a weight file the evidence must name (substring)
    destination: str | None = None  # an address the evidence must name (substring)
    container: bool = False  # the evidence must name the sender's container

    def matches(self, alert: dict[str, Any]) -> bool:
        if alert["kind"] not in self.kinds or LEVELS.index(alert["severity"]) < LEVELS.index(self.at_least):
            return False
        ev = alert["evidence"]
        proc = ev.get("process") or {}
        if self.process and proc.get("name") != self.process:
            return False
        if self.process and proc.get("pid") is None:
            return False
        if self.file and not any(self.file in f for f in ev.get("files") or []):
            return False
        if self.destination and not any(self.destination in str(d.get("address")) for d in ev.get("destinations") or []):
            return False
        return not (self.container and not proc.get("container"))

    def __str__(self) -> str:
        who = f" by {self.process}" if self.process else ""
        return f"{'|'.join(self.kinds)} >= {self.at_least}{who}"


@dataclass
class Scenario:
    name: str
    label: Literal["theft", "benign"]
    route: str  # what it exercises, in a few words
    build: Callable[[], list[Stream]] | None = None  # recorded scenarios
    must: list[Expect] = field(default_factory=list)
    must_not: list[str] = field(default_factory=list)  # kinds that must not appear at all
    stolen_at: float | None = None  # when the first stolen byte left (recorded scenarios)
    kind: Literal["recorded", "real"] = "recorded"


@dataclass
class Verdict:
    scenario: Scenario
    alerts: list[dict[str, Any]]
    problems: list[str]
    seconds_to_alert: float | None = None

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def top(self) -> str:
        worst = max(self.alerts, key=lambda a: LEVELS.index(a["severity"]), default=None)
        return f"{worst['kind']} {worst['severity']}" if worst else "no alert"


def judge(sc: Scenario, alerts: list[dict[str, Any]]) -> list[str]:
    problems = []
    for exp in sc.must:
        if not any(exp.matches(a) for a in alerts):
            problems.append(f"missing {exp}")
    if sc.label == "benign":
        for a in alerts:
            if a["severity"] in ("high", "critical"):
                problems.append(f"false alarm: {a['kind']} {a['severity']} ({a['title']})")
    for a in alerts:
        if a["kind"] in sc.must_not:
            problems.append(f"forbidden {a['kind']} {a['severity']}")
    return problems


def first_match(sc: Scenario, alerts: list[dict[str, Any]]) -> bool:
    """Has every ``must`` line been met (the moment a theft counts as detected)?"""
    return bool(sc.must) and all(any(exp.matches(a) for a in alerts) for exp in sc.must)
