"""The conformance test every registered detection rule must pass, and what adding one takes.

Each rule in ``weightwarden/collector/detect/rules/`` is found by the registry; here every one of
them is held to the interface: a name that is its keys' first part, alert kinds that are its own
and documented, hooks with the interface's signatures, and, fed every example event of
docs/events.md and the recorded corpus, alerts whose kinds and keys are its own, whose keys read
back as typed values naming the subject to judge again, and whose verdicts hold when judged again.
"""

from __future__ import annotations

import inspect
import json
import re
import uuid
from collections.abc import Hashable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Connection, text

from tests.collector.scenarios import NFQUEUE, T0, Stream
from tests.collector.test_detections import Clock
from tests.corpus.recorded import SCENARIOS
from tests.corpus.replay import message
from weightwarden.collector.detect import registry
from weightwarden.collector.detect.common import Draft
from weightwarden.collector.detect.keys import AlertKey
from weightwarden.collector.detect.rule import Context, Hint, Look, Rule
from weightwarden.collector.ingest.pipeline import Pipeline
from weightwarden.collector.store.database import Store
from weightwarden.events import PAYLOADS, CapHit, Event

REPO = Path(__file__).resolve().parents[2]
RULES = registry.rules()


def doc_examples() -> list[dict[str, Any]]:
    """Every example event in docs/events.md, each on a host of its own."""
    out = []
    for block in re.findall(r"```json\n(.*?)```", (REPO / "docs/events.md").read_text(), re.S):
        doc = json.loads(block)
        if isinstance(doc, dict) and "type" in doc:
            out.append({**doc, "host": f"doc-{doc['type'].replace('_', '-')}", "id": uuid.uuid4().hex})
    return out


@pytest.fixture(scope="module")
def judged(tmp_path_factory: pytest.TempPathFactory) -> Pipeline:
    """Every example event and every recorded scenario, through one pipeline, then a sweep."""
    db = tmp_path_factory.mktemp("rules") / "c.db"
    degraded = Stream("doc-sensor")
    degraded.add("heartbeat", T0, sensor=NFQUEUE)
    events = doc_examples() + degraded.events + [e for sc in SCENARIOS if sc.build for s in sc.build()
                                                 for e in s.events]
    clock = Clock(0.0)
    pipe = Pipeline(Store(f"sqlite:///{db}"), clock=clock)
    ordered = sorted(events, key=lambda e: e["ts"])
    for i in range(0, len(ordered), 200):
        clock.now = ordered[min(i + 199, len(ordered) - 1)]["ts"]
        assert pipe.ingest([message(e) for e in ordered[i:i + 200]])["rejected"] == 0
    clock.now += 10
    pipe.sweep()
    assert not pipe.errors, pipe.errors
    return pipe


@pytest.mark.parametrize("rule", RULES, ids=[r.name for r in RULES])
def test_a_rule_names_its_keys_and_its_kinds(rule: Rule[Any]) -> None:
    assert re.fullmatch(r"[a-z][a-z_-]*", rule.name), rule.name
    assert rule.kinds and all(re.fullmatch(r"[a-z_]+", k) for k in rule.kinds)
    docs = (REPO / "docs/alerts.md").read_text()
    assert all(f"`{k}`" in docs for k in rule.kinds), f"document {rule.kinds} in docs/alerts.md"
    assert all(p in PAYLOADS for p in rule.events), "rules decide events of the shared schema"
    assert registry.rule_of(AlertKey(rule.name, "h")) is rule


def test_no_two_rules_share_a_name_or_a_kind() -> None:
    kinds = [k for r in RULES for k in r.kinds]
    assert len(kinds) == len(set(kinds)) and len({r.name for r in RULES}) == len(RULES)
    names = [r.name for r in RULES]
    for r in RULES:  # a rule comes after those whose verdicts it reads
        assert all(names.index(dep) < names.index(r.name) for dep in r.after), r.name


@pytest.mark.parametrize("rule", RULES, ids=[r.name for r in RULES])
def test_a_rules_hooks_keep_the_interfaces_signatures(rule: Rule[Any]) -> None:
    for name, base in inspect.getmembers(Rule, inspect.isfunction):
        if name.startswith("_"):
            continue
        mine = getattr(type(rule), name)
        if mine is not base:
            assert list(inspect.signature(mine).parameters) == list(inspect.signature(base).parameters), name


def test_every_alert_belongs_to_a_rule_and_its_key_reads_back(judged: Pipeline) -> None:
    raised = judged.store.alerts()
    by_rule: dict[str, set[str]] = {}
    for a in raised:
        key = AlertKey.parse(a["key"], a["host"])
        assert key is not None and str(key) == a["key"], a["key"]
        rule = registry.rule_of(key)
        assert rule is not None and a["kind"] in rule.kinds, (a["key"], a["kind"])
        if rule.renew_lately or rule.quotes_weights:
            assert rule.subject(key) is not None, f"{rule.name} cannot say what {a['key']} is about"
        by_rule.setdefault(rule.name, set()).add(a["kind"])
    # The corpus and the examples exercise every rule (a rule nothing can trigger is dead).
    assert set(by_rule) >= {r.name for r in RULES} - {"gap", "silent"}, sorted({r.name for r in RULES} - set(by_rule))


def test_verdicts_hold_when_judged_again(judged: Pipeline) -> None:
    """A verdict from every stored fact is a fixed point: judging its subject again writes nothing."""
    det = judged.detector
    with judged.store.tx() as conn:
        before = {r[0]: tuple(r[1:]) for r in conn.execute(text("SELECT key, severity, evidence, updated_at, state "
                                                                 "FROM alerts"))}
        for key_text, (_sev, _ev, _upd, _state) in sorted(before.items()):
            key = AlertKey.parse(key_text)
            assert key is not None
            rule = det.by_name[key.rule]
            subject = rule.subject(key)
            if subject is not None:
                assert rule.judge_many(det, conn, {subject: None}, judged.clock()) == 0, det.errors
        after = {r[0]: tuple(r[1:]) for r in conn.execute(text("SELECT key, severity, evidence, updated_at, state "
                                                                "FROM alerts"))}
    assert after == before


# -- adding a rule is one module ---------------------------------------------------------------------


class ToyRule(Rule[str]):
    """What a new rule module holds (plus ``RULE = register(ToyRule())``): a cap hit with 'toy' in its name."""

    name = "toy"
    kinds = ("toy_cap",)
    events = (CapHit,)

    def on_event(self, ctx: Context, conn: Connection, ev: Event, now: float) -> Iterable[str | Look]:
        if isinstance(ev.data, CapHit) and "toy" in ev.data.cap:
            ctx.put(conn, Draft(self.key(ev.host, ev.data.cap), ev.host, "toy_cap", "low", "toy", "a toy cap was hit",
                                {"events": [ev.id]}, ev.ts, ev.ts), now)
        return [ev.host]

    def judge(self, ctx: Context, conn: Connection, subject: str, hint: Hint, now: float) -> None:
        self.judged.append(subject)

    def reset(self) -> None:
        self.judged: list[Hashable] = []


@contextmanager
def registered(rule: Rule[Any]) -> Iterator[None]:
    saved = dict(registry._RULES)
    try:
        registry.register(rule)
        yield
    finally:
        registry._RULES.clear()
        registry._RULES.update(saved)


def test_a_registered_rule_is_asked_and_judged_by_the_engine(tmp_path: Path) -> None:
    with registered(ToyRule()):
        pipe = Pipeline(Store(f"sqlite:///{tmp_path}/c.db"), clock=Clock(T0 + 10))
    s = Stream("gpu-toy")
    s.add("cap_hit", T0, cap="toy-cap", action="shape", rate_bps=1, observed_bps=2, bytes=3)
    assert pipe.ingest(s.messages())["rejected"] == 0 and not pipe.errors
    toy = pipe.detector.by_name["toy"]
    assert isinstance(toy, ToyRule) and toy.judged == ["gpu-toy"]
    assert {(a["kind"], a["key"]) for a in pipe.store.alerts()} == {("toy_cap", "toy:gpu-toy:toy-cap"),
                                                                     ("cap_hit", "cap:gpu-toy:toy-cap")}
    assert "toy" not in {r.name for r in registry.rules()}, "unregistered again"


def test_a_rule_that_fails_costs_only_its_own_verdicts(tmp_path: Path) -> None:
    class Broken(ToyRule):
        name = "broken"
        kinds = ("broken_cap",)

        def on_event(self, ctx: Context, conn: Connection, ev: Event, now: float) -> Iterable[str | Look]:
            return [ev.host]

        def judge(self, ctx: Context, conn: Connection, subject: str, hint: Hint, now: float) -> None:
            raise RuntimeError("odd facts")

    with registered(Broken()):
        pipe = Pipeline(Store(f"sqlite:///{tmp_path}/c.db"), clock=Clock(T0 + 10))
    s = Stream("gpu-b")
    s.add("cap_hit", T0, cap="c", action="block", rate_bps=1, observed_bps=2, bytes=3)
    counts = pipe.ingest(s.messages())
    assert counts["stored"] == 1 and [a["kind"] for a in pipe.store.alerts()] == ["cap_hit"]
    assert any("broken" in e and "odd facts" in e for e in pipe.errors)
