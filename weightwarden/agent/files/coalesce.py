"""Turn a stream of open/read/close notifications into a few records. Pure logic.

One session per (pid, path), ``path`` being the file's weights path whatever name it was opened
by. Where the kernel counts reads (``kernel``: the eBPF sensor's bytes for this process and
file since the session began), that is the number, with ``how`` "kernel". Otherwise bytes come
from the process's rchar counter: its value when the open was first seen (less what the
reader's descriptor had already read by then) and when the file closed.
A session is reported once it has been closed and quiet for ``settle``
seconds (so 1,000 open/read/close cycles a second become one record a
second), and every ``progress_every`` seconds while the file stays open (so a
140 GB read is visible long before it ends).

Some reads never reach rchar: splice and io_uring. The watcher adds what it
sees of them: the largest file offset of the reader's descriptors on the file
(``position``: splice and plain reads move it; not used for a process that
maps the file), and whether the reader has an io_uring instance. A session of an io_uring user whose counted bytes stay
under half the file is reported as the whole file, flagged as an estimate:
a read we cannot measure is never reported as 0. ``how`` says which source
the number came from.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from weightwarden.agent.files.inodes import DevIno


@dataclass
class Session:
    pid: int | None
    path: str
    size: int
    first_ts: float
    last_ts: float
    proc: dict[str, Any] = field(default_factory=dict)
    opens: int = 0
    reads: int = 0
    closes: int = 0
    writes: int = 0
    open_now: int = 0
    bytes_read: int = 0
    cycle_start: int | None = None
    rchar_now: int | None = None
    reported_at: float = 0.0
    reported_bytes: int = 0
    estimated: bool = False
    how: str = "rchar"
    position: int = 0  # the largest file offset seen on the reader's descriptors
    io_uring: bool = False
    extra: dict[str, Any] = field(default_factory=dict)  # host_path, staged_copy_of...: copied into records
    kernel: int | None = None  # bytes the kernel counted in this session (None: not counted there)
    kernel_calls: int = 0
    scan_path: str = ""  # the name its descriptors show in /proc/PID/fd (the name it was opened by)
    file_key: DevIno | None = None  # what the file is known by (the watcher's (device, inode))

    def bytes_so_far(self) -> int:
        if self.kernel:
            # Counted in the kernel; an offset further on is a read the page cache did not see
            # (O_DIRECT). A mapping process's offset says nothing of what it read.
            position = 0 if "mapped_bytes" in self.extra else self.position
            return max(self.kernel, position)
        pending = 0
        if self.open_now and self.cycle_start is not None and self.rchar_now is not None:
            pending = max(0, self.rchar_now - self.cycle_start)
        # A mapping process's offset says nothing of what it read (it may have sought to the end).
        position = 0 if "mapped_bytes" in self.extra else self.position
        return max(self.bytes_read + pending, position)

    def record(self, final: bool) -> dict[str, Any]:
        counted = self.bytes_so_far()
        how = self.how
        estimated = self.estimated
        if self.kernel:
            how = "mmap" if self.how == "mmap" else "position" if counted > self.kernel else "kernel"
            estimated = False
        elif self.position > self.bytes_read and self.position >= counted and not self.estimated \
                and "mapped_bytes" not in self.extra:
            how = "position"
        return {
            "pid": self.pid, "path": self.path, "size": self.size, **self.proc, **self.extra,
            "bytes_read": counted, "opens": self.opens, "reads": max(self.reads, self.kernel_calls),
            "closes": self.closes, "close_write": self.writes, "first_ts": self.first_ts, "last_ts": self.last_ts,
            "still_open": self.open_now > 0, "final": final, "bytes_estimated": estimated,
            "how": how if self.pid is not None else "inotify",
        }


class Coalescer:
    def __init__(self, settle: float = 1.0, progress_every: float = 5.0, max_sessions: int = 10_000,
                 quiet: float = 3.0,
                 enrich: Callable[[Session, dict[str, Any]], None] | None = None,
                 on_final: Callable[[Session], None] | None = None) -> None:
        self.enrich = enrich  # adds what the file is known by (its names) to each record
        self.on_final = on_final  # a session's last record is made
        self.settle = settle
        self.quiet = quiet  # a session known only from the kernel's counts ends once they stop this long
        self.progress_every = progress_every
        self.max_sessions = max_sessions
        self.sessions: dict[tuple[int | None, str], Session] = {}
        self.overflowed = 0

    def _session(self, ts: float, pid: int | None, path: str, size: int, proc: dict[str, Any]) -> Session:
        key = (pid, path)
        s = self.sessions.get(key)
        if s is None:
            if len(self.sessions) >= self.max_sessions:
                self.overflowed += 1  # reported by the watcher; memory stays bounded
                oldest = min(self.sessions.values(), key=lambda x: x.last_ts)
                del self.sessions[(oldest.pid, oldest.path)]
            s = self.sessions[key] = Session(pid, path, size, ts, ts, dict(proc))
        s.last_ts = ts
        if size:
            s.size = size
        return s

    def opened(self, ts: float, pid: int | None, path: str, size: int, rchar: int | None,
               proc: dict[str, Any] | None = None, position: int | None = None) -> None:
        """An open, seen at ``ts`` with the opener's rchar then; ``position``: what its
        descriptor had read already (a notification arrives after the open, maybe after reads)."""
        s = self._session(ts, pid, path, size, proc or {})
        s.opens += 1
        if s.open_now == 0:
            s.cycle_start = rchar - min(position or 0, rchar) if rchar is not None else None
        s.open_now += 1
        s.rchar_now = rchar

    def accessed(self, ts: float, pid: int | None, path: str, rchar: int | None = None) -> None:
        s = self.sessions.get((pid, path))
        if s is None:
            # Opened before we watched, or the open was merged away: count what we see from now.
            s = self._session(ts, pid, path, 0, {})
            s.open_now, s.cycle_start = 1, rchar
        s.reads += 1
        s.last_ts = ts
        if rchar is not None:
            s.rchar_now = rchar

    def closed(self, ts: float, pid: int | None, path: str, rchar: int | None, wrote: bool = False,
               estimate_whole_file: bool = False, how: str | None = None) -> None:
        s = self.sessions.get((pid, path))
        if s is None:
            return
        s.closes += 1
        s.writes += int(wrote)
        s.last_ts = ts
        if rchar is not None:
            s.rchar_now = rchar
        if s.open_now:
            s.open_now -= 1
            if s.open_now == 0:
                if s.cycle_start is not None and rchar is not None:
                    s.bytes_read += max(0, rchar - s.cycle_start)
                    if how and not s.estimated:
                        s.how = how
                elif rchar is not None and how == "taskstats" and not s.estimated:
                    # Gone before its counters were read at the open: everything it read in its
                    # life is the most it can have read of the file (a `cat` reads little else).
                    s.bytes_read += rchar
                    s.how = how
                elif estimate_whole_file:
                    # The reader vanished before its counters could be read: assume the
                    # worst a security tool should assume, and say it is an estimate.
                    s.bytes_read += s.size
                    s.estimated, s.how = True, "estimate"
                if s.position > s.bytes_read and not s.estimated and "mapped_bytes" not in s.extra:
                    # Reads rchar missed (splice) moved the offset; what came after our last look is
                    # unseen, so a file not seen read to its end counts whole, as an estimate.
                    s.bytes_read = max(s.position, s.size)
                    s.estimated, s.how = s.position < s.size, "position"
                if s.io_uring and not s.estimated and max(s.bytes_read, s.position) < s.size / 2:
                    # io_uring reads bypass rchar: unmeasured, so the whole file, as an estimate.
                    s.bytes_read = max(s.bytes_read, s.size)
                    s.estimated, s.how = True, "io_uring"
                s.cycle_start = None

    def baseline(self, pid: int | None, path: str) -> int | None:
        s = self.sessions.get((pid, path))
        return s.cycle_start if s is not None and s.open_now else None

    def update_rchar(self, pid: int, rchar: int) -> None:
        for (spid, _path), s in self.sessions.items():
            if spid == pid and s.open_now:
                s.rchar_now = rchar

    def open_pids(self) -> set[int]:
        return {s.pid for s in self.sessions.values() if s.open_now and s.pid is not None}

    def counted(self, ts: float, pid: int, path: str, size: int, kernel: int, calls: int,
                proc: dict[str, Any] | None = None) -> Session:
        """What the kernel counted for this process and file since the session began: made if
        the open was never seen (the notification was lost, or the read began before we ran)."""
        s = self.sessions.get((pid, path))
        if s is None:
            s = self._session(ts, pid, path, size, proc or {})
        if (kernel != s.kernel or calls != s.kernel_calls) and not s.opens:
            s.last_ts = max(s.last_ts, ts)  # no open was seen, so no close will be: still reading
        s.kernel, s.kernel_calls = kernel, calls
        return s

    def due(self, now: float, counted_at: float | None = None) -> list[dict[str, Any]]:
        """Records to send now. ``counted_at``: when the kernel's counts were last read (a session
        that closed after that is not final until they have been read again)."""
        out = []
        for key, s in list(self.sessions.items()):
            if counted_at is not None and s.open_now == 0 and s.last_ts > counted_at:
                continue
            if s.open_now == 0 and now - s.last_ts >= (self.settle if s.opens else max(self.settle, self.quiet)):
                out.append(self._record(s, final=True))
                del self.sessions[key]
            elif (s.open_now or (s.kernel and not s.opens)) and now - max(s.reported_at, s.first_ts) >= self.progress_every:
                # Still open, or still read by a process whose open was never seen.
                s.reported_at = now
                out.append(self._record(s, final=False))
        return out

    def _record(self, s: Session, final: bool) -> dict[str, Any]:
        rec = s.record(final)
        if self.enrich is not None:
            self.enrich(s, rec)
        if final and self.on_final is not None:
            self.on_final(s)
        return rec

    def flush(self) -> list[dict[str, Any]]:
        out = [self._record(s, final=s.open_now == 0) for s in self.sessions.values()]
        self.sessions.clear()
        return out
