"""Where events go: an explicit interface, with stdout JSON lines here and MQTT in mqtt_sink.py.

The daemon talks to a sink only through :class:`Sink`: it never probes for
optional methods. A sink that has nothing to report returns neutral values.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TextIO

from weightwarden.agent.transport.sink import Sequencer, Sink, SinkStats
from weightwarden.events import Event, EventFactory, EventsDropped
from weightwarden.events import Sequencer as FileSequencer
from weightwarden.mqtt import MqttSettings, MqttURLError, redact

__all__ = ["Sequencer", "Sink", "SinkStats", "SinkURLError", "StdoutSink", "make_sink"]


class StdoutSink:
    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stdout

    def prepare(self, host: str, state_dir: Path) -> Sequencer:
        return FileSequencer(state_dir / "seq")

    def attach(self, factory: EventFactory) -> None:
        return None

    def recovered(self) -> EventsDropped | None:
        return None

    def stats(self) -> SinkStats:
        return SinkStats()

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
        from weightwarden.agent.transport.mqtt import MqttSink  # lazily: stdout needs no broker library

        return MqttSink(MqttSettings.from_url(url), spool_max_bytes)
    raise SinkURLError(f"unknown sink {redact(url)!r}: use 'stdout', mqtt://HOST:PORT or mqtts://HOST:PORT")
