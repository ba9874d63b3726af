"""A small ctypes binding to fanotify(7): init, mark, read events (with an fd, or with a file id).

Notification groups only: the agent never answers for an open, so nothing on the host ever
waits for it. No maintained Python binding covers filesystem marks and file-id events, and the
API is three calls; ctypes keeps it dependency-free.
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
FAN_CLOEXEC = 0x1
FAN_NONBLOCK = 0x2
FAN_UNLIMITED_QUEUE = 0x10

FAN_REPORT_FID = 0x200

FAN_ACCESS = 0x1
FAN_MODIFY = 0x2
FAN_ATTRIB = 0x4
FAN_CLOSE_WRITE = 0x8
FAN_CLOSE_NOWRITE = 0x10
FAN_OPEN = 0x20
FAN_DELETE_SELF = 0x400
FAN_MOVE_SELF = 0x800
FAN_Q_OVERFLOW = 0x4000
FAN_ONDIR = 0x40000000
FAN_EVENT_ON_CHILD = 0x08000000

FAN_MARK_ADD = 0x1
FAN_MARK_REMOVE = 0x2
FAN_MARK_MOUNT = 0x10
FAN_MARK_FILESYSTEM = 0x100

FAN_NOFD = -1
AT_FDCWD = -100
FAN_EVENT_INFO_TYPE_FID = 1

_META = struct.Struct("=IBBHQii")
_INFO = struct.Struct("=BBH")  # struct fanotify_event_info_header
_FSID = 8
_HANDLE = struct.Struct("=Ii")  # struct file_handle: handle_bytes, handle_type

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
        return safe_text(os.readlink(f"/proc/self/fd/{fd}"))  # noqa: PTH115 - per event: hot path: pathlib costs 2-4x os here on 3.11
    except OSError:
        return None


@dataclass(frozen=True, slots=True)
class FidEvent:
    mask: int
    pid: int
    handle: bytes  # struct file_handle (as kernel.file_handle returns it); b"" on overflow


class Fanotify:
    def __init__(self, unlimited_queue: bool = False, report_fid: bool = False) -> None:
        flags = FAN_CLASS_NOTIF | FAN_CLOEXEC | FAN_NONBLOCK
        if unlimited_queue:
            flags |= FAN_UNLIMITED_QUEUE
        if report_fid:
            flags |= FAN_REPORT_FID
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

    def _read(self) -> bytes:
        try:
            return os.read(self.fd, 1 << 16)
        except BlockingIOError:
            return b""
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.EINTR):
                return b""
            raise

    def read(self) -> list[FanEvent]:
        """Events waiting now. The caller must close ``fd``."""
        buf = self._read()
        out = []
        off = 0
        while off + _META.size <= len(buf):
            length, _ver, _res, _mlen, mask, fd, pid = _META.unpack_from(buf, off)
            out.append(FanEvent(mask, pid, fd))
            off += length or _META.size
        return out

    def read_fid(self) -> list[FidEvent]:
        """Events of a FAN_REPORT_FID group: the file named by its handle, no fd."""
        buf = self._read()
        out = []
        off = 0
        while off + _META.size <= len(buf):
            length, _ver, _res, mlen, mask, _fd, pid = _META.unpack_from(buf, off)
            handle = b""
            info = off + (mlen or _META.size)
            end = off + (length or _META.size)
            while info + _INFO.size <= end:
                kind, _pad, ilen = _INFO.unpack_from(buf, info)
                if ilen == 0:
                    break
                at = info + _INFO.size + _FSID
                if kind == FAN_EVENT_INFO_TYPE_FID and at + _HANDLE.size <= end:
                    nbytes = _HANDLE.unpack_from(buf, at)[0]
                    handle = bytes(buf[at:at + _HANDLE.size + nbytes])
                info += ilen
            out.append(FidEvent(mask, pid, handle))
            off = end
        return out

    def close(self) -> None:
        os.close(self.fd)
