"""Where events go: stdout JSON lines (``--sink stdout``); MQTT in agent/mqtt_sink.py."""

from __future__ import annotations

import json
import sys
from typing import Protocol, TextIO

from pathlib import Path

from weightwarden.events import Event
from weightwarden.mqtt import MqttURLError
from weightwarden.events import Sequencer as FileSequencer


class Sequencer(Protocol):
    def next(self) -> int: ...


class Sink(Protocol):
    def prepare(self, host: str, state_dir: Path) -> Sequencer: ...
    async def start(self) -> None: ...
    async def publish(self, event: Event) -> None: ...
    async def close(self) -> None: ...


class StdoutSink:
    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stdout

    def prepare(self, host: str, state_dir: Path) -> Sequencer:
        return FileSequencer(state_dir / "seq")

    async def start(self) -> None:
        return None

    async def publish(self, event: Event) -> None:
        self.stream.write(json.dumps(event.to_json(), separators=(",", ":")) + "\n")
        self.stream.flush()

    async def close(self) -> None:
        self.stream.flush()


class SinkURLError(MqttURLError):
    """A --sink that cannot be used (an unknown scheme, or a bad MQTT URL)."""


def make_sink(url: str, spool_max_bytes: int = 256 * 2**20) -> Sink:
    if url == "stdout":
        return StdoutSink()
    if url.startswith(("mqtt://", "mqtts://")):
        from weightwarden.agent.mqtt_sink import MqttSettings, MqttSink  # imported lazily: stdout needs no broker library

        return MqttSink(MqttSettings.from_url(url), spool_max_bytes)
    raise SinkURLError(f"unknown sink {url!r}: use 'stdout', mqtt://HOST:PORT or mqtts://HOST:PORT")
