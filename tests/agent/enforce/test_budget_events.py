from pathlib import Path

import pytest
from pydantic import ValidationError

from tests.helpers.events import heartbeat
from weightwarden.agent.enforce.budget import BudgetBook, RollingWindow, ThresholdWatch
from weightwarden.agent.policy.loader import parse_policy
from weightwarden.events import EventFactory, Sequencer, parse_event

HEAD = "apiVersion: weightwarden/v1\nkind: EgressPolicy\nmetadata: {name: b}\nspec:\n"


def test_rolling_window_expires_old_bytes() -> None:
    w = RollingWindow(3600)
    w.add(0, 100)
    w.add(1800, 50)
    assert w.total(1800) == 150
    assert w.total(3600 + 61) == 50
    assert w.total(3600 * 3) == 0


def test_budget_exhausts_once_and_survives_a_restart() -> None:
    spec = parse_policy(HEAD + "  budgets: [{name: d, bytes: 1000, window: 1h, action: block}]\n").policy.spec
    book = BudgetBook(spec.budgets)
    assert book.add(10, 600) == []
    newly = book.add(20, 500)
    assert [b.name for b in newly] == ["d"] and book.blocking() == ["d"]
    assert book.add(30, 1) == []  # already exhausted: no second event
    restored = BudgetBook(spec.budgets, book.to_json())
    assert restored.blocking() == ["d"]
    assert restored.usage(40)["d"]["used_bytes"] == 1101
    assert restored.add(10_000, 0) == [] and restored.blocking() == []  # the window rolled over


def test_threshold_fires_once_per_crossing() -> None:
    spec = parse_policy(HEAD + "  thresholds: [{name: t, bytes: 100, window: 60s}]\n").policy.spec
    watch = ThresholdWatch(spec.thresholds)
    assert watch.add(0, (1, 100.0), n=60) == []
    assert [(th.name, total) for th, total in watch.add(1, (1, 100.0), n=60)] == [("t", 120)]
    assert watch.add(2, (1, 100.0), n=60) == []
    assert watch.add(2, (2, 100.0), n=99) == []


def test_a_reused_pid_starts_from_nothing_and_dead_senders_are_forgotten() -> None:
    spec = parse_policy(HEAD + "  thresholds: [{name: t, bytes: 100, window: 60s}]\n").policy.spec
    watch = ThresholdWatch(spec.thresholds)
    assert watch.add(0, (7, 100.0), n=90) == []
    # pid 7 exits; a new process gets pid 7 and sends 20 bytes: it is not the first one's 110.
    assert watch.add(1, (7, 200.0), n=20) == []
    # 200 samples of 100 short-lived senders each: windows of processes gone are dropped.
    alive = {(7, 200.0)}
    for t in range(200):
        for i in range(100):
            watch.add(2 + t, (10_000 + 100 * t + i, 1.0), n=1)
        watch.add(2 + t, (7, 200.0), n=1)  # the live one keeps sending
        watch.forget(2 + t + 0.5, lambda key: key in alive)
    assert len(watch) == 1, "only the live process keeps a window"
    watch.forget(1000, lambda key: True)
    assert len(watch) == 0, "a window whose bytes aged out is dropped"


def test_sequence_survives_restart_and_ids_are_unique(tmp_path: Path) -> None:
    factory = EventFactory("gpu-1", Sequencer(tmp_path / "seq"))
    first = [factory.make(heartbeat()) for _ in range(3)]
    again = EventFactory("gpu-1", Sequencer(tmp_path / "seq")).make(heartbeat())
    assert [e.seq for e in first] + [again.seq] == [1, 2, 3, 4]
    assert len({e.id for e in [*first, again]}) == 4
    doc = again.to_json()
    assert {"schema", "id", "host", "seq", "ts", "type", "data"} == set(doc)
    assert parse_event(doc) == again


def test_envelope_rejects_garbage() -> None:
    with pytest.raises(ValidationError):
        parse_event({"schema": 1, "id": "x", "host": "h/../", "seq": 0, "ts": 1, "type": "nope"})
    with pytest.raises(ValueError):
        EventFactory("bad host/id", Sequencer(Path("/nonexistent/seq")))


def test_documented_examples_match_the_schema() -> None:
    import json
    import re

    from weightwarden.events import EVENT_TYPES

    text = (Path(__file__).resolve().parents[3] / "docs" / "events.md").read_text()
    blocks = re.findall(r"```json\n(.*?)```", text, re.S)
    documented = {parse_event(json.loads(b)).type for b in blocks}
    assert documented == set(EVENT_TYPES)


def test_documented_schema_is_generated_from_the_models() -> None:
    from weightwarden.eventdocs import generate

    text = (Path(__file__).resolve().parents[3] / "docs" / "events.md").read_text()
    assert generate() in text, "docs/events.md is stale: run python -m weightwarden.eventdocs --write docs/events.md"
