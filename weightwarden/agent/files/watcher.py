"""Who touched the weights: fanotify on weight paths and on every filesystem, /proc for bytes and mappings.

- Weight paths get inode marks (directories) or filesystem marks (a root that
  is a whole filesystem): both see opens from every mount namespace,
  containers included; a file reached through another namespace (bind
  mount, overlay layer) is named by its host path (``mounts.HostPaths``).
- Opens are permission events, answered at once by a thread of their own
  (``answer.Answerer``) after reading the opener's rchar, the baseline for
  the bytes it then reads (read, pread, sendfile, copy_file_range alike).
  Reads that bypass rchar are seen as file offsets (splice) or flagged
  (io_uring: estimated); processes that exit at once close on their
  taskstats exit record, taken in the host's network namespace.
- Every filesystem of the host and of every container gets a
  close-after-write mark: a large file written by a process that read
  weights is a ``weights_copy`` (``copies.CopyTracker``) and is watched as
  weights from then on, across restarts (``staged.StagedCopies``).
- Mappings (``weight_holder``; also processes that mapped weights before we
  started) and command lines are read by worker threads with a bounded wait
  (``offload.Offloader``): a process whose memory sits on a stalled FUSE
  file cannot stall the watcher, let alone the opens it answers.
- Canary files: any open is a ``canary_read`` at once.
Without fanotify (no CAP_SYS_ADMIN) it falls back to inotify, which has no pids.

Output: event payloads on ``self.out``, a queue the daemon drains.
"""

from __future__ import annotations

import os
import pwd
import queue
import select
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from weightwarden import logs
from weightwarden.agent.files import fanotify as fan
from weightwarden.agent.files import kernel
from weightwarden.agent.files.answer import Answered, Answerer
from weightwarden.agent.files.coalesce import Coalescer, Session
from weightwarden.agent.attribution.containers import parse as container_of
from weightwarden.agent.files.copies import STAGED_MASK, CopyTracker
from weightwarden.agent.files.holders import HolderScan
from weightwarden.agent.files.inotify import Inotify
from weightwarden.agent.files.marks import NEW_DIR, WeightMarks
from weightwarden.agent.files.mounts import HostPaths, MountTable, mount_namespaces, read_mountinfo
from weightwarden.agent.files.offload import Offloader
from weightwarden.agent.files.patterns import WeightPaths
from weightwarden.agent.files.procio import identity, io_counters, scan_fds, start_time
from weightwarden.agent.files.staged import StagedCopies
from weightwarden.agent.files.writemarks import WriteMarks
from weightwarden.agent.kernel.procmap import ProcessInfo, ProcessTable
from weightwarden.events import CanaryRead, EventsDropped, FileAccess, Payload

RESCAN_S = 2.0
REFRESH_S = 1.0
PRUNE_S = 60.0
CANARY_REPEAT_S = 10.0
EXIT_WAIT_S = 2.0
PREFETCH_S = 0.05


class FileWatcher:
    def __init__(self, weights: WeightPaths, clock: Callable[[], float] = time.time, settle: float = 1.0,
                 state_dir: Path | None = None, proc_root: str = "/proc") -> None:
        self.weights = weights
        self.clock = clock
        self.proc_root = proc_root
        self.out: queue.Queue[Payload] = queue.Queue(maxsize=100_000)
        self.coalescer = Coalescer(settle=settle)
        self.procs = ProcessTable(proc_root)
        self.log = logs.get("agent.files")
        self.mode = "off"
        self.detail = ""
        self.canary_seen: dict[tuple[int, str], float] = {}
        self.dropped = 0
        self.table = MountTable(clock=time.monotonic)
        self.hostpaths = HostPaths(self.table)
        self.staged = StagedCopies(state_dir)
        self.offload = Offloader()
        self.copies = CopyTracker(self.coalescer, self.hostpaths, self.staged, self._fstype, self._is_weight_path,
                                  self._emit)
        self.holders = HolderScan(self.copies, self.offload, self._is_weight_map, self._emit, self._proc, proc_root)
        self.described: dict[int, dict[str, Any]] = {}  # pid -> command line, pipes, user (from a worker)
        self._describing: set[int] = set()  # asked, not answered (added by the answering thread too)
        self.exit_rchar: dict[int, tuple[int, float]] = {}  # pid -> (rchar at exit, when)
        self._pending: dict[int, list[tuple[str, bool, float]]] = {}  # pid -> closes waiting for its exit record
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._content: fan.Fanotify | None = None
        self._writes: fan.Fanotify | None = None
        self._answer: Answerer | None = None
        self._inotify: Inotify | None = None
        self._exits: Any = None
        self.marks: WeightMarks | None = None
        self.write_marks: WriteMarks | None = None
        self._own_pid = os.getpid()

    # -- lifecycle ---------------------------------------------------------

    def start(self) -> None:
        self._inotify = Inotify()
        try:
            self._content = fan.Fanotify(content=True)
            # Unlimited: a flood of unrelated writes must not push a copy's event out of the queue.
            self._writes = fan.Fanotify(content=False, unlimited_queue=True)
            self.mode = "fanotify"
            self.detail = ("fanotify on weight paths (every mount namespace) and close-write marks on every "
                           "filesystem: pids, bytes, mappings and copies")
        except OSError as exc:
            self.mode = "inotify"
            self.detail = (f"fanotify unavailable ({exc.strerror}; needs CAP_SYS_ADMIN): inotify fallback, "
                           "reads are seen without pids or byte counts")
        self.copies.content = self._content
        self.marks = WeightMarks(self._content, self._inotify, self.table,
                                 NEW_DIR if self._content is not None else Inotify.MASK | NEW_DIR)
        if self._content is not None:
            try:
                from weightwarden.agent.files.exits import host_netns_listener

                self._exits = host_netns_listener()
            except Exception as exc:  # noqa: BLE001 - optional: without it, fast exiters are estimated
                self.detail += f"; no taskstats exit records ({exc}): fast exiters are estimated (bytes_estimated)"
            for copy in self.staged.load():
                try:
                    self._content.mark(copy.path, STAGED_MASK)
                except OSError as exc:
                    self.log.warning("staged_copy_unwatched", path=copy.path, error=str(exc))
            assert self._writes is not None
            self.write_marks = WriteMarks(self._writes, self.table, self.offload, self.proc_root)
            self.write_marks.scan()
            self._answer = Answerer(self._content, self._own_pid, self.proc_root, self._prefetch)
            self._answer.start()
            self.holders.index(self.weights.roots())
            self.holders.scan_all(self._own_pid)
        self.marks.sync(self.weights.roots())
        for why in self.marks.refused.values():
            self.detail += f"; {why}"
        self._thread = threading.Thread(target=self._run, name="file-watcher", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=3)
        if self._answer is not None:
            self._answer.stop()
        for src in (self._content, self._writes, self._inotify, self._exits):
            if src is not None:
                src.close()
        self.offload.close()
        self.hostpaths.close()
        self.staged.save()
        for record in self.coalescer.flush():
            self._emit(FileAccess, record)

    def update(self, weights: WeightPaths) -> None:
        """A reloaded policy: new paths are marked on the next rescan; staged copies stay watched."""
        self.weights = weights

    def health_detail(self) -> str:
        stuck = self.offload.degraded
        return self.detail + (f"; {stuck}" if stuck else "")

    # -- helpers -------------------------------------------------------------

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

    def _fstype(self, dev: tuple[int, int]) -> str | None:
        fstype = self.table.fstype(dev)
        if fstype is None and self.write_marks is not None:
            fstype = self.write_marks.fstypes.get(dev)
        return fstype

    def _is_weight_path(self, path: str) -> bool:
        return self.weights.matches(path)

    def _is_weight_map(self, path: str, dev: tuple[int, int], ino: int) -> bool:
        return self.weights.matches(path) or self.staged.get(dev, ino) is not None or (dev, ino) in self.holders.inodes

    def _proc(self, pid: int, known: dict[str, Any] | None = None) -> dict[str, Any]:
        """Who a pid is: identity from files that never touch its memory, plus what a worker read."""
        proc = dict(known) if known is not None else identity(pid, self.proc_root)
        if proc is None:
            return {"name": None, "exe": None, "uid": None}
        proc["user"] = _user(proc["uid"])
        if proc.get("cgroup"):
            container = container_of(proc["cgroup"])
            proc["container"] = container.model_dump() if container else None
        more = self.described.get(pid)
        if more is not None and more.get("start_time") == proc["start_time"]:
            proc.update({k: v for k, v in more.items() if k != "start_time"})
        return proc

    def _describe(self, pid: int, wait: float = 0.0) -> None:
        """Command line, pipes and user, by a worker: the command line is the process's memory."""
        if pid in self.described or pid in self._describing:
            return
        self._describing.add(pid)
        if not self.offload.submit("describe", pid, lambda: self.procs.describe(pid), wait=wait):
            self._describing.discard(pid)

    def _prefetch(self, pid: int) -> None:
        """On the answering thread, while the opener waits: its description, for at most PREFETCH_S."""
        self._describe(pid, wait=PREFETCH_S)

    def _described(self, pid: int, info: ProcessInfo | None) -> None:
        if info is None:
            return
        # Pipe ends too: the collector links tar -> curl only through a pipe tar writes and curl reads.
        fields = {"cmdline": list(info.cmdline)[:8], "pipes": list(info.pipes), "pipe_ends": info.pipe_ends_json(),
                  "user": info.user,
                  "start_time": round(info.create_time, 2)}
        if len(self.described) > 50_000:
            self.described.clear()
        self.described[pid] = fields
        patch = {k: v for k, v in fields.items() if k != "start_time"}
        for (spid, _p), sess in self.coalescer.sessions.items():
            if spid == pid and sess.proc:
                sess.proc.update(patch)
        self.copies.described(pid, patch)

    # -- event loop --------------------------------------------------------

    def _run(self) -> None:
        next_rescan = next_refresh = next_prune = 0.0
        handlers: dict[int, Callable[[float], None]] = {}
        assert self._inotify is not None
        handlers[self._inotify.fileno()] = self._on_inotify
        handlers[self.offload.fileno()] = self._on_offloaded
        if self._answer is not None:
            handlers[self._answer.fileno()] = self._on_answered
        if self._writes is not None:
            handlers[self._writes.fileno()] = self._on_writes
        if self._exits is not None:
            handlers[self._exits.fileno()] = self._on_exits
        poller = select.poll()
        for fd in handlers:
            poller.register(fd, select.POLLIN)
        while not self._stop.is_set():
            ready = poller.poll(200)
            now = self.clock()
            self.offload.check()
            for fd, _mask in ready:
                try:
                    handlers[fd](now)
                except Exception as exc:  # noqa: BLE001 - one odd event must not stop the watcher
                    self.log.warning("file_event_error", error=repr(exc))
            try:
                if now >= next_refresh:
                    next_refresh = now + REFRESH_S
                    self._refresh(now)
                for record in self.coalescer.due(now):
                    self.copies.record(record)
                    self._emit(FileAccess, record)
                if now >= next_rescan:
                    next_rescan = now + RESCAN_S
                    self.marks.sync(self.weights.roots())  # type: ignore[union-attr]
                    if self.write_marks is not None:
                        self.write_marks.scan()
                if now >= next_prune:
                    next_prune = now + PRUNE_S
                    self._prune()
            except Exception as exc:  # noqa: BLE001 - the loop must survive its own bugs
                self.log.error("file_watch_loop_error", error=repr(exc))

    def _on_answered(self, now: float) -> None:
        assert self._answer is not None
        items = self._answer.take()
        self._on_offloaded(now)  # descriptions prefetched for these opens
        for item in items:
            try:
                self._on_weight_event(item, now)
            except Exception as exc:  # noqa: BLE001 - one odd event must not stop the watcher
                self.log.warning("file_event_error", error=repr(exc))
            finally:
                if item.event.fd >= 0:
                    os.close(item.event.fd)
        if self._answer.overflows or self._answer.dropped:
            n = self._answer.overflows + self._answer.dropped
            self._answer.overflows = self._answer.dropped = 0
            self.dropped += n
            self._emit(EventsDropped, {"reason": "fanotify queue overflow or watcher backlog", "dropped": n,
                                       "source": "file-watcher"})

    def _on_weight_event(self, item: Answered, now: float) -> None:
        ev = item.event
        st = kernel.fstat(ev.fd)
        if st is None:
            return
        ours = self.hostpaths.ours(st.mnt_id)
        view = fan.fd_path(ev.fd) or ""
        host = view if ours else self.hostpaths.resolve(ev.fd, st)
        path = host or view
        staged = self.staged.get(st.dev, st.ino)
        if staged is None and not self.weights.matches(path):
            return  # a README next to the weights, or a file elsewhere on a marked filesystem
        if self.weights.is_canary(path):
            if ev.mask & fan.FAN_OPEN_PERM and now - self.canary_seen.get((ev.pid, path), 0) >= CANARY_REPEAT_S:
                self.canary_seen[(ev.pid, path)] = now
                self._emit(CanaryRead, {"pid": ev.pid, "path": path, "severity": "critical",
                                        **self._proc(ev.pid, item.proc)})
            return
        self.holders.remember_inode((st.dev, st.ino))
        rchar = item.rchar
        if ev.mask & fan.FAN_OPEN_PERM:
            key = (ev.pid, path)
            new = key not in self.coalescer.sessions
            proc = self._proc(ev.pid, item.proc) if new else None
            self.coalescer.opened(now, ev.pid, path, st.size, rchar, proc)
            sess = self.coalescer.sessions[key]
            if new:
                if not ours:
                    sess.extra.update({"host_path": host,
                                       "view_path": self._view(ev.pid, item.mnt_ns, st.mnt_id, view, path)})
                if staged is not None:
                    sess.extra["staged_copy_of"] = staged.sources[:100]
                self.copies.opened(ev.pid, proc or {}, path, st.size, staged.sources if staged else [])
                self._describe(ev.pid)
                self._look_at_fds(sess, view)
            self.copies.holders.setdefault(ev.pid, -1)  # scan its mappings from now on
        if ev.mask & (fan.FAN_CLOSE_NOWRITE | fan.FAN_CLOSE_WRITE):
            self._on_close(ev.pid, path, bool(ev.mask & fan.FAN_CLOSE_WRITE), rchar, now)

    def _view(self, pid: int, ns: str | None, mnt_id: int | None, view: str, path: str) -> str | None:
        """The path as the process saw it: the printed path, if the mount it came through is in its
        namespace (an overlay's lower-layer file comes through a mount no namespace has). The opener may
        be gone already: then any process of its namespace shows the same mount table."""
        if view == path or mnt_id is None:
            return None
        mounts = read_mountinfo(pid, self.proc_root)
        if not mounts and ns is not None:
            known = self.write_marks.namespaces if self.write_marks is not None else {}
            other = known.get(ns) or mount_namespaces(self.proc_root).get(ns)  # a scan only if it is new
            mounts = read_mountinfo(other, self.proc_root) if other is not None else []
        return view if any(m.mnt_id == mnt_id for m in mounts) else None

    def _on_close(self, pid: int, path: str, wrote: bool, rchar: int | None, now: float) -> None:
        base = self.coalescer.baseline(pid, path)
        if rchar is not None and base is not None and rchar < base:
            rchar = None  # a zombie's /proc/PID/io reads as zeros: use its exit record
        how = "rchar"
        if rchar is None and pid in self.exit_rchar:
            rchar = self.exit_rchar[pid][0]
            how = "taskstats"
        if rchar is None:
            # Gone already: close on its exit record, or on an estimate if none comes.
            self._pending.setdefault(pid, []).append((path, wrote, now))
            return
        self.coalescer.closed(now, pid, path, rchar, wrote=wrote, how=how)
        self.holders.look(pid)  # mapped and closed (a model loader)? known before the record goes out

    def _look_at_fds(self, sess: Session, view: str) -> None:
        """The reader's descriptors on the file: offsets (reads rchar misses) and io_uring instances."""
        if sess.pid is None or not view:
            return
        scan = scan_fds(sess.pid, view, self.proc_root)
        if scan is None:
            return
        sess.io_uring = sess.io_uring or scan.io_uring
        self.copies.saw_files(sess.pid, scan.others)
        if scan.files:
            sess.position = max(sess.position, max(f.position for f in scan.files))

    def _on_writes(self, now: float) -> None:
        assert self._writes is not None
        events = self._writes.read()
        if self._answer is not None:
            # Opens first: a writer's open of the weights was answered before it could write.
            self._answer.settled()
            self._on_answered(now)
        for ev in events:
            try:
                if ev.mask & fan.FAN_Q_OVERFLOW:
                    self.dropped += 1
                    self._emit(EventsDropped, {"reason": "fanotify write queue overflow", "source": "file-watcher"})
                elif ev.pid != self._own_pid:
                    writer = ev.pid if self.copies.interesting(ev.pid) else self.copies.writer_of(ev.fd)
                    if writer is None:
                        continue
                    io = io_counters(writer, self.proc_root)
                    if io is not None:
                        self.coalescer.update_rchar(writer, io.rchar)
                    alive = io is not None or writer in self.exit_rchar
                    self.copies.on_write(ev, writer, now, alive)
            finally:
                if ev.fd >= 0:
                    os.close(ev.fd)

    def _on_exits(self, now: float) -> None:
        records = self._exits.read()
        if self._answer is not None:
            # Opens first: an exit record of a reader whose open is still in the backlog is wanted.
            self._answer.settled()
            self._on_answered(now)
        for rec in records:
            pending = self._pending.pop(rec.pid, [])
            wanted = pending or rec.pid in self.copies.pending or rec.pid in self.coalescer.open_pids() \
                or self.copies.interesting(rec.pid)
            if not wanted:
                continue
            self.exit_rchar[rec.pid] = (rec.read_char, now)
            for path, wrote, _ts in pending:
                self.coalescer.closed(now, rec.pid, path, rec.read_char, wrote=wrote, how="taskstats")
            # Files it never closed (killed mid-read) close with it.
            for (pid, path), sess in list(self.coalescer.sessions.items()):
                if pid == rec.pid:
                    while sess.open_now:
                        self.coalescer.closed(now, pid, path, rec.read_char, how="taskstats")
            self.copies.settle(rec.pid)

    def _on_inotify(self, now: float) -> None:
        assert self._inotify is not None and self.marks is not None
        ino = self._inotify
        for mask, path in ino.read():
            if self.marks.on_new_entry(mask, path) or self._content is not None:
                continue  # with fanotify, inotify only finds new directories
            if not self.weights.matches(path):
                continue
            if self.weights.is_canary(path):
                if mask & ino.IN_OPEN:
                    self._emit(CanaryRead, {"pid": None, "path": path, "severity": "critical",
                                            "note": "inotify: the reader's pid is unknown"})
                continue
            if mask & ino.IN_OPEN:
                self.coalescer.opened(now, None, path, _size(path), None)
            if mask & ino.IN_ACCESS:
                self.coalescer.accessed(now, None, path)
            if mask & (ino.IN_CLOSE_WRITE | ino.IN_CLOSE_NOWRITE):
                self.coalescer.closed(now, None, path, None)

    def _on_offloaded(self, now: float) -> None:
        for tag, pid, value in self.offload.results():
            if isinstance(value, Exception):
                self._describing.discard(pid)
                continue
            if tag == "describe":
                self._describing.discard(pid)
                self._described(pid, value)
            elif tag in ("holder", "premapped"):
                self.holders.on_result(tag, pid, value, self.coalescer)

    # -- periodic ------------------------------------------------------------

    def _refresh(self, now: float) -> None:
        self.offload.check()
        wait = EXIT_WAIT_S if self._exits is not None else 0.0
        for pid in [p for p, items in self._pending.items() if all(now - ts >= wait for _x, _w, ts in items)]:
            # Closes whose exit record did not come (or cannot): assume the whole file was read.
            for path, wrote, _ts in self._pending.pop(pid):
                self.coalescer.closed(now, pid, path, None, wrote=wrote, estimate_whole_file=True)
        self.copies.settle_older_than(now, wait)
        for (spid, _path), sess in self.coalescer.sessions.items():
            if spid is None or not sess.open_now:
                continue
            io = io_counters(spid, self.proc_root)
            if io is not None:
                sess.rchar_now = io.rchar
            self._look_at_fds(sess, sess.extra.get("view_path") or sess.path)
        self.holders.look_all()
        self.staged.save()
        for pid in [p for p, (_r, ts) in self.exit_rchar.items() if now - ts > 30]:
            del self.exit_rchar[pid]

    def _prune(self) -> None:
        self.copies.forget(lambda pid: start_time(pid, self.proc_root))
        live = set(self.copies.readers) | set(self.copies.holders)
        self.offload.forget(lambda pid: start_time(pid, self.proc_root) is not None)
        for pid in [p for p in self.described if p not in live]:
            del self.described[pid]
        self.staged.prune()
        self.canary_seen = {k: ts for k, ts in self.canary_seen.items() if self.clock() - ts < CANARY_REPEAT_S}


_USERS: dict[int, str] = {}


def _user(uid: int) -> str:
    if uid not in _USERS:
        try:
            _USERS[uid] = pwd.getpwuid(uid).pw_name
        except KeyError:
            _USERS[uid] = str(uid)
    return _USERS[uid]


def _size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0
