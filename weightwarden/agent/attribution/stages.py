"""Pipeline stages: the processes that feed a sender's pipes, named in the sample beside it.

``python c.py | base64 | curl -T -``: the file watcher reports python (it read the weights, and
writes pipe A); curl sends (it reads pipe B); base64, which reads A and writes B, sends nothing and
touches no weight file, so nothing else would ever name it, and the collector could not draw the
line from python to curl. So for each sender that reads a pipe or FIFO, the writers of it are found
(kernel.pipes.PipeWriters), and theirs in turn, up to ``DEPTH`` stages: each is listed in the
sample as a process with ``tx_bytes`` 0, no destinations, and the pipe ends it holds. The collector
decides what they link (a stage reading many pipes, a shim or a supervisor, links nothing).
"""

from __future__ import annotations

from collections.abc import Callable

from weightwarden.agent.attribution.report import ProcessEntry
from weightwarden.agent.kernel.pipes import PipeWriters
from weightwarden.agent.kernel.procmap import ProcessInfo, ProcessTable

DEPTH = 3  # as the collector's relay_depth: reader -> stage -> stage -> stage -> sender at most
MAX_STAGES = 8  # per sample


def read_ends(entry: ProcessEntry) -> set[int]:
    return {int(inode) for inode, end in (entry.get("pipe_ends") or {}).items() if end == "r"}


class Stages:
    def __init__(self, procs: ProcessTable, writers: PipeWriters | None = None) -> None:
        self.procs = procs
        self.writers = writers or PipeWriters(str(procs.proc_root))

    def find(self, processes: list[ProcessEntry], entry: Callable[[int, ProcessInfo], ProcessEntry],
             limit: int = MAX_STAGES) -> list[ProcessEntry]:
        """Sample entries for the stages that feed the pipes these senders read (not already listed)."""
        present = {int(p["pid"]) for p in processes}
        frontier: set[int] = set()
        for p in processes:
            if p.get("tx_bytes") or p.get("local_peers"):
                frontier |= read_ends(p)
        out: list[ProcessEntry] = []
        seen: set[int] = set()
        for _ in range(DEPTH):
            frontier -= seen
            if not frontier or len(out) >= limit:
                break
            seen |= frontier
            found = self.writers.writers(frontier, self.procs.fifo_paths)
            nxt: set[int] = set()
            for inode in sorted(found):
                for pid in sorted(found[inode]):
                    if pid in present or len(out) >= limit:
                        continue
                    info = self.procs.describe(pid)
                    if info is None:
                        continue
                    present.add(pid)
                    stage = entry(pid, info)
                    out.append(stage)
                    nxt |= read_ends(stage)
            frontier = nxt
        return out


__all__ = ["DEPTH", "MAX_STAGES", "Stages"]
