"""Making events on an agent: its host id, sequence numbers that survive restarts, private state files."""

from __future__ import annotations

import contextlib
import os
import re
import socket
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from weightwarden.events.envelope import ENVELOPES, Event
from weightwarden.events.fields import HOST_ID, SCHEMA_VERSION, Payload


def default_host_id() -> str:
    """The hostname, cleaned to what a topic segment and the schema accept."""
    name = re.sub(r"[^A-Za-z0-9_.-]", "-", socket.gethostname()).strip("-.") or "host"
    return name[:63]


def write_private(path: Path, text: str) -> None:
    """Write a state file atomically, readable by its owner only: a fresh, exclusively created
    temporary file in the same directory (never a fixed name another process could own), fsynced,
    then renamed over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)  # O_EXCL, mode 0600
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        Path(tmp).replace(path)
    except BaseException:
        with contextlib.suppress(OSError):
            Path(tmp).unlink()
        raise


class Sequencer:
    """Per-agent sequence numbers that survive restarts.

    The next number is written (and fsynced) before it is handed out, so a
    crash can skip numbers only if the event was never produced, never reuse.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self.last = int(path.read_text().strip() or 0)
        except (OSError, ValueError):
            self.last = 0

    def next(self) -> int:
        value = self.last + 1
        write_private(self.path, str(value))
        self.last = value
        return value


class SequenceSource(Protocol):
    """Where an agent's sequence numbers come from (``Sequencer``, or a sink's own)."""

    last: int  # the last number handed out

    def next(self) -> int: ...


class EventFactory:
    def __init__(self, host: str, sequencer: SequenceSource, clock: Callable[[], float] = time.time) -> None:
        if not HOST_ID.match(host):
            raise ValueError(f"invalid host id {host!r}: letters, digits, '_', '.', '-' (max 63)")
        self.host = host
        self.seq = sequencer
        self.clock = clock

    def make(self, data: Payload, ts: float | None = None) -> Event:
        return ENVELOPES[data.TYPE].model_validate({
            "schema": SCHEMA_VERSION, "id": uuid.uuid4().hex, "host": self.host, "seq": self.seq.next(),
            "ts": self.clock() if ts is None else ts, "type": data.TYPE, "data": data,
        })
