"""Where events go: stdout JSON lines (``--sink stdout``); MQTT in agent/mqtt_sink.py."""

from __future__ import annotations

import json
import sys
from typing import Protocol, TextIO

from agent.events import Event


class Sink(Protocol):
    async def start(self) -> None: ...
    async def publish(self, event: Event) -> None: ...
    async def close(self) -> None: ...


class StdoutSink:
    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stdout

    async def start(self) -> None:
        return None

    async def publish(self, event: Event) -> None:
        self.stream.write(json.dumps(event.to_json(), separators=(",", ":")) + "\n")
        self.stream.flush()

    async def close(self) -> None:
        self.stream.flush()


class SinkURLError(ValueError):
    pass


def make_sink(url: str) -> Sink:
    if url == "stdout":
        return StdoutSink()
    if url.startswith(("mqtt://", "mqtts://")):
        from agent.mqtt_sink import MqttSink  # imported lazily: stdout needs no broker library

        return MqttSink.from_url(url)
    raise SinkURLError(f"unknown sink {url!r}: use 'stdout', mqtt://HOST:PORT or mqtts://HOST:PORT")
