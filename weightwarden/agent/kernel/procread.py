"""Reads of files that can block forever, with a deadline: another process's memory.

``/proc/PID/cmdline`` and ``environ`` are read out of the process's own pages. A
process whose argv sits on a stalled FUSE mount (any user can arrange that)
blocks such a read, uninterruptibly. So these reads run on daemon worker
threads and the caller waits at most ``timeout``: a stalled read answers None
("unknown") and its worker is written off; never a stall of the caller, and
never more than ``max_stuck`` threads lost to one attacker.
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass, field


@dataclass
class _Job:
    path: str
    limit: int
    done: threading.Event = field(default_factory=threading.Event)
    data: bytes | None = None


class BoundedReader:
    def __init__(self, timeout: float = 0.25, max_stuck: int = 4) -> None:
        self.timeout = timeout
        self.max_stuck = max_stuck
        self.stalled = 0  # reads that missed their deadline (reported, never silent)
        self._jobs: queue.Queue[_Job] = queue.Queue()
        self._lock = threading.Lock()
        self._idle = 0
        self._workers = 0

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            with self._lock:
                self._idle -= 1
            try:
                with open(job.path, "rb") as fh:  # noqa: PTH123 - per read: hot path: pathlib costs 2-4x os here on 3.11
                    job.data = fh.read(job.limit)
            except OSError:
                job.data = None
            job.done.set()
            with self._lock:
                self._idle += 1

    def read(self, path: str, limit: int = 1 << 16) -> bytes | None:
        """The file's first ``limit`` bytes, or None if unreadable or not read in time."""
        with self._lock:
            busy = self._workers - self._idle
            if self._idle == 0:
                if busy >= self.max_stuck + 1:
                    self.stalled += 1
                    return None  # every worker is stuck: answer "unknown" at once
                self._workers += 1
                self._idle += 1
                threading.Thread(target=self._work, name="procread", daemon=True).start()
        job = _Job(path, limit)
        self._jobs.put(job)
        if not job.done.wait(self.timeout):
            with self._lock:
                self.stalled += 1
            return None
        return job.data
