"""Small ctypes bindings the watcher needs and Python 3.11 lacks: statx mount ids, file handles, setns.

File handles turn "a file some process opened through its own mount
namespace" into "the same file as the agent's namespace names it": the
handle is taken from the event's fd and opened again through a mount of the
same filesystem that the agent can see (open_by_handle_at needs
CAP_DAC_READ_SEARCH, which the unit grants).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import struct
from dataclasses import dataclass

AT_FDCWD = -100
AT_EMPTY_PATH = 0x1000
AT_STATX_DONT_SYNC = 0x4000
STATX_BASIC_STATS = 0x7FF
STATX_MNT_ID = 0x1000
MAX_HANDLE_SZ = 128
CLONE_NEWNET = 0x40000000

_libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
_libc.statx.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_uint, ctypes.c_void_p]
_libc.name_to_handle_at.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p, ctypes.POINTER(ctypes.c_int),
                                    ctypes.c_int]
_libc.open_by_handle_at.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_int]
_libc.setns.argtypes = [ctypes.c_int, ctypes.c_int]

_STATX_SIZE = 256
_STATX_MNT_ID_OFFSET = 144  # struct statx: stx_mnt_id follows the dev numbers
_HANDLE_HEAD = struct.Struct("=Ii")  # handle_bytes, handle_type


def _raise(what: str) -> None:
    err = ctypes.get_errno()
    raise OSError(err, f"{what}: {os.strerror(err)}")


@dataclass(frozen=True, slots=True)
class Stat:
    dev: tuple[int, int]
    ino: int
    size: int
    mode: int
    mnt_id: int | None
    nlink: int = 1


def fstat(fd: int) -> Stat | None:
    """fstat plus the mount id, from cached attributes only: on a FUSE or NFS file a plain fstat may
    ask the server, and a stalled server would stall the caller (AT_STATX_DONT_SYNC does not ask)."""
    buf = ctypes.create_string_buffer(_STATX_SIZE)
    if _libc.statx(fd, b"", AT_EMPTY_PATH | AT_STATX_DONT_SYNC, STATX_BASIC_STATS | STATX_MNT_ID, buf) < 0:
        return None
    mask, mode = struct.unpack_from("=I", buf, 0)[0], struct.unpack_from("=H", buf, 28)[0]
    nlink = struct.unpack_from("=I", buf, 16)[0]
    ino, size = struct.unpack_from("=QQ", buf, 32)
    major, minor = struct.unpack_from("=II", buf, 136)
    mnt = int(struct.unpack_from("=Q", buf, _STATX_MNT_ID_OFFSET)[0]) if mask & STATX_MNT_ID else None
    return Stat((int(major), int(minor)), int(ino), int(size), int(mode), mnt, int(nlink))


def mount_id(fd: int) -> int | None:
    """The id of the mount an open file was reached through (global across namespaces)."""
    buf = ctypes.create_string_buffer(_STATX_SIZE)
    if _libc.statx(fd, b"", AT_EMPTY_PATH, STATX_MNT_ID, buf) < 0:
        return None
    mask = struct.unpack_from("=I", buf, 0)[0]
    if not mask & STATX_MNT_ID:
        return None
    return int(struct.unpack_from("=Q", buf, _STATX_MNT_ID_OFFSET)[0])


def file_handle(fd: int) -> bytes | None:
    """The filesystem's handle for an open file, or None where the filesystem has none (overlay, procfs)."""
    buf = ctypes.create_string_buffer(_HANDLE_HEAD.size + MAX_HANDLE_SZ)
    _HANDLE_HEAD.pack_into(buf, 0, MAX_HANDLE_SZ, 0)
    mnt = ctypes.c_int(0)
    if _libc.name_to_handle_at(fd, b"", buf, ctypes.byref(mnt), AT_EMPTY_PATH) < 0:
        return None
    size = _HANDLE_HEAD.unpack_from(buf, 0)[0]
    return bytes(buf.raw[:_HANDLE_HEAD.size + size])


def path_handle(path: str) -> bytes | None:
    """The handle of the file a path names (a symlink itself, not its target)."""
    buf = ctypes.create_string_buffer(_HANDLE_HEAD.size + MAX_HANDLE_SZ)
    _HANDLE_HEAD.pack_into(buf, 0, MAX_HANDLE_SZ, 0)
    mnt = ctypes.c_int(0)
    if _libc.name_to_handle_at(AT_FDCWD, path.encode("utf-8", "surrogateescape"), buf, ctypes.byref(mnt), 0) < 0:
        return None
    size = _HANDLE_HEAD.unpack_from(buf, 0)[0]
    return bytes(buf.raw[:_HANDLE_HEAD.size + size])


FILEID_KERNFS = 0xFE


def cgroup_path(root_fd: int, cgroup_id: int) -> str | None:
    """A cgroup v2 directory's path below the hierarchy ``root_fd`` is open on, from its id (the
    kernel's cgroup id is its kernfs node id, and cgroupfs opens it by that as a file handle)."""
    handle = _HANDLE_HEAD.pack(8, FILEID_KERNFS) + struct.pack("=Q", cgroup_id)
    try:
        fd = open_handle(root_fd, handle)
    except OSError:
        return None
    try:
        return os.readlink(f"/proc/self/fd/{fd}")  # noqa: PTH115 - per lookup: hot path: pathlib costs 2-4x os here on 3.11
    except OSError:
        return None
    finally:
        os.close(fd)


def open_handle(mount_fd: int, handle: bytes, flags: int = os.O_PATH) -> int:
    """Open a file by handle through ``mount_fd`` (any fd on the same filesystem)."""
    buf = ctypes.create_string_buffer(handle, len(handle))
    fd = _libc.open_by_handle_at(mount_fd, buf, flags | os.O_CLOEXEC)
    if fd < 0:
        _raise("open_by_handle_at")
    return int(fd)


def setns(fd: int, nstype: int) -> None:
    if _libc.setns(fd, nstype) < 0:
        _raise("setns")


def drain(fd: int) -> None:
    """Empty a non-blocking wake-up pipe (its bytes only say "look again")."""
    try:
        while os.read(fd, 4096):
            pass
    except BlockingIOError:
        pass
