"""The same facts give the same alerts, whatever order they arrive in and however many collectors share them.

One recorded stream of many incidents (thefts, serving, relays, a verdict that later facts
lower, single-event alerts) is replayed in shuffled orders, in random batches dealt to 1, 2
or 3 collectors sharing one database, with sweeps at random moments. Every replay must end
with exactly the alerts of the in-order replay: same keys, kinds, severities and evidence.
(tests/collector/test_scale_out.py does the same through MQTT and PostgreSQL.)
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest

from weightwarden.collector.ingest.pipeline import Pipeline
from weightwarden.collector.store.database import Store
from tests.collector.scenarios import MB, T0, Stream
from tests.collector.test_detections import Clock
from tests.corpus import recorded
from tests.corpus.replay import message

WALL_CLOCK_KINDS = {"agent_silent", "sequence_gap"}  # about when the collector looked, not about the facts


def story() -> list[dict[str, Any]]:
    """Several incidents and some normal work, on several hosts."""
    streams = (recorded.direct() + recorded.tar_pipe_curl() + recorded.split_parts() + recorded.holder_burst(False)
               + recorded.relay("t-chain", "unix", "/usr/sbin/haproxy", 530, 443, depth=2) + recorded.chunked()
               + recorded.exec_child() + recorded.network_storage("t-nfs", "nfs4") + recorded.canary()
               + recorded.warmup_then_dataset() + recorded.log_shipping() + recorded.pid_reuse())
    down = Stream("t-down")  # a verdict later facts lower: critical while only one shard was known
    down.read(T0 + 1, pid=700, nbytes=100 * MB, path="/srv/models/a.safetensors")
    down.send(T0 + 5, pid=700, nbytes=60 * MB)
    for i in range(3):
        down.read(T0 + 1, pid=700, nbytes=300 * MB, path=f"/srv/models/{'bcd'[i]}.safetensors", report_at=T0 + 9)
    caps = Stream("t-caps")  # event-decided alerts: the latest event by its own time wins
    for i in range(5):
        caps.add("cap_hit", T0 + i, cap="host-default", action="shape" if i < 4 else "block", rate_bps=10**7,
                 observed_bps=10**7 - i, bytes=10**6 * (i + 1))
    return [e for s in [*streams, down, caps] for e in s.events]


def summary(store: Store) -> dict[str, tuple[Any, ...]]:
    return {a["key"]: (a["kind"], a["severity"], a["title"], a["explanation"], a["first_ts"], a["last_ts"],
                       json.dumps(a["evidence"], sort_keys=True))
            for a in store.alerts() if a["kind"] not in WALL_CLOCK_KINDS}


def replay(events: list[dict[str, Any]], db: str, collectors: int, rng: random.Random | None) -> Store:
    now = max(e["ts"] for e in events) + 10
    pipes = [Pipeline(Store(db), clock=Clock(now)) for _ in range(collectors)]
    i = 0
    while i < len(events):
        n = rng.randint(1, 40) if rng else 25
        pipe = rng.choice(pipes) if rng else pipes[0]
        pipe.ingest([message(e) for e in events[i:i + n]])
        i += n
        if rng and rng.random() < 0.1:
            rng.choice(pipes).sweep()
    for pipe in pipes:  # every collector's sweep, a while later
        pipe.clock.now = now + 120  # type: ignore[attr-defined]
        pipe.sweep()
        assert not pipe.errors, pipe.errors
    return pipes[0].store


@pytest.mark.parametrize("seed", range(6))
def test_alerts_do_not_depend_on_arrival_order(seed: int, tmp_path: Path) -> None:
    events = story()
    expected = summary(replay(sorted(events, key=lambda e: e["ts"]), f"sqlite:///{tmp_path}/in-order.db", 1, None))
    assert {k[0] for k in expected.values()} >= {"exfiltration", "staged_exfiltration", "chunked_exfiltration",
                                                   "host_exfiltration", "remote_copy", "canary_read", "cap_hit"}
    assert expected["cap:t-caps:host-default"][1] == "medium", "the latest cap event (block) decides"
    [down] = [v for k, v in expected.items() if k.startswith("exfiltration:t-down:")]
    assert down[1] == "medium", "60 MB of the 1 GB it had, though 60% of the first shard reported"
    rng = random.Random(seed)
    shuffled = events[:]
    rng.shuffle(shuffled)
    got = summary(replay(shuffled, f"sqlite:///{tmp_path}/shuffled.db", 1 + seed % 3, rng))
    assert sorted(got) == sorted(expected)
    for key in expected:
        assert got[key] == expected[key], key


def _phase(e: dict[str, Any]) -> int:
    """The adversarial order for a relay chain: the last sender's uploads, then the read, then the
    hand-overs from the far end of the chain back to the reader, each phase in its own batch."""
    if e["type"] != "egress_sample":
        return 1
    procs = e["data"]["processes"]
    if any(p["tx_bytes"] > 0 for p in procs):
        return 0
    return 3 if any(p["pid"] == 501 for p in procs) else 2


def test_a_hand_over_arriving_last_links_the_end_of_its_chain(tmp_path: Path) -> None:
    """reader 501 -unix-> 530 -tcp-> 531 -> the world: 501's hand-overs arrive after everything
    else, days late, so no sweep looks at them by time; 531's verdict must still name 501."""
    events = [e for s in recorded.relay("t-chain", "unix", "/usr/sbin/haproxy", 530, 443, depth=2) for e in s.events]
    now = max(e["ts"] for e in events) + 30 * 86400  # an agent's spool delivered a month late
    pipe = Pipeline(Store(f"sqlite:///{tmp_path}/late.db"), clock=Clock(now))
    for phase in range(4):
        batch = [message(e) for e in events if _phase(e) == phase]
        assert batch, phase
        pipe.ingest(batch)
    pipe.sweep()
    assert not pipe.errors, pipe.errors
    [alert] = [a for a in pipe.store.alerts() if a["kind"] == "exfiltration"]
    assert alert["key"].startswith("exfiltration:t-chain:531"), alert["key"]
    assert [link["reader"]["pid"] for link in alert["evidence"]["links"]] == [501], alert["evidence"]["links"]
