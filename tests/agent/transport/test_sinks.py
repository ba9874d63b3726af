"""The conformance test every sink in the registry passes: whatever --sink names, the daemon gets a
sequence that survives a restart, publish delivers every event once and in order, stats are
neutral when nothing is held, and close flushes."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.broker import Broker
from tests.helpers.events import sample
from tests.helpers.netns import wait_for
from tests.helpers.subscriber import Subscriber
from weightwarden.agent.transport import REGISTRY, Sink, SinkURLError, make_sink
from weightwarden.agent.transport.stdout import StdoutSink
from weightwarden.events import EventFactory, parse_event

# How to see what each kind of sink delivered: (make the sink, read back the events it delivered).
Harness = tuple[Callable[[], Sink], Callable[[], list[dict[str, Any]]], Callable[[], None]]


@pytest.fixture(params=sorted({"stdout", "mqtt"}))
def harness(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Harness]:
    if request.param == "stdout":
        stream = io.StringIO()
        yield (lambda: StdoutSink(stream), lambda: [json.loads(line) for line in stream.getvalue().splitlines()],
               lambda: None)
        return
    broker = Broker(tmp_path / "broker").start()
    sub = Subscriber(broker.host, broker.port, client_id="conformance-sub")
    try:
        yield (lambda: make_sink(f"{broker.url}?keepalive=5"), sub.events, sub.close)
    finally:
        sub.close()
        broker.stop()


def test_every_registered_scheme_makes_a_sink() -> None:
    assert {"stdout", "mqtt", "mqtts"} <= set(REGISTRY)
    for scheme in REGISTRY:
        url = "stdout" if scheme == "stdout" else f"{scheme}://broker.example:8883"
        assert isinstance(make_sink(url), Sink), scheme


@pytest.mark.parametrize("bad", ["amqp://agent:hunter2@broker", "stdout://x", "", "kafka"])
def test_an_unknown_sink_is_refused_naming_it_without_secrets(bad: str) -> None:
    with pytest.raises(SinkURLError) as exc:
        make_sink(bad)
    assert "hunter2" not in str(exc.value) and "unknown sink" in str(exc.value)


def test_a_sink_delivers_every_event_once_in_order_and_its_sequence_survives(harness: Harness,
                                                                              tmp_path: Path) -> None:
    make, delivered, _stop = harness

    async def produce(first_pid: int) -> list[int]:
        sink = make()
        factory = EventFactory("gpu-c", sink.prepare("gpu-c", tmp_path / "state"))
        sink.attach(factory)
        assert sink.recovered() is None
        await sink.start()
        seqs = []
        for i in range(5):
            ev = factory.make(sample(pid=first_pid + i))
            seqs.append(ev.seq)
            await sink.publish(ev)
        await asyncio.to_thread(wait_for, lambda: sink.stats().depth == 0, 10)
        assert sink.stats().depth == 0
        await sink.close()
        return seqs

    first = asyncio.run(produce(100))
    second = asyncio.run(produce(200))  # a restart: the same state directory
    assert first == [1, 2, 3, 4, 5] and second == [6, 7, 8, 9, 10], "sequence numbers survive a restart"
    assert wait_for(lambda: len(delivered()) >= 10, 10)
    got = [parse_event(e) for e in delivered() if e.get("seq")]
    assert [e.seq for e in got] == list(range(1, 11)), "every event once, in order"
    assert len({e.id for e in got}) == 10
