"""Copies and derivatives: large files written by a process that read the weights, wherever they land.

The derivative's bytes differ from the weights (gzip, openssl enc, split,
tar), so nothing here compares contents or sizes: a process that read or
holds weights is a *reader* for as long as it lives, and any file of at
least ``COPY_MIN_BYTES`` it writes, on any filesystem of the host or of any
container, is a ``weights_copy`` (``derivative`` when its size is not the
sources' size; ``remote`` when it went to network or FUSE storage). The
written file is then watched as weights (``staged.StagedCopies``).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from weightwarden.agent.files import fanotify as fan
from weightwarden.agent.files import kernel
from weightwarden.agent.files.coalesce import Coalescer
from weightwarden.agent.files.mounts import HostPaths, remote_type
from weightwarden.agent.files.staged import StagedCopies, StagedCopy
from weightwarden.events import WeightsCopy

COPY_MIN_BYTES = 256 * 1024
MAX_READERS = 50_000


@dataclass
class Reader:
    """A process that read (or holds) weights: the evidence a copy needs, kept while it lives."""

    pid: int
    start_time: float | None
    proc: dict[str, Any]
    sessions: dict[tuple[str, float], int] = field(default_factory=dict)  # (path, first_ts) -> bytes so far
    sizes: dict[str, int] = field(default_factory=dict)  # path -> file size
    sources: dict[str, list[str]] = field(default_factory=dict)  # path read -> the weight files behind it
    estimated: bool = False
    outputs: set[str] = field(default_factory=set)  # files it had open when it opened weights

    def weight_files(self) -> list[str]:
        out: set[str] = set()
        for path in self.sizes:
            out.update(self.sources.get(path) or [path])
        return sorted(out)


@dataclass
class PendingWrite:
    key: tuple[tuple[int, int], int]  # (device, inode) of the written file
    destination: str
    view_path: str | None
    size: int
    remote: str | None
    ts: float


class CopyTracker:
    def __init__(self, coalescer: Coalescer, hostpaths: HostPaths, staged: StagedCopies,
                 fstype_of: Callable[[tuple[int, int]], str | None], is_weight: Callable[[str], bool],
                 emit: Callable[[type[WeightsCopy], dict[str, Any]], None],
                 is_weight_inode: Callable[[tuple[int, int], int], bool] = lambda _dev, _ino: False) -> None:
        self.coalescer = coalescer
        self.hostpaths = hostpaths
        self.staged = staged
        self.fstype_of = fstype_of
        self.is_weight = is_weight
        self.emit = emit
        self.is_weight_inode = is_weight_inode
        self.readers: dict[int, Reader] = {}
        self.holders: dict[int, int] = {}  # pid -> resident bytes last reported (-1: not yet)
        # Watch a new copy as weights (the watcher marks its inode and tells the kernel), given the
        # fd it was written through: an inode mark follows the copy through renames and namespaces.
        self.on_staged: Callable[[int, StagedCopy], None] = lambda _fd, _copy: None
        # Brings the readers' byte counts up to date (the kernel's counters, read on demand) before a copy is judged.
        self.before_judging: Callable[[], None] = lambda: None
        self.pending: dict[int, list[PendingWrite]] = {}  # writer gone: waiting for its exit record
        self.outputs: dict[str, int] = {}  # a file a reader had open -> that reader

    # -- readers ---------------------------------------------------------------

    def reader(self, pid: int, proc: dict[str, Any]) -> Reader:
        r = self.readers.get(pid)
        if r is None or (proc.get("start_time") and r.start_time and proc["start_time"] != r.start_time):
            if len(self.readers) >= MAX_READERS:
                self.readers.pop(next(iter(self.readers)))
            r = self.readers[pid] = Reader(pid, proc.get("start_time"), dict(proc))
        return r

    def opened(self, pid: int, proc: dict[str, Any], path: str, size: int, sources: list[str]) -> None:
        r = self.reader(pid, proc)
        r.sizes[path] = size
        if sources:
            r.sources[path] = sources

    def record(self, rec: dict[str, Any]) -> None:
        """A file_access record: its growing byte total is the reader's latest word on that session."""
        r = self.readers.get(rec.get("pid") or -1)
        if r is not None:
            r.sessions[(rec["path"], rec["first_ts"])] = rec["bytes_read"]
            r.estimated = r.estimated or bool(rec.get("bytes_estimated"))

    def saw_files(self, pid: int, paths: list[str]) -> None:
        """Files a reader had open when it opened the weights: ``gzip -c w > out`` writes through a
        descriptor its shell opened, and the shell's close is the one the kernel reports."""
        r = self.readers.get(pid)
        if r is None:
            return
        for path in paths:
            if not self.is_weight(path):
                r.outputs.add(path)
                if len(self.outputs) < MAX_READERS:
                    self.outputs[path] = pid

    def writer_of(self, fd: int) -> int | None:
        """The reader that had this file open, for a close by a process that never read weights."""
        if not self.outputs:
            return None
        pid = self.outputs.get(fan.fd_path(fd) or "")
        return pid if pid is not None and pid in self.readers else None

    def described(self, pid: int, fields: dict[str, Any]) -> None:
        r = self.readers.get(pid)
        if r is not None:
            r.proc.update(fields)

    def forget(self, started: Callable[[int], float | None]) -> None:
        """Readers and holders that exited, or whose pid now names another process
        (``started(pid)``: its start time, None when gone)."""
        for pid, r in list(self.readers.items()):
            now = started(pid)
            reused = now is not None and r.start_time is not None and abs(now - r.start_time) > 1
            if (now is None or reused) and pid not in self.pending:
                for path in self.readers.pop(pid).outputs:
                    if self.outputs.get(path) == pid:
                        del self.outputs[path]
        for pid in [p for p in self.holders if started(p) is None]:
            del self.holders[pid]

    def interesting(self, pid: int) -> bool:
        return pid in self.readers or pid in self.holders

    # -- writes ----------------------------------------------------------------

    @staticmethod
    def large(fd: int) -> bool:
        """Whether a written file is big enough to be a copy (a regular file of COPY_MIN_BYTES or more)."""
        st = kernel.fstat(fd)
        return st is not None and st.size >= COPY_MIN_BYTES and stat.S_ISREG(st.mode)

    def on_write(self, ev: fan.FanEvent, writer: int, now: float, alive: bool) -> None:
        """A close-after-write anywhere on the host of a file a reader wrote (``writer``: the closer, or
        the reader whose inherited descriptor it was). ``ev.fd`` stays the caller's to close."""
        st = kernel.fstat(ev.fd)
        if st is None or st.size < COPY_MIN_BYTES or not stat.S_ISREG(st.mode):
            return
        dev = st.dev
        if self.staged.get(dev, st.ino) is not None:
            return  # a staged copy written again: already watched
        if self.is_weight_inode(dev, st.ino):
            return  # a weight file itself being written, under whatever name
        own_view = self.hostpaths.ours(st.mnt_id)
        view = fan.fd_path(ev.fd) or ""
        host = view if own_view else self.hostpaths.resolve(ev.fd, st)
        if host is not None and self.is_weight(host):
            return  # the weights themselves being written (a download, a checkpoint in place)
        destination = host or view
        fstype = self.fstype_of(dev)
        remote = remote_type(fstype) if fstype else None
        handle = kernel.file_handle(ev.fd)
        mounts = self.hostpaths.table.by_dev.get(dev) or []
        copy = StagedCopy(destination, dev, st.ino, [], st.size, now, handle.hex() if handle else None,
                          mounts[0].mountpoint if mounts else None, remote)
        self._watch(ev.fd, copy)
        item = PendingWrite((dev, st.ino), destination, None if own_view or view == destination else view, st.size,
                            remote, now)
        if alive:
            self.evaluate(writer, item)
        else:
            # It exited right after writing (cp, gzip): judge when its exit record says what it read.
            self.pending.setdefault(writer, []).append(item)

    def _watch(self, fd: int, copy: StagedCopy) -> None:
        self.staged.add(copy)
        self.on_staged(fd, copy)

    def settle(self, pid: int) -> None:
        for item in self.pending.pop(pid, []):
            self.evaluate(pid, item)

    def settle_older_than(self, now: float, wait: float) -> None:
        for pid in [p for p, items in self.pending.items() if all(now - i.ts >= wait for i in items)]:
            self.settle(pid)

    def evaluate(self, pid: int, item: PendingWrite) -> None:
        self.before_judging()
        r = self.readers.get(pid)
        sessions = dict(r.sessions) if r is not None else {}
        proc: dict[str, Any] = dict(r.proc) if r is not None else {}
        estimated = r.estimated if r is not None else False
        sizes = dict(r.sizes) if r is not None else {}
        for (spid, _p), sess in self.coalescer.sessions.items():
            if spid == pid:
                sessions[(sess.path, sess.first_ts)] = sess.bytes_so_far()
                sizes[sess.path] = sess.size
                estimated = estimated or sess.estimated or sess.io_uring
                # What the reader's record lacks (it exited before it was described), its session may know.
                proc.update({k: sess.proc.get(k) for k in ("name", "exe", "uid") if not proc.get(k)})
        held = max(self.holders.get(pid, 0), 0)
        read = sum(sessions.values()) + held
        sources = r.weight_files() if r is not None else sorted(sizes)
        if not sources and not held:
            return
        copy = self.staged.get(*item.key)
        if copy is not None:
            copy.sources, copy.writer = sources, {k: proc.get(k) for k in ("pid", "name", "exe")}
            self.staged.dirty = True
        source_size = sum(sizes.get(p, 0) for p in sizes)
        dev, ino = item.key
        self.emit(WeightsCopy, {
            "inode": ino, "dev": os.makedev(*dev), "names": [item.destination],
            "pid": pid, **proc, "sources": sources[:1000], "source_bytes_read": read,
            "destination": item.destination, "destination_size": item.size, "path": item.destination,
            "derivative": item.size != source_size, "remote": item.remote, "view_path": item.view_path,
            "source_bytes_estimated": estimated})
