"""Who owns a socket: inode -> pid through /proc/PID/fd, and what that pid is.

Processes vanish mid-read all the time; every read here treats "gone" as a
normal answer, never as an error.
"""

from __future__ import annotations

import os
import pwd
from dataclasses import dataclass
from pathlib import Path

import psutil

from weightwarden.events import MAX_ARGS, safe_text


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


def _user(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


class ProcessTable:
    """Socket-inode lookups and cached process descriptions.

    ``proc_root`` is injectable so tests can point it at fixture trees.
    """

    def __init__(self, proc_root: str = "/proc") -> None:
        self.proc_root = Path(proc_root)
        self._owner_of_inode: dict[int, int] = {}
        self._info: dict[int, ProcessInfo] = {}

    def _pids(self) -> list[int]:
        try:
            names = os.listdir(self.proc_root)
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
            entries = os.listdir(fd_dir)
        except OSError:  # gone, or not ours to read
            return found
        for fd in entries:
            try:
                target = os.readlink(fd_dir / fd)
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

    def describe(self, pid: int) -> ProcessInfo | None:
        """Name, exe, uid, cgroup of a pid; cached, re-read if the pid was reused."""
        cached = self._info.get(pid)
        try:
            proc = psutil.Process(pid)
            created = proc.create_time()
            if cached is not None and cached.create_time == created:
                return cached
            with proc.oneshot():
                name = proc.name()
                try:
                    exe = proc.exe()
                except (psutil.AccessDenied, psutil.ZombieProcess):
                    exe = ""
                uid = proc.uids().real
                ppid = proc.ppid()
                try:
                    cmdline = tuple(proc.cmdline())
                except (psutil.AccessDenied, psutil.ZombieProcess):
                    cmdline = ()
        except (psutil.NoSuchProcess, psutil.AccessDenied, ProcessLookupError):
            return cached
        # Names and arguments are whatever bytes a process chose: made valid UTF-8 here, once.
        info = ProcessInfo(pid, ppid, safe_text(name, 256), safe_text(exe), uid, safe_text(_user(uid), 256),
                           tuple(safe_text(a, 1024) for a in cmdline[:MAX_ARGS]), self._cgroup(pid), created,
                           self._pipes(pid))
        self._info[pid] = info
        return info

    def _pipes(self, pid: int) -> tuple[int, ...]:
        return tuple(sorted(set(self._fd_inodes(pid, "pipe"))))

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
        for pid in [p for p in self._info if p not in keep]:
            del self._info[pid]
