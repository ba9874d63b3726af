"""Who touched the weights: fanotify on weight paths, /proc for bytes and mappings.

- Each open of a weight file is held on FAN_OPEN_PERM while we read the
  process's rchar, so bytes read are measured from the first byte (the
  process waits in open(); the kernel allows it by itself if we vanish).
- Bytes read (read(), pread, sendfile, copy_file_range alike) are the
  process's rchar growth while the file is open; opens and closes are
  coalesced per (pid, path) into a handful of ``file_access`` records.
- Processes that opened weights are scanned for mappings of weight files
  (/proc/PID/smaps): a mapped and touched file makes a ``weight_holder``.
- Close-writes anywhere on the same mounts by a recent weight reader, of a
  file about the size of what it read, make a ``weights_copy``.
- Canary files: any open is a ``canary_read`` at once.
Without fanotify (no CAP_SYS_ADMIN) it falls back to inotify, which has no pids.

Output: event payloads on ``self.out``, a queue the daemon drains.
"""

from __future__ import annotations

import os
import queue
import select
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from weightwarden import logs
from weightwarden.agent.files import fanotify as fan
from weightwarden.agent.files.coalesce import Coalescer
from weightwarden.agent.files.patterns import WeightPaths
from weightwarden.agent.files.procio import io_counters, mapped_weights
from weightwarden.agent.paths import netns_key
from weightwarden.agent.procmap import ProcessTable
from weightwarden.events import CanaryRead, EventsDropped, FileAccess, Payload, WeightHolder, WeightsCopy

RESCAN_S = 2.0
HOLDER_SCAN_S = 1.0
READER_MEMORY_S = 120.0
COPY_MIN_BYTES = 1 << 20
CANARY_REPEAT_S = 10.0
# No FAN_ACCESS: an event per read() cost readers 14-30% at page-cache speed
# (bench/files.py). Bytes come from rchar at open and close, and progress from
# a 1 s refresh of open readers, so reads are measured without per-read events.
WEIGHT_MASK = fan.FAN_OPEN_PERM | fan.FAN_CLOSE_NOWRITE | fan.FAN_CLOSE_WRITE | fan.FAN_EVENT_ON_CHILD
STAGING_DIRS = ("/", "/tmp", "/var/tmp", "/dev/shm")


@dataclass
class Reader:
    """A process that read weights recently: the evidence a copy or upload needs."""

    pid: int
    proc: dict[str, Any]
    sessions: dict[tuple[str, float], int] = field(default_factory=dict)  # (path, first_ts) -> bytes so far
    last_ts: float = 0.0

    @property
    def bytes_read(self) -> int:
        return sum(self.sessions.values())

    @property
    def paths(self) -> set[str]:
        return {path for path, _ts in self.sessions}


class FileWatcher:
    def __init__(self, weights: WeightPaths, clock: Callable[[], float] = time.time, settle: float = 1.0,
                 staging_dirs: tuple[str, ...] = STAGING_DIRS) -> None:
        self.weights = weights
        self.clock = clock
        self.out: queue.Queue[Payload] = queue.Queue(maxsize=100_000)
        self.coalescer = Coalescer(settle=settle)
        self.procs = ProcessTable()
        self.log = logs.get("agent.files")
        self.mode = "off"
        self.detail = ""
        self.marked: set[str] = set()
        self.readers: dict[int, Reader] = {}
        self.holders: dict[int, int] = {}  # pid -> resident bytes last reported
        self.canary_seen: dict[tuple[int, str], float] = {}
        self.staging_dirs = staging_dirs
        self.dropped = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._content: fan.Fanotify | None = None
        self._writes: fan.Fanotify | None = None
        self._inotify: Any = None
        self._exits: Any = None
        self.exit_rchar: dict[int, tuple[int, float]] = {}  # pid -> (rchar at exit, when)
        self._pending: dict[int, list[tuple[str, bool, float]]] = {}  # pid -> closes waiting for its exit record
        self._pending_writes: dict[int, list[tuple[str, int]]] = {}  # pid -> (copy, size) waiting likewise
        self._own_pid = os.getpid()

    # -- lifecycle ---------------------------------------------------------

    def start(self) -> None:
        try:
            self._content = fan.Fanotify(content=True)
            self._writes = fan.Fanotify(content=False)
            self.mode = "fanotify"
            self.detail = "fanotify permission and access events on weight paths: pids, bytes and mappings"
        except OSError as exc:
            from weightwarden.agent.files.inotify import Inotify

            self._inotify = Inotify()
            self.mode = "inotify"
            self.detail = (f"fanotify unavailable ({exc.strerror}; needs CAP_SYS_ADMIN): inotify fallback, "
                           "reads are seen without pids or byte counts")
        if self._content is not None and netns_key():
            # The kernel sends taskstats exit records in the host's network namespace only.
            self.detail += ("; inside a network namespace there are no taskstats exit records: a reader that "
                            "exits right after closing is counted as reading the whole file (bytes_estimated)")
        elif self._content is not None:
            try:
                from weightwarden.agent.files.exits import ExitListener

                self._exits = ExitListener()
            except Exception as exc:  # noqa: BLE001 - optional: without it, fast exiters are estimated
                self.detail += f"; no taskstats exit records ({exc}): fast exiters are estimated (bytes_estimated)"
        self._mark_new_dirs()
        if self._writes is not None:
            for d in self.staging_dirs:
                try:
                    self._writes.mark(d, fan.FAN_CLOSE_WRITE, fan.FAN_MARK_MOUNT)
                except OSError:
                    pass
        self._thread = threading.Thread(target=self._run, name="file-watcher", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=3)
        for src in (self._content, self._writes, self._inotify, self._exits):
            if src is not None:
                src.close()
        for record in self.coalescer.flush():
            self._emit(FileAccess, record)

    def update(self, weights: WeightPaths) -> None:
        """A reloaded policy: new paths are marked on the next rescan; staged copies stay watched."""
        weights.staged = dict(self.weights.staged)
        self.weights = weights

    # -- marks -------------------------------------------------------------

    def _mark_new_dirs(self) -> None:
        """Mark every directory under the weight roots, including ones created since."""
        for root in self.weights.roots():
            if not os.path.isdir(root):
                continue  # not there yet: picked up by a later rescan
            for d, subdirs, _files in os.walk(root):
                if d not in self.marked:
                    self._mark_dir(d)
                subdirs[:] = [s for s in subdirs if not os.path.islink(os.path.join(d, s))]

    def _mark_dir(self, path: str) -> None:
        try:
            if self._content is not None:
                self._content.mark(path, WEIGHT_MASK)
            elif self._inotify is not None:
                self._inotify.watch(path)
            self.marked.add(path)
        except OSError as exc:
            self.log.warning("file_mark_failed", path=path, error=str(exc))

    # -- event loop --------------------------------------------------------

    def _emit(self, model: type[Payload], data: dict[str, Any]) -> None:
        try:
            payload = model.model_validate(data)
        except ValidationError as exc:
            # Our bug, not the host's: logged and counted, and the watcher keeps going.
            self.dropped += 1
            self.log.error("file_event_invalid", type=model.TYPE, error=str(exc)[:2000])
            return
        try:
            self.out.put_nowait(payload)
        except queue.Full:
            self.dropped += 1

    def _proc(self, pid: int) -> dict[str, Any]:
        info = self.procs.describe(pid)
        if info is None:
            return {"name": None, "exe": None, "uid": None}
        return {"name": info.name, "exe": info.exe, "uid": info.uid, "ppid": info.ppid,
                "cmdline": list(info.cmdline)[:8], "pipes": list(info.pipes), "user": info.user,
                "cgroup": info.cgroup, "start_time": info.create_time}

    def _run(self) -> None:
        next_rescan = next_scan = 0.0
        sources = [s for s in (self._content, self._writes, self._inotify, self._exits) if s is not None]
        while not self._stop.is_set():
            ready, _, _ = select.select(sources, [], [], 0.2)
            now = self.clock()
            for src in ready:
                try:
                    if src is self._inotify:
                        self._on_inotify(now)
                    elif src is self._exits:
                        self._on_exits(now)
                    else:
                        self._on_fanotify(src, now)
                except Exception as exc:  # noqa: BLE001 - one odd event must not stop the watcher
                    self.log.warning("file_event_error", error=repr(exc))
            if now >= next_scan:
                next_scan = now + HOLDER_SCAN_S
                self._scan_open_readers(now)
                for pid in [p for p, (_r, ts) in self.exit_rchar.items() if now - ts > 30]:
                    del self.exit_rchar[pid]
            for record in self.coalescer.due(now):
                self._remember_reader(record)
                self._emit(FileAccess, record)
            if now >= next_rescan:
                next_rescan = now + RESCAN_S
                self._mark_new_dirs()

    def _on_fanotify(self, src: fan.Fanotify, now: float) -> None:
        for ev in src.read():
            try:
                if ev.mask & fan.FAN_Q_OVERFLOW:
                    self.dropped += 1
                    self._emit(EventsDropped, {"reason": "fanotify queue overflow", "source": "file-watcher"})
                    continue
                if ev.pid == self._own_pid or ev.path is None:
                    continue
                if src is self._writes:
                    self._on_write(ev, now)
                else:
                    self._on_weight_event(ev, now)
            finally:
                if ev.mask & fan.FAN_OPEN_PERM:
                    src.allow(ev.fd)  # always: we observe, we never deny
                if ev.fd >= 0:
                    os.close(ev.fd)

    def _on_weight_event(self, ev: fan.FanEvent, now: float) -> None:
        path = ev.path
        assert path is not None
        if not self.weights.matches(path):
            return  # a README next to the weights, or a non-weight file in a staging directory
        if self.weights.is_canary(path):
            if ev.mask & fan.FAN_OPEN_PERM and now - self.canary_seen.get((ev.pid, path), 0) >= CANARY_REPEAT_S:
                self.canary_seen[(ev.pid, path)] = now
                self._emit(CanaryRead, {"pid": ev.pid, "path": path, "severity": "critical", **self._proc(ev.pid)})
            return
        # Every event we mark for is an open (held: the baseline) or a close (the total).
        io = io_counters(ev.pid)
        rchar = io.rchar if io else None
        if ev.mask & fan.FAN_OPEN_PERM:
            size = _fd_size(ev.fd)
            known = (ev.pid, path) in self.coalescer.sessions
            proc = None if known else self._proc(ev.pid)
            staged = self.weights.staged_from(path)
            if proc is not None and staged:
                proc["staged_copy_of"] = staged
            self.coalescer.opened(now, ev.pid, path, size, rchar, proc)
            self.holders.setdefault(ev.pid, -1)  # scan its mappings from now on
        if ev.mask & (fan.FAN_CLOSE_NOWRITE | fan.FAN_CLOSE_WRITE):
            wrote = bool(ev.mask & fan.FAN_CLOSE_WRITE)
            base = self.coalescer.baseline(ev.pid, path)
            if rchar is not None and base is not None and rchar < base:
                rchar = None  # a zombie's /proc/PID/io reads as zeros: use its exit record
            if rchar is None and ev.pid in self.exit_rchar:
                rchar = self.exit_rchar[ev.pid][0]
            if rchar is None:
                # Gone already: close on its exit record, or on an estimate if none comes.
                self._pending.setdefault(ev.pid, []).append((path, wrote, now))
            else:
                self.coalescer.closed(now, ev.pid, path, rchar, wrote=wrote)

    def _on_exits(self, now: float) -> None:
        for rec in self._exits.read():
            pending = self._pending.pop(rec.pid, [])
            wanted = pending or rec.pid in self._pending_writes or rec.pid in self.coalescer.open_pids() \
                or rec.pid in self.holders
            if not wanted:
                continue
            self.exit_rchar[rec.pid] = (rec.read_char, now)
            for path, wrote, _ts in pending:
                self.coalescer.closed(now, rec.pid, path, rec.read_char, wrote=wrote)
            # Files it never closed (killed mid-read) close with it.
            for (pid, path), sess in list(self.coalescer.sessions.items()):
                if pid == rec.pid:
                    while sess.open_now:
                        self.coalescer.closed(now, pid, path, rec.read_char)
            for path, size in self._pending_writes.pop(rec.pid, []):
                self._evaluate_write(rec.pid, path, size)

    def _on_inotify(self, now: float) -> None:
        for mask, path in self._inotify.read():
            if not self.weights.matches(path):
                continue
            if self.weights.is_canary(path):
                if mask & self._inotify.IN_OPEN:
                    self._emit(CanaryRead, {"pid": None, "path": path, "severity": "critical",
                                               "note": "inotify: the reader's pid is unknown"})
                continue
            if mask & self._inotify.IN_OPEN:
                self.coalescer.opened(now, None, path, _size(path), None)
            if mask & self._inotify.IN_ACCESS:
                self.coalescer.accessed(now, None, path)
            if mask & (self._inotify.IN_CLOSE_WRITE | self._inotify.IN_CLOSE_NOWRITE):
                self.coalescer.closed(now, None, path, None)

    # -- readers, holders, copies --------------------------------------------

    def _remember_reader(self, record: dict[str, Any]) -> None:
        pid = record.get("pid")
        if pid is None or not record.get("bytes_read"):
            return
        reader = self.readers.setdefault(pid, Reader(pid, {k: record.get(k) for k in ("name", "exe", "uid")}))
        # Progress and final records of one session carry growing totals: keep the latest.
        reader.sessions[(record["path"], record["first_ts"])] = record["bytes_read"]
        reader.last_ts = record["last_ts"]

    def _on_write(self, ev: fan.FanEvent, now: float) -> None:
        path = ev.path
        assert path is not None
        if self.weights.matches(path):
            return
        size = _fd_size(ev.fd)
        if size < COPY_MIN_BYTES:
            return
        known = ev.pid in self.readers or any(p == ev.pid for p, _x in self.coalescer.sessions)
        if not known:
            return
        io = io_counters(ev.pid)
        if io is not None:
            self.coalescer.update_rchar(ev.pid, io.rchar)
        elif ev.pid not in self.exit_rchar:
            # cp closes its copy and exits before we get here: judge on its exit record (or estimate).
            self._pending_writes.setdefault(ev.pid, []).append((path, size))
            return
        self._evaluate_write(ev.pid, path, size)

    def _evaluate_write(self, pid: int, path: str, size: int) -> None:
        # What this pid read: sessions still being coalesced (open or just closed),
        # reported ones, and weights it holds mapped.
        sessions = dict(self.readers[pid].sessions) if pid in self.readers else {}
        proc: dict[str, Any] = dict(self.readers[pid].proc) if pid in self.readers else {}
        for (spid, _p), sess in self.coalescer.sessions.items():
            if spid == pid:
                sessions[(sess.path, sess.first_ts)] = sess.bytes_so_far()
                proc = proc or {k: sess.proc.get(k) for k in ("name", "exe", "uid")}
        read = sum(sessions.values()) + max(self.holders.get(pid, 0), 0)
        if read > 0 and size >= 0.5 * read:
            sources = sorted({p for p, _ts in sessions})
            # Watch the copy as weights from now on: who reads it next is who uploads it.
            self.weights.add_staged(path, sources)
            self._mark_dir(os.path.dirname(path))
            self._emit(WeightsCopy, {"pid": pid, **proc, "sources": sources,
                                        "source_bytes_read": read, "destination": path,
                                        "destination_size": size, "path": path})

    def _settle_pending(self, now: float) -> None:
        """Closes whose exit record did not come (or cannot): assume the whole file was read."""
        wait = 2.0 if self._exits is not None else 0.0
        for pid in [p for p, items in self._pending.items() if all(now - ts >= wait for _x, _w, ts in items)]:
            for path, wrote, _ts in self._pending.pop(pid):
                self.coalescer.closed(now, pid, path, None, wrote=wrote, estimate_whole_file=True)
            for path, size in self._pending_writes.pop(pid, []):
                self._evaluate_write(pid, path, size)

    def _scan_open_readers(self, now: float) -> None:
        self._settle_pending(now)
        for pid in self.coalescer.open_pids():
            io = io_counters(pid)
            if io is not None:
                self.coalescer.update_rchar(pid, io.rchar)
        for pid in list(self.holders):
            maps = mapped_weights(pid, self.weights.matches)
            if not maps:
                if not os.path.exists(f"/proc/{pid}"):
                    del self.holders[pid]
                continue
            resident = sum(m.resident_bytes for m in maps)
            last = self.holders[pid]
            if last < 0 or resident > 1.25 * max(last, 1):
                self.holders[pid] = resident
                self._emit(WeightHolder, {
                    "pid": pid, **self._proc(pid), "path": maps[0].path,
                    "files": [m.__dict__ for m in maps],
                    "mapped_bytes": sum(m.mapped_bytes for m in maps), "resident_bytes": resident,
                    "bytes_read": resident,
                })
        for pid in [p for p, r in self.readers.items() if now - r.last_ts > READER_MEMORY_S]:
            del self.readers[pid]


def _fd_size(fd: int) -> int:
    try:
        return os.fstat(fd).st_size
    except OSError:
        return 0


def _size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0
