"""Every recorded scenario of the corpus, replayed through the collector, meets its annotations."""

from __future__ import annotations

import pytest

from tests.corpus.model import Scenario
from tests.corpus.recorded import SCENARIOS
from tests.corpus.replay import replay


def test_the_corpus_is_big_enough() -> None:
    theft = [s for s in SCENARIOS if s.label == "theft"]
    benign = [s for s in SCENARIOS if s.label == "benign"]
    assert len(theft) >= 20 and len(benign) >= 12
    assert len({s.name for s in SCENARIOS}) == len(SCENARIOS)
    assert all(s.must for s in theft), "every theft says which alert it must raise"


@pytest.mark.parametrize("sc", SCENARIOS, ids=[s.name for s in SCENARIOS])
def test_scenario(sc: Scenario) -> None:
    verdict = replay(sc)
    assert verdict.ok, (verdict.problems, [(a["kind"], a["severity"], a["title"]) for a in verdict.alerts])
