"""The kernel's counts of weight reads, turned into the watcher's sessions.

Every second (and a moment after any weight file closes), the file-read sensor's counts are read
(``ebpf.reads.KernelReads``): each process's bytes of each weight file since the kernel first saw
it read. They go to the session of that process and file, made if its open was never seen (a
notification lost while the agent was stopped, or a read begun before it started). A session's
final record waits for a reading made after its last close, and consumes what it reported, so a
next session of the same process and file starts after it. Nothing here runs on any reader's path.
"""

from __future__ import annotations

import contextlib
import os
import queue
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from weightwarden import logs
from weightwarden.agent.files import kernel
from weightwarden.agent.files.coalesce import Coalescer, Session
from weightwarden.agent.files.copies import CopyTracker
from weightwarden.agent.files.ebpf import wire
from weightwarden.agent.files.ebpf.reads import FileBpfError, KernelReads, Tally
from weightwarden.agent.files.holders import HolderScan
from weightwarden.agent.files.inodes import WeightFile, WeightInodes
from weightwarden.agent.files.procio import ProcFields
from weightwarden.agent.files.staged import StagedCopies
from weightwarden.agent.files.who import Who, user
from weightwarden.events import EventsDropped, Payload

COUNT_SOON_S = 0.2  # after a close, the counts are read within this, not at the next refresh
UNNAMED_S = 60.0  # counts of a file of a whole-filesystem root kept this long for an open to name it


class KernelCounting:
    def __init__(self, inodes: WeightInodes, coalescer: Coalescer, copies: CopyTracker, holders: HolderScan,
                 staged: StagedCopies, who: Who, emit: Callable[[type[Payload], dict[str, Any]], None],
                 proc_root: str = "/proc", clock: Callable[[], float] = time.time) -> None:
        self.inodes = inodes
        self.coalescer = coalescer
        self.copies = copies
        self.holders = holders
        self.staged = staged
        self.who = who
        self.emit = emit
        self.proc_root = proc_root
        self.clock = clock
        self.log = logs.get("agent.files")
        self.sensor: KernelReads | None = None
        self.counted_at: float | None = None  # when the counts were last read
        self.soon = False  # a file closed: its last reads are wanted before it is reported
        self.dropped = 0
        self.detail = "not started"
        self._keys: dict[tuple[int, str], wire.ReaderKey] = {}  # session -> its counts
        self._events: queue.SimpleQueue[wire.Relink | wire.Opener] = queue.SimpleQueue()  # loader thread -> watcher
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._unnamed: dict[wire.ReaderKey, Tally] = {}  # files of a whole-filesystem root not named yet

    # -- the sensor ----------------------------------------------------------

    def start(self, mode: str) -> str:
        """Start the sensor unless ``mode`` is "off"; what it gives, in words. "ebpf": it must start."""
        self.detail = self._start(mode, self._on_event)
        return self.detail

    # -- its events: new readers and new names, as they come ---------------------

    def fileno(self) -> int:
        """Readable when the sensor has sent events (``events`` takes them)."""
        return self._wake_r

    def _on_event(self, ev: wire.Relink | wire.Opener) -> None:
        """On the loader's reader thread: handed to the watcher's."""
        self._events.put(ev)
        with contextlib.suppress(OSError):  # full: the watcher is awake already
            os.write(self._wake_w, b"x")

    def events(self) -> list[wire.Relink | wire.Opener]:
        """Events since the last call. Openers are applied here: who a process is, as the kernel saw
        it at its first read of a weight, names a reader that exited before /proc could be read (a
        `cat`), its executable and container included."""
        kernel.drain(self._wake_r)
        out: list[wire.Relink | wire.Opener] = []
        while True:
            try:
                ev = self._events.get_nowait()
            except queue.Empty:
                return out
            out.append(ev)
            if isinstance(ev, wire.Opener):
                fields = self.who.from_kernel(ev)
                for (spid, _path), sess in self.coalescer.sessions.items():
                    if spid == ev.tgid:
                        sess.proc.update({k: v for k, v in fields.items() if not sess.proc.get(k)})
                reader = self.copies.readers.get(ev.tgid)
                if reader is not None:
                    reader.proc.update({k: v for k, v in fields.items() if not reader.proc.get(k)})

    def _start(self, mode: str, on_event: Callable[[wire.Relink | wire.Opener], None]) -> str:
        if mode == "off":
            return "reads measured from /proc (rchar): the kernel sensor is off"
        sensor = KernelReads(on_event, self.proc_root)
        try:
            features = sensor.start()
        except FileBpfError as exc:
            if mode == "ebpf":
                raise
            return f"reads measured from /proc (rchar): no kernel sensor ({exc})"
        if not any(f.on for f in features.values()):
            sensor.close()  # an older kernel: none of the tracepoints it needs (page cache 6.11, ctime 6.13)
            if mode == "ebpf":
                raise FileBpfError(f"no file-read program runs here: {features['reads'].reason}")
            return f"reads measured from /proc (rchar): {features['reads'].reason}"
        self.sensor = sensor
        words = ["reads counted in the kernel (eBPF on the page cache: read, sendfile, splice, io_uring)"
                 if sensor.on("reads") else f"reads measured from /proc (rchar): {features['reads'].reason}"]
        words += [f"kernel {name} off: {features[name].reason}" for name in ("mmap", "relinks") if not features[name].on]
        return "; ".join(words)

    @property
    def reads(self) -> bool:
        """Reads are counted in the kernel (else from /proc)."""
        return self.sensor is not None and self.sensor.on("reads")

    def on(self, feature: str) -> bool:
        return self.sensor is not None and self.sensor.on(feature)

    def failed(self, exc: Exception) -> str | None:
        """The loader died or hung: reads are measured from /proc from now on. What to say, once."""
        if self.sensor is None:
            return None
        self.log.error("file_sensor_failed", error=str(exc))
        self.sensor.close()
        self.sensor = None
        self.detail = f"reads measured from /proc (rchar): the kernel sensor stopped ({exc})"
        self.emit(EventsDropped, {"reason": f"file-read sensor stopped: {exc}; reads since its last count are "
                                            "measured from /proc", "source": "file-sensor"})
        return f"the kernel sensor stopped ({exc}): reads measured from /proc (rchar) since"

    def close(self) -> None:
        if self.sensor is not None:
            try:
                self.count(self.clock())  # what was read since the last look
            except (FileBpfError, OSError) as exc:
                self.log.warning("file_sensor_final_read_failed", error=str(exc))
            self.sensor.close()
        os.close(self._wake_r)
        os.close(self._wake_w)

    # -- the weights it knows --------------------------------------------------

    def add(self, wf: WeightFile) -> None:
        if self.sensor is not None:
            self.sensor.add(wf)

    def remove(self, wf: WeightFile) -> None:
        if self.sensor is not None:
            self.sensor.remove(wf)

    def flush(self) -> None:
        if self.sensor is not None:
            self.sensor.flush()

    # -- counts ----------------------------------------------------------------

    def read_weights(self, pid: int, now: float) -> bool:
        """Whether ``pid`` read weight files, asked of the kernel (a reader the agent has not heard of
        yet: a `cp` through an overlay, seen by no open notification); its counts are read if so."""
        if self.sensor is None or not self.sensor.on("reads") or not self.sensor.seen(pid):
            return False
        self.count(now)
        return True

    def due(self, now: float) -> bool:
        return self.soon and self.sensor is not None and now - (self.counted_at or 0) >= COUNT_SOON_S

    def count(self, now: float) -> None:
        """Read the counts; each process's bytes of each weight file go to its session."""
        if self.sensor is None:
            return
        self.soon = False
        began = self.clock()
        polled = self.sensor.poll()
        if polled.lost:
            self.dropped += polled.lost
            self.emit(EventsDropped, {"reason": "the kernel's table of weight readers was full: reads not counted",
                                      "dropped": polled.lost, "source": "file-sensor"})
        changed = {t.reader.key for t in polled.changed}
        for tally in polled.changed + [t for k, t in self._unnamed.items() if k not in changed]:
            self._apply(tally, now)
        for key, tally in list(self._unnamed.items()):
            if tally.gone and time.monotonic() - tally.reader.first_ns / 1e9 > UNNAMED_S:
                del self._unnamed[key]  # a file of a whole filesystem never seen opened: not named
                self.sensor.forget([key])
        self.counted_at = began

    def _apply(self, tally: Tally, now: float) -> None:
        assert self.sensor is not None
        r = tally.reader
        wf = self.inodes.by_id(r.key.id)
        if wf is not None and wf.kind == "fs":
            wf = self.inodes.get(wf.dev, r.key.ino)  # a file of a whole-filesystem root: named once opened
            if wf is None:
                self._unnamed[r.key] = tally
                return
        self._unnamed.pop(r.key, None)
        pid = r.key.tgid
        if wf is None or wf.kind == "canary":
            if tally.gone:
                self.sensor.forget([r.key])
            return
        key = (pid, wf.path)
        if r.mapped and not tally.gone:
            self.copies.holders.setdefault(pid, -1)  # it maps a weight file: read its smaps
            self.holders.look(pid)
        if key not in self.coalescer.sessions and not tally.bytes and not tally.calls:
            if tally.gone:
                self.sensor.forget([r.key])
            return
        proc: dict[str, Any] | None = None  # a plain dict: the coalescer and the copy tracker patch it
        if key not in self.coalescer.sessions:
            start = self.who.start_of(r.key.start_ns)
            known: ProcFields = self.who.alive(pid, start) or self.who.seen.get(pid) or {
                "name": r.comm, "uid": r.uid, "user": user(r.uid), "ppid": r.ppid, "start_time": start}
            proc = {k: v for k, v in known.items() if k != "pid"}
        if not wf.size:
            wf.size = _size(wf.path)  # known since its creation, written since
        sess = self.coalescer.counted(now, pid, wf.path, wf.size, tally.bytes, tally.calls, proc)
        sess.file_key = wf.key
        staged = self.staged.get(wf.dev, wf.ino) if wf.kind == "staged" else None
        if staged is not None:
            sess.extra.setdefault("staged_copy_of", staged.sources[:100])
        self._keys[key] = r.key
        if pid not in self.copies.readers or wf.path not in self.copies.readers[pid].sizes:
            self.copies.opened(pid, proc or sess.proc, wf.path, wf.size, staged.sources if staged else [])
        if tally.gone and sess.open_now == 0 and sess.opens == 0:
            sess.last_ts = min(sess.last_ts, now)  # no close is coming: final once it settles

    def on_final(self, sess: Session) -> None:
        """A session's final record consumed the counts it reported."""
        key = self._keys.pop((sess.pid, sess.path), None) if sess.pid is not None else None
        if key is not None and self.sensor is not None:
            self.sensor.consume(key, sess.kernel or 0, sess.kernel_calls)


def _size(path: str) -> int:
    try:
        return Path(path).stat().st_size
    except OSError:
        return 0
