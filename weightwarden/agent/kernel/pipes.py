"""Pipes and named pipes (FIFOs) as /proc shows them: which end a process holds, and who holds the other.

An anonymous pipe's descriptor reads back as ``pipe:[INODE]``; a FIFO opened by its path reads back
as that path, and is known for one only by its file type, so a descriptor whose target is a path is
looked at with ``statx(AT_STATX_DONT_SYNC)``: the kernel answers from what it holds (a FUSE or NFS
file is never asked of its server), so a stalled filesystem cannot stall the agent. Both kinds are
reported by inode: a FIFO's is its file's, which both ends reach, whatever path each opened it by.
Which end is held comes from fdinfo's access mode (O_RDONLY: reads, O_WRONLY: writes).

Who writes a pipe a sender reads is found by a scan of every process's descriptors: bounded (at most
one scan every ``SCAN_EVERY_S``, answers kept ``KEEP_S``), and done only for pipes a sender reads.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import stat
import time
from collections.abc import Callable
from pathlib import Path

O_ACCMODE = 3
ENDS = {0: "r", 1: "w", 2: "rw"}
AT_FDCWD = -100
AT_STATX_DONT_SYNC = 0x4000
STATX_TYPE, STATX_INO = 0x1, 0x100
SCAN_EVERY_S = 2.0
KEEP_S = 30.0
MAX_PATH_FDS = 256  # descriptors of one process looked at as possible FIFOs (a database holds thousands of files)


class _Statx(ctypes.Structure):
    _fields_ = [("mask", ctypes.c_uint32), ("blksize", ctypes.c_uint32), ("attributes", ctypes.c_uint64),
                ("nlink", ctypes.c_uint32), ("uid", ctypes.c_uint32), ("gid", ctypes.c_uint32),
                ("mode", ctypes.c_uint16), ("spare0", ctypes.c_uint16), ("ino", ctypes.c_uint64),
                ("rest", ctypes.c_uint8 * 216)]


_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_statx = getattr(_libc, "statx", None)
if _statx is not None:
    _statx.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_uint, ctypes.POINTER(_Statx)]
    _statx.restype = ctypes.c_int


def fifo_inode(fd_link: str) -> int | None:
    """The inode of the FIFO this /proc/PID/fd/N link leads to; None for anything else (or gone)."""
    if _statx is None:
        return None
    buf = _Statx()
    if _statx(AT_FDCWD, os.fsencode(fd_link), AT_STATX_DONT_SYNC, STATX_TYPE | STATX_INO, ctypes.byref(buf)) != 0:
        return None
    return int(buf.ino) if stat.S_ISFIFO(buf.mode) else None


def access_end(info_path: Path) -> str:
    """The end a descriptor holds, from its fdinfo flags: r, w, or rw (also when unknown)."""
    try:
        for line in info_path.read_text().splitlines():
            if line.startswith("flags:"):
                return ENDS.get(int(line.split()[1], 8) & O_ACCMODE, "rw")
    except (OSError, ValueError, IndexError):
        pass
    return "rw"


def pipe_ends(proc_root: Path, pid: int, fifo_paths: dict[int, str] | None = None) -> tuple[tuple[int, str], ...]:
    """Each pipe or FIFO inode ``pid`` holds, and whether it reads, writes, or both. ``fifo_paths``, when
    given, learns the path each FIFO was reached by (the scan for its other end compares paths first)."""
    fd_dir = proc_root / str(pid) / "fd"
    info_dir = proc_root / str(pid) / "fdinfo"
    modes: dict[int, set[str]] = {}
    try:
        entries = os.listdir(fd_dir)  # noqa: PTH208 - hot path: pathlib costs 2-4x os here on 3.11
    except OSError:
        return ()
    looked = 0
    for fd in entries:
        try:
            target = os.readlink(fd_dir / fd)  # noqa: PTH115 - per fd: hot path: pathlib costs 2-4x os here on 3.11
        except OSError:
            continue
        if target.startswith("pipe:["):
            inode = int(target[6:-1])
        elif target.startswith("/") and looked < MAX_PATH_FDS:
            end = access_end(info_dir / fd)
            if end == "rw":
                continue  # a FIFO is opened to read or to write; anything opened both ways is a file
            looked += 1
            found = fifo_inode(str(fd_dir / fd))
            if found is None:
                continue
            inode = found
            if fifo_paths is not None:
                fifo_paths[inode] = target
            modes.setdefault(inode, set()).update(end)
            continue
        else:
            continue
        end = access_end(info_dir / fd)
        modes.setdefault(inode, set()).update("rw" if end == "rw" else end)
    return tuple((inode, "".join(sorted(m))) for inode, m in sorted(modes.items()))


class PipeWriters:
    """Who holds the write end of given pipes and FIFOs: a scan of every process's descriptors."""

    def __init__(self, proc_root: str = "/proc", clock: Callable[[], float] = time.monotonic) -> None:
        self.proc_root = Path(proc_root)
        self.clock = clock
        self._known: dict[int, tuple[float, frozenset[int]]] = {}  # inode -> (when, writer pids)
        self._scanned = -1e18
        self.scans = 0

    def writers(self, inodes: set[int], fifo_paths: dict[int, str]) -> dict[int, frozenset[int]]:
        now = self.clock()
        out: dict[int, frozenset[int]] = {}
        wanted: set[int] = set()
        for inode in inodes:
            known = self._known.get(inode)
            if known is not None and now - known[0] < KEEP_S:
                out[inode] = known[1]
            else:
                wanted.add(inode)
        if wanted and now - self._scanned >= SCAN_EVERY_S:
            self._scanned = now
            found = self._scan(wanted, {fifo_paths[i]: i for i in wanted if i in fifo_paths})
            if len(self._known) > 10_000:
                self._known.clear()
            for inode in wanted:
                self._known[inode] = (now, frozenset(found.get(inode, ())))
                out[inode] = self._known[inode][1]
        return out

    def _scan(self, pipes: set[int], fifos: dict[str, int]) -> dict[int, set[int]]:
        self.scans += 1
        found: dict[int, set[int]] = {}
        try:
            pids = [int(n) for n in os.listdir(self.proc_root) if n.isdigit()]  # noqa: PTH208 - hot path: pathlib costs 2-4x os here on 3.11
        except OSError:
            return found
        for pid in pids:
            fd_dir = self.proc_root / str(pid) / "fd"
            try:
                entries = os.listdir(fd_dir)  # noqa: PTH208 - hot path: pathlib costs 2-4x os here on 3.11
            except OSError:
                continue  # gone, or not ours to read
            for fd in entries:
                try:
                    target = os.readlink(fd_dir / fd)  # noqa: PTH115 - per fd: hot path: pathlib costs 2-4x os here on 3.11
                except OSError:
                    continue
                inode: int | None = None
                if target.startswith("pipe:["):
                    n = int(target[6:-1])
                    inode = n if n in pipes else None
                elif target in fifos:
                    inode = fifo_inode(str(fd_dir / fd))
                    inode = inode if inode == fifos[target] else None
                if inode is not None and "w" in access_end(self.proc_root / str(pid) / "fdinfo" / fd):
                    found.setdefault(inode, set()).add(pid)
        return found


__all__ = ["PipeWriters", "access_end", "fifo_inode", "pipe_ends"]
