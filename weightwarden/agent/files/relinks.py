"""New names of weight files: a hard link made anywhere, a rename or a move out of the weights
tree, reported as ``weights_relinked`` (who, from where, to where). The file is known by inode,
so it stays watched whatever its names; this module keeps those names and says when one is new.

Where names come from, best first:
- the kernel (``ebpf``): the link or rename syscall that changed the inode, with its process and
  the new name as that process gave it (its directory walked in the kernel for a relative one);
- a file-id fanotify mark (``FAN_MOVE_SELF``) where the kernel programs are missing: who moved
  it, and where it is now, found again by its file handle;
- an open through a name never seen: the link itself was not seen, so who made it is unknown.
A move within the tree only updates the names; a hard link is reported wherever it is.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from weightwarden import logs
from weightwarden.agent.files.ebpf import wire
from weightwarden.agent.files.inodes import WeightFile, WeightInodes
from weightwarden.agent.files.mounts import dev_of, mount_namespaces
from weightwarden.agent.files.patterns import WeightPaths
from weightwarden.agent.files.procio import ProcFields, start_of_ns
from weightwarden.events import WeightsRelinked, safe_text

REPEAT_S = 5.0  # one syscall can change an inode's ctime more than once: one report


def visible_path(pid: int, ns_inum: int, own_ns: int, path: str, proc_root: str = "/proc") -> tuple[str, os.stat_result | None]:
    """A path as some process saw it, named as the agent sees it, and what is there now.

    In the agent's own mount namespace the path is already the agent's. Otherwise it is opened
    through that process's root (or any process's in the same namespace, if it is gone), and the
    kernel prints the file's name as the agent sees it; if nobody is left there, the path stays
    as the process saw it.
    """
    if ns_inum == own_ns or not path.startswith("/"):
        try:
            return path, Path(path).lstat()
        except OSError:
            return path, None
    candidates = [pid]
    for ns, other in mount_namespaces(proc_root).items():
        if ns == f"mnt:[{ns_inum}]" and other != pid:
            candidates.append(other)
    for who in candidates:
        try:
            fd = os.open(f"{proc_root}/{who}/root{path}", os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            if str(Path(f"{proc_root}/{who}/ns/mnt").readlink()) != f"mnt:[{ns_inum}]":
                continue  # the pid was reused by a process elsewhere
            return safe_text(str(Path(f"/proc/self/fd/{fd}").readlink())), os.fstat(fd)
        except OSError:
            continue
        finally:
            os.close(fd)
    return path, None


class Relinks:
    def __init__(self, inodes: WeightInodes, weights: Callable[[], WeightPaths],
                 emit: Callable[[type[WeightsRelinked], dict[str, Any]], None],
                 who: Callable[[int, float | None], ProcFields | None], proc_root: str = "/proc",
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.inodes = inodes
        self.weights = weights
        self.emit = emit
        self.who = who  # (pid, start_time) -> the process's fields, or None when gone
        self.proc_root = proc_root
        self.clock = clock
        self.log = logs.get("agent.files")
        self.reported: dict[tuple[int, str, str], float] = {}  # (file id, to_path, how) -> when
        try:
            self.own_ns = Path(f"{proc_root}/self/ns/mnt").stat().st_ino
        except OSError:
            self.own_ns = 0
        self.dir_names: dict[int, str] = {}  # a weight directory's id -> its name now

    # -- sources ---------------------------------------------------------------

    def on_kernel(self, ev: wire.Relink, boot: float) -> None:
        """A link or rename syscall changed a weight's inode (from the eBPF programs)."""
        wf = self.inodes.by_id(ev.id)
        seen = ev.path
        if wf is None or not seen:
            return  # forgotten meanwhile, or a name made by io_uring: the next open names it
        path, st = visible_path(ev.tgid, ev.mnt_ns, self.own_ns, os.path.normpath(seen), self.proc_root)
        here = st is not None and (dev_of(st), st.st_ino) == wf.key
        start = start_of_ns(ev.start_ns, boot)
        proc: ProcFields = self.who(ev.tgid, start) or {
            "pid": ev.tgid, "name": ev.comm, "uid": ev.uid, "ppid": ev.ppid, "start_time": start}
        proc["pid"] = ev.tgid
        if wf.kind == "dir":
            # A directory's ctime also changes when an entry in it does: only its own move counts.
            if here and ev.kind == wire.RL_RENAME:
                self._dir_moved(wf, path, proc)
            return
        if ev.kind == wire.RL_LINK:
            self._named(wf, path, "hardlink", proc, gone=st is None)
        elif ev.kind == wire.RL_RENAME and (here or st is None):
            self._named(wf, path, "rename", proc, gone=st is None)

    def on_moved(self, wf: WeightFile, now_at: str, pid: int) -> None:
        """A file-id mark saw the inode move (no kernel programs): ``now_at`` found by its handle."""
        proc: ProcFields = self.who(pid, None) or {"pid": pid}
        proc["pid"] = pid
        if wf.kind == "dir":
            self._dir_moved(wf, now_at, proc)
        else:
            self._named(wf, now_at, "rename", proc)

    def on_opened_as(self, wf: WeightFile, name: str, nlink: int) -> None:
        """An open through a name never seen, the link or move itself unseen: who made it is unknown."""
        if name in wf.names:
            return
        self._named(wf, name, "hardlink" if nlink > 1 else "rename", {"pid": None})

    # -- names -------------------------------------------------------------------

    def _named(self, wf: WeightFile, path: str, how: str, proc: ProcFields, gone: bool = False) -> None:
        if how == "rename":
            self._drop_stale_names(wf)
        new = self.inodes.named(wf, path)
        if wf.kind not in ("weight", "canary"):
            return  # a staged copy moved on: it was reported as a copy already
        outside = not self.weights().matches(path)
        if how == "rename" and not outside:
            if not os.path.lexists(wf.path):
                self.inodes.moved(wf, path)  # renamed within the tree: the new name is its weights path
            return
        key = (wf.id, path, how)
        now = self.clock()
        if not new and now - self.reported.get(key, -1e9) < REPEAT_S:
            return
        if key in self.reported and not new and how == "rename":
            return
        self.reported[key] = now
        if len(self.reported) > 10_000:
            self.reported = {k: t for k, t in self.reported.items() if now - t < REPEAT_S}
        self.log.info("weights_relinked", how=how, path=wf.path, to=path, pid=proc.get("pid"), gone=gone)
        self.emit(WeightsRelinked, {**proc, **wf.identity(), "how": how, "from_path": wf.path, "to_path": path,
                                    "outside_tree": outside, "size": wf.size})

    def _drop_stale_names(self, wf: WeightFile) -> None:
        """Names that no longer lead to the file (the name it was renamed from)."""
        for name in list(wf.names[1:]):
            try:
                st = Path(name).lstat()
                if (dev_of(st), st.st_ino) == wf.key:
                    continue
            except OSError:
                pass
            wf.names.remove(name)

    def _dir_moved(self, d: WeightFile, now_at: str, proc: ProcFields) -> None:
        """A weight directory moved: every weight file under it has a new name."""
        was = self.dir_names.get(d.id, d.path)
        if was == now_at:
            return
        self.dir_names[d.id] = now_at
        self.inodes.named(d, now_at)
        for wf in self.inodes.under(d.path)[:1000]:
            current = next((n for n in reversed(wf.names) if n.startswith(was.rstrip("/") + "/")), None)
            if current is None:
                continue
            self._named(wf, now_at.rstrip("/") + current[len(was.rstrip("/")):], "rename", proc.copy())
