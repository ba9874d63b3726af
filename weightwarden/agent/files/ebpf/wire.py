"""The file-read loader's wire format (bpf/loader.c, bpf/wf.h), decoded. Pure: bytes in, records out.

Layouts mirror ``bpf/wf.h`` field by field (little-endian, padded by hand); the loader pins the
sizes with static asserts and ``tests/agent/files/test_ebpf_wire.py`` pins them here, so a change
on one side that is not made on the other fails a build or a test, never a reading.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

T_READY, T_ERROR, T_READERS, T_TAKEN, T_LOST, T_END, T_RELINK, T_PENDING, T_OPENER, T_SEEN = range(1, 11)

K_FILE, K_DIR, K_FS = 1, 2, 4  # wf_weight.flags
RL_LINK, RL_RENAME, RL_OTHER = 1, 2, 3  # wf_relink.kind
AT_FDCWD = -100

FRAME = struct.Struct("<II")
READER_KEY = struct.Struct("<IIQQ")  # struct wf_reader_key
READER = struct.Struct("<QQQQQII16s")  # struct wf_reader
PENDING = struct.Struct("<IIQQQQ")  # struct wf_pending
LOST = struct.Struct("<QQQQ")  # struct wf_lost
RELINK = struct.Struct("<IIIIQQQIIIiIIq16s256s4096s")  # struct wf_relink
OPENER = struct.Struct("<IIQQII16s512s4096s")  # struct wf_opener
RECORD = READER_KEY.size + READER.size


def kernel_dev(dev: tuple[int, int]) -> int:
    """The kernel's dev_t of a (major, minor) pair, as inode->i_sb->s_dev holds it."""
    return (dev[0] << 20) | dev[1]


def user_dev(kdev: int) -> tuple[int, int]:
    return kdev >> 20, kdev & 0xFFFFF


def _text(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")


@dataclass(frozen=True, slots=True)
class ReaderKey:
    tgid: int
    id: int  # the agent's number for the weight file (or for a whole filesystem of them)
    start_ns: int  # the process's start, boot-time ns: with tgid, one process
    ino: int  # the file's inode


@dataclass(frozen=True, slots=True)
class Reader:
    """What one process read of one weight file since the kernel first saw it (cumulative)."""

    key: ReaderKey
    bytes: int  # through the page cache (read, pread, sendfile, splice, copy_file_range, io_uring)
    calls: int
    mapped: int  # mapped in by page faults
    first_ns: int  # CLOCK_MONOTONIC
    cgroup_id: int
    uid: int
    ppid: int
    comm: str


@dataclass(frozen=True, slots=True)
class Lost:
    readers: int = 0  # counts dropped: the kernel's table of readers was full
    events: int = 0  # new names dropped: the ring buffer was full
    storage: int = 0  # reads not counted: no per-thread storage

    @property
    def total(self) -> int:
        return self.readers + self.events + self.storage


@dataclass(frozen=True, slots=True)
class Relink:
    """A weight file or directory got a new name, seen from inside the syscall that gave it."""

    tgid: int
    pid: int
    uid: int
    ppid: int
    start_ns: int
    cgroup_id: int
    ino: int
    dev: int  # the kernel's dev_t
    id: int
    kind: int  # RL_*
    dirfd: int
    mnt_ns: int
    flags: int  # K_*
    sysnr: int
    comm: str
    name: str  # as the syscall was given it
    dir: str  # a relative name's directory, as the process saw it ("" for an absolute name)

    @property
    def path(self) -> str:
        """The new name as the process saw it (its own root, its own mounts); "" if unknown."""
        if not self.name:
            return ""
        if self.name.startswith("/") or not self.dir:
            return self.name
        return self.dir.rstrip("/") + "/" + self.name


@dataclass(frozen=True, slots=True)
class Opener:
    """Who a process is, from the kernel at its first read of a weight (it may be gone by now)."""

    tgid: int
    uid: int
    start_ns: int
    cgroup_id: int
    ppid: int
    mnt_ns: int
    comm: str
    args: tuple[str, ...]  # its command line, cut at 512 bytes (empty when its memory was not there)
    exe: str  # as the process saw it


def parse_opener(payload: bytes) -> Opener | None:
    if len(payload) < OPENER.size:
        return None
    tgid, uid, start, cgroup, ppid, mnt_ns, comm, args, exe = OPENER.unpack_from(payload, 0)
    argv = tuple(a.decode("utf-8", "surrogateescape") for a in args.rstrip(b"\0").split(b"\0") if a) if args[:1] != b"\0" \
        else ()
    return Opener(tgid, uid, start, cgroup, ppid, mnt_ns, _text(comm), argv, _text(exe))


def parse_readers(payload: bytes) -> list[Reader]:
    out = []
    for off in range(0, len(payload) - RECORD + 1, RECORD):
        tgid, wid, start, ino = READER_KEY.unpack_from(payload, off)
        nbytes, calls, mapped, first, cgroup, uid, ppid, comm = READER.unpack_from(payload, off + READER_KEY.size)
        out.append(Reader(ReaderKey(tgid, wid, start, ino), nbytes, calls, mapped, first, cgroup, uid, ppid, _text(comm)))
    return out


def parse_pending(payload: bytes) -> list[tuple[ReaderKey, int, int]]:
    """(key, bytes, calls) a CPU has counted that its entry does not hold yet."""
    out = []
    for off in range(0, len(payload) - PENDING.size + 1, PENDING.size):
        tgid, wid, start, ino, nbytes, calls = PENDING.unpack_from(payload, off)
        out.append((ReaderKey(tgid, wid, start, ino), nbytes, calls))
    return out


def merge_pending(readers: list[Reader], pending: list[tuple[ReaderKey, int, int]]) -> list[Reader]:
    """Entries with what the CPUs hold for them added (a CPU's count always has its entry)."""
    if not pending:
        return readers
    extra: dict[ReaderKey, tuple[int, int]] = {}
    for key, nbytes, calls in pending:
        b, c = extra.get(key, (0, 0))
        extra[key] = (b + nbytes, c + calls)
    out = []
    for r in readers:
        more = extra.get(r.key)
        if more is not None:
            r = Reader(r.key, r.bytes + more[0], r.calls + more[1], r.mapped, r.first_ns, r.cgroup_id, r.uid, r.ppid,
                       r.comm)
        out.append(r)
    return out


def parse_lost(payload: bytes) -> Lost:
    if len(payload) < LOST.size:
        return Lost()
    readers, events, storage, _pad = LOST.unpack_from(payload, 0)
    return Lost(readers, events, storage)


def parse_relink(payload: bytes) -> Relink | None:
    if len(payload) < RELINK.size:
        return None
    (tgid, pid, uid, ppid, start, cgroup, ino, dev, wid, kind, dirfd, mnt_ns, flags, sysnr, comm, name,
     dirname) = RELINK.unpack_from(payload, 0)
    return Relink(tgid, pid, uid, ppid, start, cgroup, ino, dev, wid, kind, dirfd, mnt_ns, flags, sysnr, _text(comm),
                  _text(name), _text(dirname))
