"""The stdout sink: one JSON line per event (systemd's journal, or a pipe, keeps them)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TextIO

from weightwarden.agent.transport.sink import Sequencer, SinkStats
from weightwarden.events import Event, EventFactory, EventsDropped
from weightwarden.events import Sequencer as FileSequencer

__all__ = ["StdoutSink"]


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
