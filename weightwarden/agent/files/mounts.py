"""Mount tables: which filesystems exist (in every mount namespace), which are pseudo or remote,
and the agent's own name for a file some process reached through another namespace.

Why filesystems and not mounts: a fanotify mount mark sees only accesses made
through that very mount, and every mount namespace (containers, ``unshare
-m``, the unit's own ``ProtectSystem=strict``) has its own copies of the
mounts. A filesystem (superblock) mark sees every access to that filesystem,
whoever made it and through whichever mount. Namespaces are found by their
processes (``/proc/PID/ns/mnt``), and a filesystem that only exists inside one
(a container's tmpfs) is marked through ``/proc/PID/root/<mount point>``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from weightwarden.agent.files import kernel

# Kernel-internal filesystems: nothing is staged or stored there, and walking or
# marking them only costs (proc has a directory per thread, sysfs a file per knob).
PSEUDO_FS = frozenset({
    "proc", "sysfs", "cgroup", "cgroup2", "devpts", "debugfs", "tracefs", "securityfs", "bpf", "pstore",
    "configfs", "mqueue", "autofs", "fusectl", "binfmt_misc", "efivarfs", "hugetlbfs", "rpc_pipefs", "nsfs",
    "selinuxfs", "nfsd",
})
# Not marked for writes: an overlay's writes reach its upper layer's filesystem, which is
# marked, and marking the overlay too would report every write twice.
NO_WRITE_MARK = PSEUDO_FS | {"overlay"}
REMOTE_FS = ("nfs", "nfs4", "cifs", "smb3", "smbfs", "ceph", "glusterfs", "9p", "afs", "lustre", "gpfs",
             "beegfs", "fuse")


def remote_type(fstype: str) -> str | None:
    """The filesystem type when it is network storage or FUSE (whose data may live anywhere)."""
    if fstype == "fuseblk":
        return None  # FUSE on a local block device (ntfs-3g): this host's disk
    base = fstype.split(".", 1)[0]
    return fstype if base in REMOTE_FS else None


def _unescape(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as octal."""
    if "\\" not in field:
        return field
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and i + 3 < len(field) and field[i + 1:i + 4].isdigit():
            out.append(chr(int(field[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


@dataclass(frozen=True, slots=True)
class Mount:
    mnt_id: int
    dev: tuple[int, int]  # major, minor: the filesystem (superblock)
    root: str  # the directory of the filesystem mounted here
    mountpoint: str
    fstype: str
    source: str


def parse_mountinfo(text: str) -> list[Mount]:
    """Lines of /proc/PID/mountinfo (proc(5)); malformed lines are skipped."""
    out = []
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if not sep or len(fields) < 5 or len(tail) < 2:
            continue
        try:
            major, minor = (int(x) for x in fields[2].split(":"))
            out.append(Mount(int(fields[0]), (major, minor), _unescape(fields[3]), _unescape(fields[4]),
                             tail[0], _unescape(tail[1])))
        except ValueError:
            continue
    return out


def read_mountinfo(pid: int | str = "self", proc_root: str = "/proc") -> list[Mount]:
    try:
        with Path(f"{proc_root}/{pid}/mountinfo").open(encoding="utf-8", errors="surrogateescape") as fh:
            return parse_mountinfo(fh.read())
    except OSError:
        return []


def dev_of(st: os.stat_result) -> tuple[int, int]:
    return os.major(st.st_dev), os.minor(st.st_dev)


class MountTable:
    """The agent's own mounts, re-read when an unknown mount or filesystem shows up (at most once a second)."""

    def __init__(self, reader: Callable[[], list[Mount]] = read_mountinfo, clock: Callable[[], float] = lambda: 0.0):
        self._reader = reader
        self._clock = clock
        self._read_at = -1e9
        self.mounts: list[Mount] = []
        self.ids: set[int] = set()
        self.by_dev: dict[tuple[int, int], list[Mount]] = {}
        self.refresh(force=True)

    def refresh(self, force: bool = False) -> bool:
        now = self._clock()
        if not force and now - self._read_at < 1.0:
            return False
        self._read_at = now
        self.mounts = self._reader()
        self.ids = {m.mnt_id for m in self.mounts}
        self.by_dev = {}
        for m in self.mounts:
            self.by_dev.setdefault(m.dev, []).append(m)
        return True

    def fstype(self, dev: tuple[int, int]) -> str | None:
        mounts = self.by_dev.get(dev)
        return mounts[0].fstype if mounts else None


class HostPaths:
    """A file reached through any mount namespace, named as the agent's namespace names it.

    The agent's view is the host's: the unit's private namespace keeps the
    host's paths. ``resolve`` returns None when the file lives on a filesystem
    the agent cannot see (a container's own tmpfs).
    """

    def __init__(self, table: MountTable) -> None:
        self.table = table
        self._mount_fds: dict[tuple[int, int], int] = {}

    def ours(self, mnt: int | None) -> bool:
        """Whether a mount id is one of the agent's own mounts (then its paths are the host's)."""
        if mnt is None:
            return True  # no mount ids (very old kernel): take the path as printed
        if mnt not in self.table.ids and self.table.refresh():
            self._close_mount_fds()
        return mnt in self.table.ids

    def resolve(self, fd: int, st: kernel.Stat) -> str | None:
        dev = st.dev
        if remote_type(self.table.fstype(dev) or "") is not None:
            return None  # a stat through a stalled network or FUSE server would hang: not named
        mounts = self.table.by_dev.get(dev)
        if not mounts and self.table.refresh():
            self._close_mount_fds()
            mounts = self.table.by_dev.get(dev)
        if not mounts:
            return None
        handle = kernel.file_handle(fd)
        if handle is None:
            return None
        # The whole filesystem first: a bind of a subdirectory cannot name files outside it.
        for m in sorted(mounts, key=lambda m: (m.root != "/", len(m.root))):
            mfd = self._mount_fd(m)
            if mfd is None:
                continue
            try:
                opened = kernel.open_handle(mfd, handle)
            except OSError:
                continue
            try:
                path = os.readlink(f"/proc/self/fd/{opened}")  # noqa: PTH115 - per lookup: hot path: pathlib costs 2-4x os here on 3.11
            except OSError:
                continue
            finally:
                os.close(opened)
            try:
                again = os.stat(path)  # noqa: PTH116 - per lookup: hot path: pathlib costs 2-4x os here on 3.11
            except OSError:
                continue
            if (dev_of(again), again.st_ino) == (st.dev, st.ino):
                return path
        return None

    def locate(self, dev: tuple[int, int], handle: bytes) -> str | None:
        """Where a file is now, found by its handle through any mount of its filesystem the agent
        has (a deleted file, or one on a filesystem the agent cannot see, is None)."""
        if remote_type(self.table.fstype(dev) or "") is not None:
            return None  # a stalled network or FUSE server would hang us
        for m in sorted(self.table.by_dev.get(dev) or [], key=lambda m: (m.root != "/", len(m.root))):
            mfd = self._mount_fd(m)
            if mfd is None:
                continue
            try:
                opened = kernel.open_handle(mfd, handle)
            except OSError:
                continue
            try:
                path = os.readlink(f"/proc/self/fd/{opened}")  # noqa: PTH115 - per lookup: hot path: pathlib costs 2-4x os here on 3.11
            except OSError:
                continue
            finally:
                os.close(opened)
            if not path.endswith(" (deleted)"):
                return path
        return None

    def _mount_fd(self, m: Mount) -> int | None:
        fd = self._mount_fds.get(m.dev)
        if fd is None:
            try:
                fd = os.open(m.mountpoint, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)  # not O_PATH: refused
            except OSError:
                return None
            self._mount_fds[m.dev] = fd
        return fd

    def _close_mount_fds(self) -> None:
        for fd in self._mount_fds.values():
            os.close(fd)
        self._mount_fds.clear()

    def close(self) -> None:
        self._close_mount_fds()


@dataclass(frozen=True, slots=True)
class Superblock:
    dev: tuple[int, int]
    fstype: str
    paths: tuple[str, ...]  # paths, valid from the agent's namespace, that land on this filesystem
    namespace: str


def mount_namespaces(proc_root: str = "/proc") -> dict[str, int]:
    """Each mount namespace on the host with one process in it (readlink of /proc/PID/ns/mnt)."""
    found: dict[str, int] = {}
    try:
        names = os.listdir(proc_root)  # noqa: PTH208 - hot path: pathlib costs 2-4x os here on 3.11
    except OSError:
        return found
    for name in names:
        if not name.isdigit():
            continue
        try:
            ns = os.readlink(f"{proc_root}/{name}/ns/mnt")  # noqa: PTH115 - per pid: hot path: pathlib costs 2-4x os here on 3.11
        except OSError:
            continue  # gone, or a kernel thread
        found.setdefault(ns, int(name))
    return found


def new_superblocks(mounts: Iterable[Mount], pid: int | None, namespace: str,
                    known: set[tuple[int, int]]) -> list[Superblock]:
    """Filesystems in one namespace's mount table not marked yet (pseudo filesystems and overlays never)."""
    paths: dict[tuple[int, int], list[str]] = {}
    types: dict[tuple[int, int], str] = {}
    for m in mounts:
        if m.dev in known or m.fstype in NO_WRITE_MARK:
            continue
        # Every mount of it: one may be hidden under another mount, the next one not.
        paths.setdefault(m.dev, []).append(m.mountpoint if pid is None else f"/proc/{pid}/root{m.mountpoint}")
        types[m.dev] = m.fstype
    return [Superblock(dev, types[dev], tuple(p), namespace) for dev, p in paths.items()]
