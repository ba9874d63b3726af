"""The corpus's real scenarios: the real agent, real processes, real files, real bytes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.corpus.real import REAL_SCENARIOS, Lab, RealScenario
from tests.helpers.netns import make_pair

pytestmark = pytest.mark.privileged


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    pair = make_pair()
    try:
        yield Lab(pair, tmp_path_factory.mktemp("lab"))
    finally:
        pair.teardown()


@pytest.mark.parametrize("sc", REAL_SCENARIOS, ids=[s.name for s in REAL_SCENARIOS])
def test_real_scenario(lab: Lab, sc: RealScenario, tmp_path: Path) -> None:
    verdict = lab.judge(sc, tmp_path / "c.db")
    assert verdict.ok, (verdict.problems, [(a["kind"], a["severity"], a["title"]) for a in verdict.alerts],
                        "".join(lab.agent.stderr[-10:]))
    if sc.label == "theft":
        assert verdict.seconds_to_alert is not None and verdict.seconds_to_alert < 15
