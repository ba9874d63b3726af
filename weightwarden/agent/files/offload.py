"""Reads that can hang, done off the watcher's thread and never waited on.

Reading another process's command line or memory map makes the kernel touch
that process's memory; a process whose argv sits on a page of a stalled
FUSE file (any user can arrange that) makes the read hang until the FUSE
server answers, maybe forever. So such reads run in worker threads: the
watcher submits a job and goes on answering permission events, results come
back through ``results()`` (and a byte on ``fileno()`` to wake its poll). A
job still running after ``timeout`` marks its pid as stalling (no more jobs
for it) and its worker as stuck; a fresh worker replaces it, up to
``max_workers``. Past that no new job starts, and ``degraded`` says why.
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

from weightwarden import logs
from weightwarden.agent.files import kernel


@dataclass
class _Job:
    tag: str
    pid: int
    fn: Callable[[], Any]
    key: Hashable
    started: float = 0.0
    stuck: bool = False
    done: threading.Event = field(default_factory=threading.Event)


class Offloader:
    def __init__(self, timeout: float = 0.3, max_workers: int = 8, max_queue: int = 10_000) -> None:
        self.timeout = timeout
        self.max_workers = max_workers
        self.max_queue = max_queue
        self.log = logs.get("agent.files")
        self._jobs: queue.Queue[_Job | None] = queue.Queue()
        self._done: queue.Queue[tuple[str, int, Any]] = queue.Queue()
        self._running: dict[int, _Job] = {}  # worker ident -> its job now
        self._lock = threading.Lock()  # guards _running and _workers; never held across a read
        self._workers: list[threading.Thread] = []
        self.stalling: set[Hashable] = set()  # pids (or other keys) whose reads hung
        self.refused = 0
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._closed = False
        self._spawn()
        self._spawn()  # two: one stuck job never holds up the others

    def fileno(self) -> int:
        return self._wake_r

    @property
    def stuck(self) -> int:
        with self._lock:
            return sum(1 for job in self._running.values() if job.stuck)

    @property
    def degraded(self) -> str | None:
        n = self.stuck
        if n == 0:
            return None
        return (f"{n} reads are stuck ({sorted(map(str, self.stalling))[:10]}): a process's memory or a mount is "
                "on a stalled filesystem; those are skipped (no command line, no mark)")

    def submit(self, tag: str, pid: int, fn: Callable[[], Any], key: Hashable = None, wait: float = 0.0) -> bool:
        """Run ``fn`` in a worker; ``key`` (default: the pid) is what gets skipped if it hangs.
        With ``wait``, return once it is done or ``wait`` seconds passed, whichever comes first."""
        key = pid if key is None else key
        if key in self.stalling or self._jobs.qsize() >= self.max_queue:
            self.refused += 1
            return False
        job = _Job(tag, pid, fn, key)
        self._jobs.put(job)
        if wait > 0:
            job.done.wait(wait)
        return True

    def results(self) -> list[tuple[str, int, Any]]:
        kernel.drain(self._wake_r)
        out = []
        while True:
            try:
                out.append(self._done.get_nowait())
            except queue.Empty:
                return out

    def check(self, now: float | None = None) -> None:
        """Flag jobs running past the timeout, and keep one worker free while the cap allows."""
        now = time.monotonic() if now is None else now
        with self._lock:
            for job in self._running.values():
                if not job.stuck and now - job.started > self.timeout:
                    job.stuck = True
                    self.stalling.add(job.key)
                    self.log.warning("proc_read_stuck", pid=job.pid, what=job.tag,
                                     detail="reading this process's memory hangs; it is skipped from now on")
            busy = len(self._running)
            spawn = busy >= len(self._workers) and len(self._workers) < self.max_workers
        if spawn:
            self._spawn()

    def forget(self, alive: Callable[[int], bool]) -> None:
        """Stalling pids that exited: the pid may be reused by a process that does not stall."""
        with self._lock:
            running = {job.key for job in self._running.values()}
        self.stalling = {k for k in self.stalling if not isinstance(k, int) or k in running or alive(k)}

    def _spawn(self) -> None:
        t = threading.Thread(target=self._work, name="file-watcher-proc", daemon=True)
        with self._lock:
            self._workers.append(t)
        t.start()

    def _work(self) -> None:
        me = threading.get_ident()
        while True:
            job = self._jobs.get()
            if job is None:
                return
            job.started = time.monotonic()
            with self._lock:
                self._running[me] = job
            try:
                value = job.fn()
            except Exception as exc:  # noqa: BLE001 - a vanished process is a normal answer
                value = exc
            with self._lock:
                del self._running[me]
                if job.stuck:
                    self.stalling.discard(job.key)  # it answered in the end
            self._done.put((job.tag, job.pid, value))
            job.done.set()
            if not self._closed:
                with contextlib.suppress(OSError):  # the pipe is full (BlockingIOError): the watcher is awake
                    os.write(self._wake_w, b"x")

    def close(self) -> None:
        self._closed = True
        with self._lock:
            workers = list(self._workers)
        for _ in workers:
            self._jobs.put(None)
        for t in workers:
            t.join(timeout=0.2)  # a stuck worker is a daemon thread: left behind, never waited for
        if not any(t.is_alive() for t in workers):
            # With a worker still stuck the pipe stays open: its late write must not hit a reused fd.
            os.close(self._wake_r)
            os.close(self._wake_w)
