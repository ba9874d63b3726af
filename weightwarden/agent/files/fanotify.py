"""A small ctypes binding to fanotify(7): init, mark, read events, answer permissions.

No maintained Python binding covers permission events and filesystem marks,
and the API is four calls; ctypes keeps it dependency-free.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import struct
from dataclasses import dataclass

from weightwarden.events import safe_text

FAN_CLASS_NOTIF = 0x0
FAN_CLASS_CONTENT = 0x4
FAN_CLOEXEC = 0x1
FAN_NONBLOCK = 0x2
FAN_UNLIMITED_QUEUE = 0x10

FAN_ACCESS = 0x1
FAN_MODIFY = 0x2
FAN_CLOSE_WRITE = 0x8
FAN_CLOSE_NOWRITE = 0x10
FAN_OPEN = 0x20
FAN_Q_OVERFLOW = 0x4000
FAN_OPEN_PERM = 0x10000
FAN_ACCESS_PERM = 0x20000
FAN_ONDIR = 0x40000000
FAN_EVENT_ON_CHILD = 0x08000000

FAN_MARK_ADD = 0x1
FAN_MARK_REMOVE = 0x2
FAN_MARK_MOUNT = 0x10
FAN_MARK_FILESYSTEM = 0x100

FAN_ALLOW = 0x1
FAN_NOFD = -1
AT_FDCWD = -100

_META = struct.Struct("=IBBHQii")
_RESPONSE = struct.Struct("=iI")

_libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
_libc.fanotify_init.argtypes = [ctypes.c_uint, ctypes.c_uint]
_libc.fanotify_init.restype = ctypes.c_int
_libc.fanotify_mark.argtypes = [ctypes.c_int, ctypes.c_uint, ctypes.c_uint64, ctypes.c_int, ctypes.c_char_p]
_libc.fanotify_mark.restype = ctypes.c_int


@dataclass(frozen=True, slots=True)
class FanEvent:
    mask: int
    pid: int
    fd: int  # ours to close; FAN_NOFD on overflow


def fd_path(fd: int) -> str | None:
    """The path of an event's file as the agent's namespace prints it (see mounts.HostPaths)."""
    try:
        return safe_text(os.readlink(f"/proc/self/fd/{fd}"))
    except OSError:
        return None


class Fanotify:
    def __init__(self, content: bool, unlimited_queue: bool = False) -> None:
        flags = (FAN_CLASS_CONTENT if content else FAN_CLASS_NOTIF) | FAN_CLOEXEC | FAN_NONBLOCK
        if unlimited_queue:
            flags |= FAN_UNLIMITED_QUEUE
        fd = _libc.fanotify_init(flags, os.O_RDONLY | os.O_LARGEFILE | os.O_CLOEXEC)
        if fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"fanotify_init: {os.strerror(err)}")
        self.fd = fd

    def fileno(self) -> int:
        return int(self.fd)

    def mark(self, path: str, mask: int, flags: int = 0, remove: bool = False) -> None:
        op = (FAN_MARK_REMOVE if remove else FAN_MARK_ADD) | flags
        if _libc.fanotify_mark(self.fd, op, mask, AT_FDCWD, path.encode()) < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"fanotify_mark {path}: {os.strerror(err)}")

    def read(self) -> list[FanEvent]:
        """Events waiting now. The caller must close ``fd`` (and answer permission events)."""
        try:
            buf = os.read(self.fd, 1 << 16)
        except BlockingIOError:
            return []
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.EINTR):
                return []
            raise
        out = []
        off = 0
        while off + _META.size <= len(buf):
            length, _ver, _res, _mlen, mask, fd, pid = _META.unpack_from(buf, off)
            out.append(FanEvent(mask, pid, fd))
            off += length or _META.size
        return out

    def allow(self, fd: int) -> None:
        try:
            os.write(self.fd, _RESPONSE.pack(fd, FAN_ALLOW))
        except OSError:
            pass  # the group is closing: the kernel allows pending events itself

    def close(self) -> None:
        # Closing the group answers every pending permission event with ALLOW.
        os.close(self.fd)
