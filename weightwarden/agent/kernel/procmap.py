"""Who owns a socket: inode -> pid through /proc/PID/fd, and what that pid is.

Processes vanish mid-read all the time; every read here treats "gone" as a
normal answer, never as an error. Nothing here reads another process's memory
directly: the command line goes through a ``BoundedReader`` (a stalled FUSE
page gives "unknown", never a stall), and the name comes from ``comm``, not
psutil's ``name()``, which falls back to reading the command line.
"""

from __future__ import annotations

import os
import pwd
from dataclasses import dataclass
from pathlib import Path

import psutil

from weightwarden.agent.kernel.pipes import pipe_ends
from weightwarden.agent.kernel.procread import BoundedReader
from weightwarden.events import MAX_ARGS, MAX_PIPES, safe_text


@dataclass(frozen=True, slots=True)
class ProcessInfo:
    pid: int
    ppid: int
    name: str
    exe: str
    uid: int
    user: str
    cmdline: tuple[str, ...]
    cgroup: str | None
    create_time: float
    pipes: tuple[int, ...] = ()  # pipe inodes among its fds: who it is piped to or from
    pipe_ends: tuple[tuple[int, str], ...] = ()  # (inode, "r" | "w" | "rw"): which end(s) it holds

    def pipe_ends_json(self) -> dict[str, str]:
        return {str(inode): end for inode, end in self.pipe_ends[:MAX_PIPES]}


def _user(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


class ProcessTable:
    """Socket-inode lookups and cached process descriptions.

    ``proc_root`` is injectable so tests can point it at fixture trees.
    """

    def __init__(self, proc_root: str = "/proc", reader: BoundedReader | None = None) -> None:
        self.proc_root = Path(proc_root)
        self.reader = reader or BoundedReader()
        self._owner_of_inode: dict[int, int] = {}
        self._info: dict[int, ProcessInfo] = {}
        self.fifo_paths: dict[int, str] = {}  # FIFO inode -> the path a holder reached it by (kernel.pipes)

    def _pids(self) -> list[int]:
        try:
            names = os.listdir(self.proc_root)  # noqa: PTH208 - hot path: pathlib costs 2-4x os here on 3.11
        except OSError:
            return []
        # Newest first: the owner of a socket we just met is usually a new process.
        return sorted((int(n) for n in names if n.isdigit()), reverse=True)

    def _fd_inodes(self, pid: int, kind: str) -> list[int]:
        """Inodes of the process's fds of one kind ("socket", "pipe"); [] if it is gone."""
        fd_dir = self.proc_root / str(pid) / "fd"
        prefix = kind + ":["
        found: list[int] = []
        try:
            entries = os.listdir(fd_dir)  # noqa: PTH208 - hot path: pathlib costs 2-4x os here on 3.11
        except OSError:  # gone, or not ours to read
            return found
        for fd in entries:
            try:
                target = os.readlink(fd_dir / fd)  # noqa: PTH115 - per fd: hot path: pathlib costs 2-4x os here on 3.11
            except OSError:
                continue
            if target.startswith(prefix):
                found.append(int(target[len(prefix):-1]))
        return found

    def _socket_inodes(self, pid: int) -> list[int]:
        return self._fd_inodes(pid, "socket")

    def owners(self, inodes: set[int]) -> dict[int, int]:
        """Map each inode to a pid holding it; a full scan only for unknown ones."""
        result: dict[int, int] = {}
        wanted: set[int] = set()
        for inode in inodes:
            pid = self._owner_of_inode.get(inode)
            if pid is not None and (self.proc_root / str(pid)).exists():
                result[inode] = pid
            elif inode:
                wanted.add(inode)
        if not wanted:
            return result
        if len(self._owner_of_inode) > 200_000:
            self._owner_of_inode.clear()  # bound memory; entries are re-learnt on the next scan
        for pid in self._pids():
            for inode in self._socket_inodes(pid):
                # The first holder found wins; a forked child sharing it is later.
                self._owner_of_inode.setdefault(inode, pid)
                if inode in wanted:
                    result[inode] = self._owner_of_inode[inode]
                    wanted.discard(inode)
            if not wanted:
                break
        return result

    def forget_inodes(self, live: set[int]) -> None:
        """Drop cached inodes that no longer exist, to bound memory."""
        for inode in [i for i in self._owner_of_inode if i not in live]:
            del self._owner_of_inode[inode]

    def forget(self, pid: int) -> None:
        """The caller knows the process changed under the same pid and start time (an exec: a
        container's runc init becomes its first program): the next describe reads it again, and
        what was cached is not returned even if /proc no longer has it."""
        self._info.pop(pid, None)

    def describe(self, pid: int) -> ProcessInfo | None:
        """Name, exe, uid, cgroup of a pid; cached, re-read if the pid was reused (or forgotten)."""
        cached = self._info.get(pid)
        try:
            proc = psutil.Process(pid)
            created = proc.create_time()
            if cached is not None and cached.create_time == created:
                return cached
            ppid = proc.ppid()
            uid = proc.uids().real
            try:
                exe = proc.exe()
            except (psutil.AccessDenied, psutil.ZombieProcess):
                exe = ""
        except (psutil.NoSuchProcess, psutil.AccessDenied, ProcessLookupError):
            return cached
        base = self.proc_root / str(pid)
        try:
            name = (base / "comm").read_text(errors="surrogateescape").rstrip("\n")
        except OSError:
            return cached
        raw = self.reader.read(str(base / "cmdline"))
        cmdline = [a.decode("utf-8", "surrogateescape") for a in raw.split(b"\0")[:-1]] if raw else []
        ends = self._pipe_ends(pid)
        # Names and arguments are whatever bytes a process chose: made valid UTF-8 here, once.
        info = ProcessInfo(pid, ppid, safe_text(name, 256), safe_text(exe), uid, safe_text(_user(uid), 256),
                           tuple(safe_text(a, 1024) for a in cmdline[:MAX_ARGS]), self._cgroup(pid), created,
                           tuple(inode for inode, _end in ends), ends)
        self._info[pid] = info
        return info

    def _pipes(self, pid: int) -> tuple[int, ...]:
        return tuple(inode for inode, _end in self._pipe_ends(pid))

    def _pipe_ends(self, pid: int) -> tuple[tuple[int, str], ...]:
        """Each pipe or FIFO inode the process holds, and whether it reads, writes, or both (from fdinfo's
        access mode): only a writer->reader pair is a data flow, two writers of one log pipe are not."""
        return pipe_ends(self.proc_root, pid, self.fifo_paths)

    def _cgroup(self, pid: int) -> str | None:
        """The cgroup v2 path ("0::" line); present on unified and hybrid hosts."""
        try:
            text = (self.proc_root / str(pid) / "cgroup").read_text()
        except OSError:
            return None
        for line in text.splitlines():
            if line.startswith("0::"):
                return safe_text(line[3:] or "/")
        return None

    def prune(self, keep: set[int]) -> None:
        for pid in [p for p in list(self._info) if p not in keep]:
            self._info.pop(pid, None)
        if len(self.fifo_paths) > 10_000:
            self.fifo_paths.clear()
