"""The interface every detection rule implements, and what the engine hands it.

A rule is one module in ``detect/rules/`` that defines a :class:`Rule` subclass and registers
one instance (``RULE = register(MyRule())``); the registry finds every module there, so adding
a rule touches no other file. The engine (``detect/detector.py``) stores the facts an event
carries, then asks each rule what those facts touch (its *subjects*: a sender process, a host's
day, a destination's day, a host...), and has each touched subject judged from everything
stored, in a savepoint of its own. A rule's verdict is a :class:`Draft` keyed by an
:class:`AlertKey` of its own; from a stored key the rule names the subject to judge again
(:meth:`Rule.subject`), which is how the sweep and changes of the host's weights renew verdicts.

Hooks a rule overrides (all optional but ``name`` and ``kinds``):

- ``on_event``: an event of a type listed in ``events`` arrived (its facts are stored);
- ``on_samples`` / ``on_reads``: egress rows and relays, or a weight read, were stored;
- ``on_sweep``: what arrived lately (wall clock); every host's row (``sweep_hosts``, then ``sweep_host``
  for those that need a look of their own);
- ``judge`` (one subject) or ``judge_many`` (a batch of them, for rules that judge in bulk);
- ``after``: rules whose verdicts this one reads; ``on_verdicts`` gets their changed keys.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import ClassVar, Generic, Protocol, TypeVar

from sqlalchemy import Connection

from weightwarden.collector.detect.common import Draft, Tuning
from weightwarden.collector.detect.keys import AlertKey
from weightwarden.collector.detect.links import Links
from weightwarden.collector.store.database import Store
from weightwarden.collector.store.host_rows import HostState
from weightwarden.collector.store.rows import EgressRow, PipeEndRow, ReadRow, RelayRow
from weightwarden.events import Event, Payload

S = TypeVar("S", bound=Hashable)  # what a rule judges: a sender process, a host's day, a host...
Hint = list[EgressRow] | None  # None: judge the subject in full; rows: look at these new egress rows first


@dataclass
class Units:
    """What new facts touch, per rule: subject -> hint. A full judgement absorbs any look."""

    by_rule: dict[str, dict[Hashable, Hint]] = field(default_factory=dict)

    def touch(self, rule: str, subject: Hashable, rows: Hint = None) -> None:
        mine = self.by_rule.setdefault(rule, {})
        if subject in mine:
            old = mine[subject]
            mine[subject] = None if old is None or rows is None else old + rows
        else:
            mine[subject] = None if rows is None else list(rows)

    def touch_all(self, rule: str, subjects: Iterable[Hashable]) -> None:
        for s in subjects:
            self.touch(rule, s)

    def add(self, other: Units) -> None:
        for rule, subjects in other.by_rule.items():
            for s, rows in subjects.items():
                self.touch(rule, s, rows)

    def of(self, rule: str) -> dict[Hashable, Hint]:
        return self.by_rule.get(rule, {})

    def __bool__(self) -> bool:
        return any(self.by_rule.values())


@dataclass
class SampleFacts:
    """One batch of stored sample facts (each row carries its host): egress rows (and unexplained
    bytes, as rows no process is named for), hand-overs, pipe ends newly written, and the events."""

    rows: list[EgressRow]
    relays: list[RelayRow]
    with_reads: set[str]  # hosts among them with weight reads a link could reach
    pipes: list[PipeEndRow] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)


@dataclass
class Look:
    """A subject to look at first, with the new rows that touch it (a full judgement only if they could
    change its verdict); hooks return it instead of the bare subject."""

    subject: Hashable
    rows: list[EgressRow]


@dataclass
class Lately:
    """What the sweep looks again at: facts stored since ``since_wall`` (the wall clock), verdicts
    written since ``since_now`` (the collectors' clock)."""

    since_wall: float
    since_now: float
    wall: float


class Context(Protocol):
    """What the engine gives a rule (implemented by :class:`~detector.Detector`)."""

    store: Store
    tune: Tuning
    clock: Callable[[], float]
    links: Links
    lag_s: float  # how far behind its inbox the collector is

    def put(self, conn: Connection, draft: Draft | None, now: float) -> bool:
        """Write a verdict (facts mode replaces the alert; event mode: the latest event by its time wins)."""

    def withdraw(self, conn: Connection, keys: Sequence[AlertKey], now: float) -> int:
        """Remove verdicts the facts no longer support (unless a person acknowledged them)."""

    def resolve(self, conn: Connection, key: AlertKey, why: str, now: float, open_: bool = False,
                reopen_after: float | None = None) -> bool:
        """Resolve (or reopen) an alert as the facts say: an agent back, a sensor whole again."""

    def note_error(self, text: str) -> None: ...

    def keys_of(self, conn: Connection, rule: str, host: str, *parts: str) -> list[AlertKey]:
        """The stored keys of a rule's alerts on one host (whose parts begin with ``parts``)."""

    def hosts_with_reads(self, conn: Connection, latest: dict[str, float]) -> set[str]:
        """Which hosts have weight reads a link could reach (given each host's latest fact's time)."""


class Rule(Generic[S]):
    """One detection. Subclasses set ``name`` (the key's first part), ``kinds`` (the alert kinds it
    raises, each documented in docs/alerts.md) and override the hooks they use."""

    name: str = ""
    kinds: tuple[str, ...] = ()
    events: tuple[type[Payload], ...] = ()  # payload types on_event is called for
    after: ClassVar[tuple[str, ...]] = ()  # rules whose verdicts this one reads (on_verdicts)
    quotes_weights: ClassVar[bool] = False  # its verdicts quote the host's weights size: renewed when it changes
    renew_lately: ClassVar[bool] = False  # the sweep judges again its verdicts written lately

    def __init__(self, tune: Tuning | None = None) -> None:
        self.tune = tune or Tuning()

    def configure(self, tune: Tuning) -> Rule[S]:
        """A copy of this rule for one engine with its tuning (rules may keep per-engine caches)."""
        fresh = copy.copy(self)
        fresh.tune = tune
        fresh.reset()
        return fresh

    def reset(self) -> None:
        """Set up per-engine state (caches) on a configured copy."""

    # -- keys ------------------------------------------------------------------------

    def key(self, host: str, *parts: object) -> AlertKey:
        return AlertKey(self.name, host, tuple(str(p) for p in parts))

    def subject(self, key: AlertKey) -> S | None:
        """The subject a stored verdict's key names (to judge it again), or None (event-decided)."""
        return None

    def host_of(self, subject: S) -> str:
        """The host whose verdicts judging ``subject`` writes (whose judgement lock it takes: a host, or
        a tuple that begins with one)."""
        if isinstance(subject, str):
            return subject
        if isinstance(subject, tuple) and subject and isinstance(subject[0], str):
            return subject[0]
        raise TypeError(f"rule {self.name!r}: no host in subject {subject!r} (override host_of)")

    # -- hooks -------------------------------------------------------------------------

    def on_event(self, ctx: Context, conn: Connection, ev: Event, now: float) -> Iterable[S | Look]:
        return ()

    def on_samples(self, ctx: Context, conn: Connection, facts: SampleFacts, now: float
                   ) -> Iterable[S | Look]:
        return ()

    def on_reads(self, ctx: Context, conn: Connection, host: str, row: ReadRow, grew: bool,
                 now: float) -> Iterable[S | Look]:
        return ()

    def on_heartbeats(self, ctx: Context, conn: Connection, events: list[Event], now: float) -> Iterable[S]:
        """A batch's heartbeats, all at once (they are the bulk of the non-sample events)."""
        return ()

    def on_sweep(self, ctx: Context, conn: Connection, lately: Lately, now: float) -> Iterable[S | Look]:
        return ()

    def forget(self) -> None:
        """After a rolled-back transaction: drop whatever caches learnt inside it."""

    def sweep_hosts(self, ctx: Context, conn: Connection, hosts: list[HostState], now: float) -> list[HostState]:
        """Every host's row, once per sweep, in one transaction: do what can be done for all at once, and
        return the hosts that need ``sweep_host`` (default: all)."""
        return hosts

    def sweep_host(self, ctx: Context, conn: Connection, host: HostState, now: float) -> None:
        """One host's row, in a transaction of its own (silence, gaps)."""

    def on_verdicts(self, ctx: Context, conn: Connection, changed: Sequence[AlertKey],
                    now: float) -> Iterable[S]:
        return ()

    def judge(self, ctx: Context, conn: Connection, subject: S, hint: Hint, now: float) -> None:
        """Write the verdict on ``subject`` from every stored fact (or withdraw one no longer supported)."""

    def judge_many(self, ctx: Context, conn: Connection, subjects: dict[S, Hint], now: float) -> int:
        """Judge each subject in its own savepoint; returns how many failed (the others stand)."""
        failed = 0
        for subject in sorted(subjects, key=repr):
            try:
                with conn.begin_nested():
                    self.judge(ctx, conn, subject, subjects[subject], now)
            except Exception as exc:  # noqa: BLE001 - one subject's odd facts must not stop the others
                failed += 1
                ctx.note_error(f"{self.name} {subject!r}: {exc!r}")
        return failed


__all__ = ["Context", "Hint", "Lately", "Look", "Rule", "SampleFacts", "Units"]
