"""Permission events answered the moment they are read, by a thread that waits on nothing else.

The opener of a weight file waits in open() until we answer. This thread
reads the opener's I/O counters (the baseline for "bytes read since this
open"; /proc/PID/io reads kernel counters, never the process's memory), its
identity (same kind of files), lets a worker try its command line for at most
``PREFETCH_S`` (a ``cat`` is gone a millisecond after the answer; a process
whose memory hangs the read costs one such wait, then is skipped), and
answers; everything slower (paths, process descriptions, mappings)
happens afterwards on the watcher's thread. It never opens a file: with a
whole filesystem marked, its own opens would be permission events that only
it can answer. Its own process's events are allowed without a look.
"""

from __future__ import annotations

import os
import select
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from weightwarden.agent.files import fanotify as fan
from weightwarden.agent.files import kernel
from weightwarden.agent.files.procio import identity, io_counters

MAX_BACKLOG = 20_000  # events (each holds an open fd) waiting for the watcher thread


IDENTITY_TTL_S = 10.0


@dataclass(frozen=True, slots=True)
class Answered:
    event: fan.FanEvent
    rchar: int | None  # the process's rchar when the event was read (None: gone, or our own)
    ts: float
    proc: dict[str, Any] | None  # who the opener is, read while it waits (it may be gone a moment later)
    mnt_ns: str | None = None  # its mount namespace ("mnt:[4026531841]")


class Answerer:
    def __init__(self, group: fan.Fanotify, own_pid: int, proc_root: str = "/proc",
                 prefetch: Callable[[int], None] | None = None) -> None:
        self.group = group
        self.prefetch = prefetch  # a bounded wait for what only the process's memory says (its argv)
        self.own_pid = own_pid
        self.proc_root = proc_root
        self.backlog: deque[Answered] = deque()
        self._who: dict[int, tuple[float, dict[str, Any] | None, str | None]] = {}  # pid -> (when, identity, ns)
        self.dropped = 0
        self.overflows = 0
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._stop = threading.Event()
        self._idle = threading.Event()  # clear while a batch is between read() and the backlog
        self._idle.set()
        self._thread = threading.Thread(target=self._run, name="file-watcher-answer", daemon=True)

    def fileno(self) -> int:
        return self._wake_r

    def start(self) -> None:
        self._thread.start()

    def settled(self, timeout: float = 0.05) -> None:
        """Wait until a batch being answered is in the backlog. A process can open, write and exit
        between our answer and the backlog: its close-write must not be judged before its open is known."""
        self._idle.wait(timeout)

    def take(self) -> list[Answered]:
        kernel.drain(self._wake_r)
        out = []
        while self.backlog:
            out.append(self.backlog.popleft())
        return out

    def _run(self) -> None:
        poller = select.poll()
        poller.register(self.group.fileno(), select.POLLIN)
        while not self._stop.is_set():
            if not poller.poll(200):
                continue
            self._idle.clear()
            try:
                self._answer()
            finally:
                self._idle.set()

    def _answer(self) -> None:
        batch = self.group.read()
        now = time.time()
        for ev in batch:
            rchar, proc, ns = None, None, None
            if ev.pid != self.own_pid and ev.fd >= 0:
                io = io_counters(ev.pid, self.proc_root)
                rchar = io.rchar if io else None
                if ev.mask & fan.FAN_OPEN_PERM:
                    known = ev.pid in self._who and now - self._who[ev.pid][0] < IDENTITY_TTL_S
                    proc, ns = self._identity(ev.pid, now)
                    if not known and self.prefetch is not None:
                        self.prefetch(ev.pid)
            if ev.mask & fan.FAN_OPEN_PERM:
                self.group.allow(ev.fd)  # always: we observe, we never deny
            if ev.mask & fan.FAN_Q_OVERFLOW:
                self.overflows += 1
                continue
            if ev.pid == self.own_pid or len(self.backlog) >= MAX_BACKLOG:
                if ev.pid != self.own_pid:
                    self.dropped += 1  # counted and reported: the watcher thread is far behind
                if ev.fd >= 0:
                    os.close(ev.fd)
                continue
            self.backlog.append(Answered(ev, rchar, now, proc, ns))
        if batch:
            try:
                os.write(self._wake_w, b"x")
            except BlockingIOError:
                pass

    def _identity(self, pid: int, now: float) -> tuple[dict[str, Any] | None, str | None]:
        """Name, exe, uid, cgroup (kernel state only, never the opener's memory), cached a few seconds
        per pid: a loop of opens by one process costs one read."""
        hit = self._who.get(pid)
        if hit is not None and now - hit[0] < IDENTITY_TTL_S:
            return hit[1], hit[2]
        if len(self._who) > 10_000:
            self._who = {p: v for p, v in self._who.items() if now - v[0] < IDENTITY_TTL_S}
        proc = identity(pid, self.proc_root)
        try:
            ns: str | None = os.readlink(f"{self.proc_root}/{pid}/ns/mnt")
        except OSError:
            ns = None
        self._who[pid] = (now, proc, ns)
        return proc, ns

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        for item in self.take():
            if item.event.fd >= 0:
                os.close(item.event.fd)
        os.close(self._wake_r)
        os.close(self._wake_w)
