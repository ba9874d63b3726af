"""The file-read loader process (bpf/loader.c): start it, tell it the weights, read its counters.

One reader thread owns the loader's stdout: relink events go to a callback as they come (it
must be quick: it hands them on), replies to ``read`` and ``take`` are collected until their
END frame. Every reply is waited for with a timeout, so a loader that stops answering costs the
watcher a bounded wait and a ``FileBpfError``, never a hang; the kernel side never waits on
either of them. If the loader dies, the kernel has already detached its programs.
"""

from __future__ import annotations

import json
import os
import queue
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from weightwarden.agent.ebpf.process import LoaderProcess
from weightwarden.agent.files.ebpf import wire

ENV_LOADER = "WEIGHTWARDEN_FILES_BPF_LOADER"
BUILT = Path(__file__).resolve().parent / "bpf" / "build" / "weightwarden-files-bpf"
LINE_MAX = 60_000  # the loader reads lines of up to 1 MiB; smaller lines keep each write short

# Which programs give which capability (bpf/loader.c's progs[]).
FEATURES = {
    "reads": ("wf_get_pages", "wf_exit"),  # both: a process's counts are whole once it exits
    "mmap": ("wf_map_pages", "wf_fault"),
    "relinks": ("wf_ctime_xchg", "wf_ctime_skip", "wf_ctime_set"),
}


class FileBpfError(Exception):
    """The loader could not start, or stopped answering."""


def loader_path() -> Path:
    return Path(os.environ.get(ENV_LOADER) or BUILT)


@dataclass(frozen=True, slots=True)
class Weight:
    id: int
    dev: tuple[int, int]
    ino: int
    flags: int  # wire.K_*


@dataclass
class Counts:
    """Every counter the kernel holds now (cumulative), and what it could not count."""

    readers: list[wire.Reader] = field(default_factory=list)
    lost: wire.Lost = field(default_factory=wire.Lost)
    at_ns: int = 0  # CLOCK_MONOTONIC when the loader began reading


@dataclass(frozen=True, slots=True)
class Feature:
    on: bool
    reason: str | None = None


def features_of(info: dict[str, object]) -> dict[str, Feature]:
    """Each capability on, or off with the kernel's reason (a capability is on if any of its programs is)."""
    programs = info.get("programs")
    status = programs if isinstance(programs, dict) else {}
    out = {}
    for name, progs in FEATURES.items():
        why = [str(status.get(p, "not in the loader")) for p in progs]
        on = all(w == "" for w in why) if name == "reads" else any(w == "" for w in why)
        out[name] = Feature(True) if on else Feature(False, "; ".join(sorted({w for w in why if w})))
    return out


class FileBpf(LoaderProcess):
    what = "the file-read loader"
    error = FileBpfError
    thread_name = "files-bpf-reader"

    def __init__(self, binary: Path | None = None,
                 on_event: Callable[[wire.Relink | wire.Opener], None] | None = None) -> None:
        super().__init__()
        self.binary = binary or loader_path()
        self.on_event = on_event  # new names and new readers, as they come (on the reader thread: be quick)
        self.info: dict[str, object] = {}
        self.features: dict[str, Feature] = {}
        self._replies: queue.Queue[tuple[list[wire.Reader], wire.Lost, int] | None] = queue.Queue()
        self._pending: list[wire.Reader] = []
        self._slots: list[tuple[wire.ReaderKey, int, int]] = []
        self._seen = 0
        self._lost = wire.Lost()
        self._lock = threading.Lock()  # one request at a time

    def start(self, timeout: float = 20.0) -> dict[str, Feature]:
        text = self._spawn([str(self.binary)], {"LANG": "C"}, timeout)
        try:
            self.info = json.loads(text)
        except ValueError:
            self.close()
            raise FileBpfError(f"the file-read loader said {text[:200]!r}") from None
        self.features = features_of(self.info)
        return self.features

    def _on_exit(self) -> None:
        self._replies.put(None)

    def _dispatch(self, kind: int, payload: bytes) -> None:
        if kind in (wire.T_RELINK, wire.T_OPENER):
            event = wire.parse_relink(payload) if kind == wire.T_RELINK else wire.parse_opener(payload)
            if event is not None and self.on_event is not None:
                self.on_event(event)
        elif kind in (wire.T_READERS, wire.T_TAKEN):
            self._pending.extend(wire.parse_readers(payload))
        elif kind == wire.T_SEEN:
            self._seen = int.from_bytes(payload[:8], "little")
        elif kind == wire.T_PENDING:
            self._slots = wire.parse_pending(payload)
        elif kind == wire.T_LOST:
            self._lost = wire.parse_lost(payload)
        elif kind == wire.T_END:
            done = wire.merge_pending(self._pending, self._slots)
            self._pending, self._slots = [], []
            self._replies.put((done, self._lost, int.from_bytes(payload[:8], "little")))

    # -- requests ------------------------------------------------------------

    def _reply(self, timeout: float) -> tuple[list[wire.Reader], wire.Lost, int]:
        try:
            got = self._replies.get(timeout=timeout)
        except queue.Empty:
            raise FileBpfError(f"the file-read loader did not answer within {timeout:.0f} s") from None
        if got is None:
            raise FileBpfError("the file-read loader exited")
        return got

    def add(self, weights: Iterable[Weight]) -> None:
        """Weights the kernel should count (an id it already has is replaced)."""
        with self._lock:
            self._send(*_batched(b"add", (f"{w.id} {wire.kernel_dev(w.dev)} {w.ino} {w.flags}" for w in weights)))

    def remove(self, keys: Iterable[tuple[tuple[int, int], int]]) -> None:
        with self._lock:
            self._send(*_batched(b"del", (f"{wire.kernel_dev(dev)} {ino}" for dev, ino in keys)))

    def read(self, timeout: float = 5.0) -> Counts:
        with self._lock:
            self._send(b"read\n")
            readers, lost, at = self._reply(timeout)
        return Counts(readers, lost, at)

    def seen(self, tgid: int, timeout: float = 2.0) -> int:
        """The start (boot ns) of process ``tgid`` if it has read a weight file, else 0: known in the
        kernel the moment it read, whatever the agent has been told yet."""
        with self._lock:
            self._send(f"seen {tgid}\n".encode())
            self._reply(timeout)
            return self._seen

    def take(self, keys: Iterable[wire.ReaderKey], timeout: float = 5.0) -> list[wire.Reader]:
        """The final counts of processes that are gone, removed from the kernel's table."""
        items = [f"{k.tgid} {k.id} {k.start_ns} {k.ino}" for k in keys]
        if not items:
            return []
        out: list[wire.Reader] = []
        with self._lock:
            for line in _batched(b"take", items):
                self._send(line)
                out.extend(self._reply(timeout)[0])
        return out


def _batched(verb: bytes, items: Iterable[str]) -> list[bytes]:
    lines: list[bytes] = []
    current: list[str] = []
    size = 0
    for item in items:
        if current and size + len(item) + 1 > LINE_MAX:
            lines.append(verb + b" " + " ".join(current).encode() + b"\n")
            current, size = [], 0
        current.append(item)
        size += len(item) + 1
    if current:
        lines.append(verb + b" " + " ".join(current).encode() + b"\n")
    return lines
