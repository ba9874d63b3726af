"""Processes that hold weights mapped (inference servers), from /proc/PID/smaps, read by a worker.

smaps takes the target's mmap lock, so a process that arranged to stall
(memory on a hung FUSE file) would stall whoever reads it: reads go through
``offload.Offloader``. Processes that mapped weights before the agent
started are found once at start (/proc/PID/maps of every process). A
mapping is matched by path or by inode: through a container's mount
namespace a weight file shows the container's path.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

from weightwarden.agent.files.coalesce import Coalescer
from weightwarden.agent.files.copies import CopyTracker
from weightwarden.agent.files.mounts import dev_of
from weightwarden.agent.files.offload import Offloader
from weightwarden.agent.files.procio import Mapping, WeightTest, mapped_weights, maps_weights, start_time
from weightwarden.events import WeightHolder

MAX_INODES = 100_000


class HolderScan:
    def __init__(self, copies: CopyTracker, offload: Offloader, is_weight: WeightTest,
                 emit: Callable[[type[WeightHolder], dict[str, Any]], None],
                 describe: Callable[[int], dict[str, Any]], proc_root: str = "/proc") -> None:
        self.copies = copies
        self.offload = offload
        self.is_weight = is_weight
        self.emit = emit
        self.describe = describe
        self.proc_root = proc_root
        self.inodes: set[tuple[tuple[int, int], int]] = set()
        self._asked: set[int] = set()

    def remember_inode(self, key: tuple[tuple[int, int], int]) -> None:
        if len(self.inodes) < MAX_INODES:
            self.inodes.add(key)

    def index(self, roots: list[str], budget_s: float = 2.0) -> None:
        """Inodes of the weight files, so a mapping seen under a container's path still matches."""
        deadline = time.monotonic() + budget_s
        for root in roots:
            for d, _dirs, names in os.walk(root):
                for n in names:
                    try:
                        st = os.stat(os.path.join(d, n), follow_symlinks=False)
                    except OSError:
                        continue
                    self.remember_inode((dev_of(st), st.st_ino))
                if time.monotonic() > deadline or len(self.inodes) >= MAX_INODES:
                    return

    def scan_all(self, own_pid: int) -> None:
        """Processes that mapped weights before we started (the maps of every process, once)."""
        try:
            pids = [int(n) for n in os.listdir(self.proc_root) if n.isdigit()]
        except OSError:
            return
        for pid in pids:
            if pid != own_pid:
                self.offload.submit("premapped", pid, self._premapped(pid))

    def _premapped(self, pid: int) -> Callable[[], bool]:
        return lambda: maps_weights(pid, self.is_weight, self.proc_root)

    def look(self, pid: int) -> None:
        if pid not in self._asked and self.offload.submit(
                "holder", pid, lambda: mapped_weights(pid, self.is_weight, self.proc_root)):
            self._asked.add(pid)

    def look_all(self) -> None:
        for pid in list(self.copies.holders):
            self.look(pid)

    def on_result(self, tag: str, pid: int, value: Any, coalescer: Coalescer) -> None:
        if tag == "premapped":
            if value:
                self.copies.reader(pid, self.describe(pid))
                self.copies.holders.setdefault(pid, -1)
                self.look(pid)
            return
        self._asked.discard(pid)
        maps: list[Mapping] = value or []
        if not maps:
            if start_time(pid, self.proc_root) is None:
                self.copies.holders.pop(pid, None)
            return
        reader = self.copies.reader(pid, self.describe(pid)) if pid not in self.copies.readers \
            else self.copies.readers[pid]
        for m in maps:
            reader.sizes.setdefault(m.path, m.mapped_bytes)  # what it holds is what its copies come from
        by_path = {m.path: m for m in maps}
        for (spid, path), sess in coalescer.sessions.items():
            held = by_path.get(path) or by_path.get(sess.extra.get("view_path") or "")
            if spid == pid and held is not None:
                sess.extra.update({"mapped_bytes": held.mapped_bytes, "resident_bytes": held.resident_bytes})
                if sess.bytes_so_far() < held.mapped_bytes / 2 and not sess.estimated:
                    sess.how = "mmap"  # its bytes arrive by page faults, not read(): a holder
        resident = sum(m.resident_bytes for m in maps)
        last = self.copies.holders.get(pid, -1)
        if last < 0 or resident > 1.25 * max(last, 1):
            self.copies.holders[pid] = resident
            data: dict[str, Any] = {"pid": pid, **self.describe(pid), "path": maps[0].path,
                                    "files": [m.__dict__ for m in maps],
                                    "mapped_bytes": sum(m.mapped_bytes for m in maps), "resident_bytes": resident,
                                    "bytes_read": resident}
            self.emit(WeightHolder, data)

