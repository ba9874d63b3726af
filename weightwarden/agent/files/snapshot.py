"""Open and close notifications of the weights, read the moment they arrive, by a thread that
waits on nothing else.

Nothing here answers anything: the weights are watched with plain notifications (no
permission events), so an open never waits for the agent, whether it runs, is stopped
(SIGSTOP) or is gone. What this thread adds is speed: it reads the opener's I/O counters and
identity (kernel state, never its memory) as soon as the event is read, while a short-lived
reader (`cat`) is most likely still alive, and hands everything slower (paths, descriptions,
mappings) to the watcher's thread. Where reads are not counted in the kernel, it also takes the
offset of the opener's descriptor on the file: bytes it read before we looked, so that the
baseline of "bytes read since the open" is its rchar less that offset.

It never opens a file itself (O_PATH handles do not count), and its own process's events are
dropped without a look.
"""

from __future__ import annotations

import contextlib
import os
import select
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from weightwarden.agent.files import fanotify as fan
from weightwarden.agent.files import kernel
from weightwarden.agent.files.procio import ProcFields, identity, io_counters, scan_fds

MAX_BACKLOG = 20_000  # events (each holds an open fd) waiting for the watcher thread
IDENTITY_TTL_S = 10.0


@dataclass(frozen=True, slots=True)
class Snapshot:
    event: fan.FanEvent
    rchar: int | None  # the process's rchar when the event was read (None: gone, or our own)
    ts: float
    proc: ProcFields | None  # who the opener is, read at once (it may be gone a moment later)
    mnt_ns: str | None = None  # its mount namespace ("mnt:[4026531841]")
    position: int | None = None  # its descriptors' offset on the file when we looked (opens only)
    io_uring: bool = False  # it has an io_uring instance (its reads through it bypass rchar)


class Snapshotter:
    def __init__(self, group: fan.Fanotify, own_pid: int, proc_root: str = "/proc",
                 on_open: Callable[[int], None] | None = None, positions: bool = False) -> None:
        self.group = group
        self.on_open = on_open  # a new opener: describe it (command line) while it lives, in a worker
        self.positions = positions  # read descriptor offsets too (reads not counted in the kernel)
        self.own_pid = own_pid
        self.proc_root = proc_root
        self.backlog: deque[Snapshot] = deque()
        self._who: dict[int, tuple[float, ProcFields | None, str | None]] = {}  # pid -> (when, identity, ns)
        self.dropped = 0
        self.overflows = 0
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._stop = threading.Event()
        self._idle = threading.Event()  # clear while a batch is between read() and the backlog
        self._idle.set()
        self._thread = threading.Thread(target=self._run, name="file-watcher-snapshot", daemon=True)

    def fileno(self) -> int:
        return self._wake_r

    def start(self) -> None:
        self._thread.start()

    def settled(self, timeout: float = 0.05) -> None:
        """Wait until a batch being read is in the backlog. A process can open, write and exit
        between our read and the backlog: its close-write must not be judged before its open is known."""
        self._idle.wait(timeout)

    def take(self) -> list[Snapshot]:
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
                self._read()
            finally:
                self._idle.set()

    def _read(self) -> None:
        batch = self.group.read()
        now = time.time()
        for ev in batch:
            if ev.mask & fan.FAN_Q_OVERFLOW:
                self.overflows += 1
                continue
            if ev.pid == self.own_pid or len(self.backlog) >= MAX_BACKLOG:
                if ev.pid != self.own_pid:
                    self.dropped += 1  # counted and reported: the watcher thread is far behind
                if ev.fd >= 0:
                    os.close(ev.fd)
                continue
            rchar, proc, ns, position, ring = None, None, None, None, False
            if ev.fd >= 0:
                io = io_counters(ev.pid, self.proc_root)
                rchar = io.rchar if io else None
                if ev.mask & fan.FAN_OPEN:
                    known = ev.pid in self._who and now - self._who[ev.pid][0] < IDENTITY_TTL_S
                    proc, ns = self._identity(ev.pid, now)
                    if proc is None:
                        rchar = None  # gone (a zombie's counters read as zeros): its exit record says
                    if self.positions and rchar is not None:
                        position, ring = self._position(ev)
                    if not known and self.on_open is not None:
                        self.on_open(ev.pid)
            self.backlog.append(Snapshot(ev, rchar, now, proc, ns, position, ring))
        if batch:
            with contextlib.suppress(BlockingIOError):  # full: the watcher is awake already
                os.write(self._wake_w, b"x")

    def _position(self, ev: fan.FanEvent) -> tuple[int | None, bool]:
        """The largest offset of the opener's descriptors on this file (matched by the link text), and
        whether it has an io_uring instance."""
        view = fan.fd_path(ev.fd)
        scan = scan_fds(ev.pid, view, self.proc_root) if view else None
        if scan is None:
            return None, False
        return (max(f.position for f in scan.files) if scan.files else None), scan.io_uring

    def _identity(self, pid: int, now: float) -> tuple[ProcFields | None, str | None]:
        """Name, exe, uid, cgroup (kernel state only, never the opener's memory), cached a few seconds
        per pid: a loop of opens by one process costs one read."""
        hit = self._who.get(pid)
        if hit is not None and now - hit[0] < IDENTITY_TTL_S:
            return hit[1], hit[2]
        if len(self._who) > 10_000:
            self._who = {p: v for p, v in self._who.items() if now - v[0] < IDENTITY_TTL_S}
        proc = identity(pid, self.proc_root)
        try:
            ns: str | None = os.readlink(f"{self.proc_root}/{pid}/ns/mnt")  # noqa: PTH115 - per opener: hot path: pathlib costs 2-4x os here on 3.11
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
