"""The file-read sensor as the watcher uses it: which weights the kernel knows, what it counted
for each (process, file), and the final counts of processes that are gone.

Counts in the kernel only grow; ``poll`` reads them all (bounded: at most one entry per process
and weight file it read), and hands back those that changed. A process is gone when /proc no
longer shows it with the same start time; its entries are then taken out of the kernel's table
with their final counts. What a session has reported already is ``consumed`` here, so the next
session of the same process and file starts from there.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from weightwarden.agent.files.ebpf import wire
from weightwarden.agent.files.ebpf.loader import Feature, FileBpf, FileBpfError, Weight
from weightwarden.agent.files.inodes import WeightFile
from weightwarden.agent.files.procio import start_ticks, ticks_of

KINDS = {"weight": wire.K_FILE, "canary": wire.K_FILE, "staged": wire.K_FILE, "dir": wire.K_DIR,
         "fs": wire.K_FILE | wire.K_FS}


@dataclass
class Tally:
    reader: wire.Reader  # the latest cumulative counts
    consumed_bytes: int = 0  # already reported in final records
    consumed_calls: int = 0
    gone: bool = False  # the process is gone: these counts are final

    @property
    def bytes(self) -> int:
        return max(0, self.reader.bytes - self.consumed_bytes)

    @property
    def calls(self) -> int:
        return max(0, self.reader.calls - self.consumed_calls)


@dataclass
class Poll:
    changed: list[Tally]
    lost: int  # counts the kernel could not keep since the last poll


class KernelReads:
    def __init__(self, on_event: Callable[[wire.Relink | wire.Opener], None] | None = None, proc_root: str = "/proc",
                 binary: Path | None = None) -> None:
        self.bpf = FileBpf(binary, on_event)
        self.proc_root = proc_root
        self.features: dict[str, Feature] = {}
        self.tallies: dict[wire.ReaderKey, Tally] = {}
        self._lost_seen = 0
        self._queued: list[Weight] = []

    def start(self) -> dict[str, Feature]:
        self.features = self.bpf.start()
        return self.features

    def on(self, feature: str) -> bool:
        f = self.features.get(feature)
        return f is not None and f.on and self.bpf.alive

    def close(self) -> None:
        self.bpf.close()

    # -- the weights the kernel knows --------------------------------------------

    def add(self, wf: WeightFile) -> None:
        """Queued; sent by ``flush`` (a walk of thousands of files is a few writes, not thousands)."""
        self._queued.append(Weight(wf.id, wf.dev, 0 if wf.kind == "fs" else wf.ino, KINDS[wf.kind]))

    def flush(self) -> None:
        if self._queued:
            queued, self._queued = self._queued, []
            self.bpf.add(queued)

    def remove(self, wf: WeightFile) -> None:
        self._queued = [w for w in self._queued if w.id != wf.id]
        self.bpf.remove([(wf.dev, 0 if wf.kind == "fs" else wf.ino)])

    # -- counts ----------------------------------------------------------------------

    def poll(self) -> Poll:
        """Counts that changed since the last poll, and final counts of processes now gone."""
        self.flush()
        counts = self.bpf.read()
        changed: dict[wire.ReaderKey, Tally] = {}
        gone: list[wire.ReaderKey] = []
        alive: dict[int, int | None] = {}  # tgid -> its start now (one /proc read per process)
        for r in counts.readers:
            tally = self.tallies.get(r.key)
            if tally is None:
                tally = self.tallies[r.key] = Tally(r)
                changed[r.key] = tally
            elif (r.bytes, r.calls, r.mapped) != (tally.reader.bytes, tally.reader.calls, tally.reader.mapped):
                tally.reader = r
                changed[r.key] = tally
            if r.key.tgid not in alive:
                alive[r.key.tgid] = start_ticks(r.key.tgid, self.proc_root)
            if alive[r.key.tgid] != ticks_of(r.key.start_ns):
                gone.append(r.key)
        for r in self.bpf.take(gone) if gone else []:
            tally = self.tallies[r.key]
            if (r.bytes, r.calls, r.mapped) != (tally.reader.bytes, tally.reader.calls, tally.reader.mapped):
                changed[r.key] = tally
            tally.reader = r
            tally.gone = True
            changed[r.key] = tally
        lost = counts.lost.total - self._lost_seen
        self._lost_seen = counts.lost.total
        return Poll(list(changed.values()), max(0, lost))

    def seen(self, tgid: int) -> bool:
        """Whether the process that has this pid now read a weight file (the kernel knows at once)."""
        start = self.bpf.seen(tgid)
        return bool(start) and start_ticks(tgid, self.proc_root) in (None, ticks_of(start))

    def consume(self, key: wire.ReaderKey, nbytes: int, calls: int) -> None:
        """A session reported these bytes in its final record: the next one starts after them."""
        tally = self.tallies.get(key)
        if tally is None:
            return
        tally.consumed_bytes += nbytes
        tally.consumed_calls += calls
        if tally.gone:
            del self.tallies[key]

    def forget(self, keys: Iterable[wire.ReaderKey]) -> None:
        for key in keys:
            self.tallies.pop(key, None)


__all__ = ["FileBpfError", "KernelReads", "Poll", "Tally"]
