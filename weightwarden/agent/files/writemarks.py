"""Close-after-write marks on every filesystem of every mount namespace, so a copy is seen wherever
it is written: the host's disks, a container's own tmpfs, network and FUSE mounts.

Found by reading each mount namespace's mount table every rescan (namespaces
are found by their processes). Marking runs in a worker (``offload``): the
stat that checks a mount point is not hidden under another mount would hang
on a stalled FUSE or NFS server.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from weightwarden.agent.files import fanotify as fan
from weightwarden.agent.files.mounts import (
    MountTable,
    Superblock,
    dev_of,
    mount_namespaces,
    new_superblocks,
    read_mountinfo,
)
from weightwarden.agent.files.offload import Offloader


class WriteMarks:
    def __init__(self, group: fan.Fanotify, table: MountTable, offload: Offloader, proc_root: str = "/proc") -> None:
        self.group = group
        self.table = table
        self.offload = offload
        self.proc_root = proc_root
        self.devs: set[tuple[int, int]] = set()  # marked (written by workers: set.add is atomic)
        self.trying: set[tuple[int, int]] = set()
        self.fstypes: dict[tuple[int, int], str] = {}
        self.failed: dict[tuple[int, int], str] = {}
        self.namespaces: dict[str, int] = {}  # mount namespace -> a process in it (at the last scan)
        try:
            self.own_ns = str(Path(f"{proc_root}/self/ns/mnt").readlink())
        except OSError:
            self.own_ns = ""

    def scan(self) -> None:
        """Mark filesystems not marked yet. Cost: one mount table read per mount namespace."""
        self.table.refresh(force=True)
        known = self.devs | self.trying
        candidates = new_superblocks(self.table.mounts, None, self.own_ns, known)
        self.namespaces = mount_namespaces(self.proc_root)
        for ns, pid in self.namespaces.items():
            if ns != self.own_ns:
                candidates += new_superblocks(read_mountinfo(pid, self.proc_root), pid, ns, known)
        for sb in candidates:
            self.fstypes.setdefault(sb.dev, sb.fstype)
            if sb.dev in self.trying or sb.dev in self.devs:
                continue
            self.trying.add(sb.dev)
            if not self.offload.submit("mark", 0, self._marker(sb), key=("mount", sb.dev)):
                self.trying.discard(sb.dev)

    def _marker(self, sb: Superblock) -> Callable[[], bool]:
        return lambda: self._mark(sb)

    def _mark(self, sb: Superblock) -> bool:
        error = "no mount point of it is reachable"
        for path in sb.paths:
            try:
                if dev_of(Path(path).stat()) != sb.dev:
                    continue  # hidden under another mount
                self.group.mark(path, fan.FAN_CLOSE_WRITE, fan.FAN_MARK_FILESYSTEM)
            except OSError as exc:
                error = str(exc)
                continue
            self.devs.add(sb.dev)
            self.trying.discard(sb.dev)
            self.failed.pop(sb.dev, None)
            return True
        self.failed[sb.dev] = f"{sb.fstype}: {error}"
        self.trying.discard(sb.dev)  # tried again at the next scan
        return False
