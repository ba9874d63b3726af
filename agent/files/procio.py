"""What /proc says about a process and the weights: I/O counters and mapped files.

Processes exit at any moment; every reader returns None or empty for "gone".
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable


@dataclass(frozen=True, slots=True)
class IoCounters:
    rchar: int
    wchar: int
    read_bytes: int


def io_counters(pid: int, proc_root: str = "/proc") -> IoCounters | None:
    try:
        text = Path(proc_root, str(pid), "io").read_text()
    except OSError:
        return None
    values = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        values[key] = int(value.strip() or 0)
    return IoCounters(values.get("rchar", 0), values.get("wchar", 0), values.get("read_bytes", 0))


@dataclass
class Mapping:
    path: str
    mapped_bytes: int
    resident_bytes: int


def mapped_weights(pid: int, is_weight: Callable[[str], bool], proc_root: str = "/proc") -> list[Mapping]:
    """Weight files mapped into a process, with mapped and resident (touched) bytes, from smaps."""
    try:
        text = Path(proc_root, str(pid), "smaps").read_text()
    except OSError:
        return []
    found: dict[str, Mapping] = {}
    current: Mapping | None = None
    for line in text.splitlines():
        head = line.split(None, 5)
        if len(head) >= 5 and "-" in head[0] and ":" in head[3]:
            current = None
            if len(head) == 6 and head[5].startswith("/") and is_weight(head[5].removesuffix(" (deleted)")):
                path = head[5].removesuffix(" (deleted)")
                start, end = (int(x, 16) for x in head[0].split("-"))
                current = found.setdefault(path, Mapping(path, 0, 0))
                current.mapped_bytes += end - start
        elif current is not None and line.startswith("Rss:"):
            current.resident_bytes += int(line.split()[1]) * 1024
    return sorted(found.values(), key=lambda m: m.path)
