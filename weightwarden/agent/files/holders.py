"""Processes that hold weights mapped (inference servers), from /proc/PID/smaps, read by a worker.

smaps takes the target's mmap lock, so a process that arranged to stall
(memory on a hung FUSE file) would stall whoever reads it: reads go through
``offload.Offloader``. Processes that mapped weights before the agent
started are found once at start (/proc/PID/maps of every process). A
mapping is matched by inode (``inodes.WeightInodes``) or by path: through a
container's mount namespace, or after a rename, a weight file shows another path.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from weightwarden.agent.files.coalesce import Coalescer
from weightwarden.agent.files.copies import CopyTracker
from weightwarden.agent.files.inodes import WeightFile
from weightwarden.agent.files.offload import Offloader
from weightwarden.agent.files.procio import Mapping, WeightTest, mapped_weights, maps_weights, start_time
from weightwarden.events import WeightHolder


class HolderScan:
    def __init__(self, copies: CopyTracker, offload: Offloader, is_weight: WeightTest,
                 emit: Callable[[type[WeightHolder], dict[str, Any]], None],
                 describe: Callable[[int], dict[str, Any]], proc_root: str = "/proc",
                 known: Callable[[tuple[int, int], int], WeightFile | None] = lambda _dev, _ino: None) -> None:
        self.copies = copies
        self.offload = offload
        self.is_weight = is_weight
        self.emit = emit
        self.describe = describe
        self.proc_root = proc_root
        self.known = known  # (dev, inode) -> the weight file it is (its weights path, its names)
        self._asked: set[int] = set()

    def scan_all(self, own_pid: int) -> None:
        """Processes that mapped weights before we started (the maps of every process, once)."""
        try:
            pids = [int(p.name) for p in Path(self.proc_root).iterdir() if p.name.isdigit()]
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

    def on_result(self, tag: str, pid: int, value: object, coalescer: Coalescer) -> None:
        """What a worker found: ``premapped`` whether it maps weights (bool), ``holder`` its mappings."""
        if tag == "premapped":
            if value:
                self.copies.reader(pid, self.describe(pid))
                self.copies.holders.setdefault(pid, -1)
                self.look(pid)
            return
        self._asked.discard(pid)
        maps: list[Mapping] = value if isinstance(value, list) else []
        if not maps:
            if start_time(pid, self.proc_root) is None:
                self.copies.holders.pop(pid, None)
            return
        reader = self.copies.reader(pid, self.describe(pid)) if pid not in self.copies.readers \
            else self.copies.readers[pid]
        files = [(m, self.known(m.dev, m.ino)) for m in maps]
        maps = [Mapping(wf.path if wf else m.path, m.mapped_bytes, m.resident_bytes, m.dev, m.ino) for m, wf in files]
        for m in maps:
            reader.sizes.setdefault(m.path, m.mapped_bytes)  # what it holds is what its copies come from
        by_path = {m.path: m for m in maps}
        by_path.update({m.path: maps[i] for i, (m, _wf) in enumerate(files)})  # as the process saw it
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
            first = files[0][1]
            data: dict[str, Any] = {"pid": pid, **self.describe(pid), **(first.identity() if first else {}),
                                    "path": maps[0].path,
                                    "files": [{"path": m.path, "mapped_bytes": m.mapped_bytes,
                                               "resident_bytes": m.resident_bytes} for m in maps],
                                    "mapped_bytes": sum(m.mapped_bytes for m in maps), "resident_bytes": resident,
                                    "bytes_read": resident}
            self.emit(WeightHolder, data)

