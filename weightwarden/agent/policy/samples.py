"""Recorded egress samples, as ``top --json`` prints them or as ``weightwarden-collector export`` writes them.

One JSON object per line: either a bare sample (``top --json``) or an event
envelope (``{"type": "egress_sample", "host": ..., "data": {...}}``); other
event types are read only for what they tell about the host (the weights'
size from ``heartbeat`` or ``agent_started``). A line that is not JSON, or not
a sample, is counted and named (file and line), never silently skipped.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import orjson  # 2-3x json's speed on sample lines: most of a day's replay is parsing (bench/simulate.py)

from weightwarden.jsontypes import JsonObject


@dataclass
class ReadStats:
    lines: int = 0
    samples: int = 0
    skipped: int = 0
    problems: list[str] = field(default_factory=list)  # the first few, with line numbers
    hosts: set[str] = field(default_factory=set)
    weights_bytes: int | None = None

    def skip(self, where: str, why: str) -> None:
        self.skipped += 1
        if len(self.problems) < 10:
            self.problems.append(f"{where}: {why}")


def _sample_of(doc: object, stats: ReadStats, host: str | None) -> JsonObject | None:
    if not isinstance(doc, dict):
        return None
    if "type" in doc and isinstance(doc.get("data"), dict):
        ev_host = doc.get("host")
        if host is not None and ev_host != host:
            return {}
        if doc["type"] in ("heartbeat", "agent_started"):
            weights = doc["data"].get("weights") or {}
            if isinstance(weights, dict) and isinstance(weights.get("total_bytes"), int) and weights["total_bytes"]:
                stats.weights_bytes = weights["total_bytes"]
            return {}
        if doc["type"] != "egress_sample":
            return {}
        if isinstance(ev_host, str):
            stats.hosts.add(ev_host)
        data: JsonObject = doc["data"]
        return data
    if "processes" in doc and "ts" in doc:
        return doc
    return None


def read_samples(stream: IO[bytes], name: str, stats: ReadStats, host: str | None = None) -> Iterator[JsonObject]:
    """Samples in file order; ``stats`` fills in as they are read."""
    for number, line in enumerate(stream, start=1):
        stats.lines += 1
        if not line.strip():
            continue
        try:
            doc = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            stats.skip(f"{name}:{number}", f"not JSON ({str(exc)[:80]})")
            continue
        sample = _sample_of(doc, stats, host)
        if sample is None:
            stats.skip(f"{name}:{number}", "neither a top --json sample nor an exported event")
            continue
        if not sample:
            continue
        if not isinstance(sample.get("ts"), (int, float)) or not isinstance(sample.get("processes"), list):
            stats.skip(f"{name}:{number}", "a sample without ts or processes")
            continue
        stats.samples += 1
        yield sample


def open_samples(path: str) -> IO[bytes]:
    """A file, or '-' for stdin, as bytes (the parser takes UTF-8 bytes directly)."""
    if path == "-":
        import sys

        return sys.stdin.buffer
    return Path(path).open("rb")
