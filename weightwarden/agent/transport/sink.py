"""What a sink is: the interface the daemon talks to, and the statistics it reports.

Kept apart from the implementations (stdout.py, mqtt.py) so
neither imports the other.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

from weightwarden.events import Event, EventFactory, EventsDropped, SequenceSource

Sequencer = SequenceSource  # where sequence numbers come from


@dataclass(frozen=True)
class SinkStats:
    depth: int = 0  # events held, not yet acknowledged
    replayed: int = 0  # acknowledged events sent again after reconnects, ever


@runtime_checkable
class Sink(Protocol):
    def prepare(self, host: str, state_dir: Path) -> Sequencer:
        """Open durable state; returns where sequence numbers come from."""

    def attach(self, factory: EventFactory) -> None:
        """The factory the sink uses for events of its own (events_dropped summaries)."""

    def recovered(self) -> EventsDropped | None:
        """What was lost when durable state had to be replaced at start, if anything."""

    def stats(self) -> SinkStats: ...

    async def start(self) -> None: ...

    async def publish(self, event: Event) -> None: ...

    async def close(self) -> None: ...
