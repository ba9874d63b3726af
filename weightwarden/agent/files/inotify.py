"""inotify: new directories under marked weight directories, and the fallback when fanotify is not
permitted (reads are seen, pids are not)."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import struct
from collections.abc import Iterator

_libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
_EVENT = struct.Struct("=iIII")


class Inotify:
    IN_ACCESS = 0x1
    IN_CLOSE_WRITE = 0x8
    IN_CLOSE_NOWRITE = 0x10
    IN_OPEN = 0x20
    IN_MOVED_TO = 0x80
    IN_CREATE = 0x100
    IN_Q_OVERFLOW = 0x4000
    IN_ISDIR = 0x40000000
    MASK = IN_ACCESS | IN_CLOSE_WRITE | IN_CLOSE_NOWRITE | IN_OPEN

    def __init__(self) -> None:
        fd = _libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"inotify_init1: {os.strerror(err)}")
        self.fd = fd
        self.dirs: dict[int, str] = {}

    def fileno(self) -> int:
        return int(self.fd)

    def watch(self, path: str, mask: int = MASK) -> None:
        wd = _libc.inotify_add_watch(self.fd, path.encode(), mask)
        if wd < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"inotify_add_watch {path}: {os.strerror(err)}")
        self.dirs[wd] = path

    def read(self) -> Iterator[tuple[int, str]]:
        try:
            buf = os.read(self.fd, 1 << 16)
        except BlockingIOError:
            return
        off = 0
        while off + _EVENT.size <= len(buf):
            wd, mask, _cookie, length = _EVENT.unpack_from(buf, off)
            name = buf[off + _EVENT.size: off + _EVENT.size + length].rstrip(b"\0").decode(errors="surrogateescape")
            off += _EVENT.size + length
            if name and wd in self.dirs:
                yield mask, os.path.join(self.dirs[wd], name)  # noqa: PTH118 - per event, a str: hot path: pathlib costs 2-4x os here on 3.11

    def close(self) -> None:
        os.close(self.fd)
