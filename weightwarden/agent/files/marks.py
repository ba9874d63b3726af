"""Marking the weight paths, at a cost that does not grow with time. Notifications only: no
mark here ever makes an open wait for the agent.

- A root that is a whole filesystem (``/``, a mount point) gets one
  filesystem mark per filesystem at and under it: nothing to walk, ever, and
  new directories are covered the moment they exist.
- Any other root is walked once; each directory gets an inotify watch for
  entries created or moved in (a new directory is marked with its subtree, a
  new weight file gets its own mark, both as soon as the creation is read, not
  by a periodic walk). A directory gets no fanotify mark for its files' events:
  such a mark flags every child dentry "parent watched", and then every read()
  of every file in it walks to the parent in fsnotify (dget_parent, a second
  fsnotify() call): +2.2% CPU for a 64 KiB-block reader on 6.18, measured.
  Creation events are not on the read path.
- Every weight file known by inode (``inodes.WeightInodes``) gets an inode mark of its own, so
  it is seen under any name: a hard link in another directory, after a move out of the tree,
  through /proc/PID/fd/N or open_by_handle_at. Its mask has no FAN_ACCESS, so fsnotify's read
  hook returns at its first mask test.
- Pseudo filesystems (proc, sysfs, cgroup...) are never walked or marked.
Roots that do not exist yet are looked for at each ``sync`` (a stat each).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from pathlib import Path

from weightwarden import logs
from weightwarden.agent.files import fanotify as fan
from weightwarden.agent.files.inotify import Inotify
from weightwarden.agent.files.mounts import PSEUDO_FS, MountTable, dev_of

FILE_MASK = fan.FAN_OPEN | fan.FAN_CLOSE_NOWRITE | fan.FAN_CLOSE_WRITE
FS_MASK = FILE_MASK
# A file-id group sees what happens to a weight's inode itself: it is deleted (forgotten, so that
# its inode number, free again, is not taken for a weight), or moved.
FID_FILE_MASK = fan.FAN_DELETE_SELF | fan.FAN_MOVE_SELF
FID_DIR_MASK = fan.FAN_DELETE_SELF | fan.FAN_MOVE_SELF | fan.FAN_ONDIR
NEW_DIR = Inotify.IN_CREATE | Inotify.IN_MOVED_TO


class WeightMarks:
    def __init__(self, content: fan.Fanotify | None, inotify: Inotify, table: MountTable,
                 watch_mask: int = NEW_DIR,
                 on_found: Callable[[str, os.stat_result, str], None] | None = None) -> None:
        self.content = content
        self.inotify = inotify
        self.table = table
        self.watch_mask = watch_mask
        self.on_found = on_found  # (path, stat, "file" | "dir" | "fs") of every entry a walk meets, every filesystem marked
        self.log = logs.get("agent.files")
        self.dirs: set[str] = set()
        self.filesystems: set[tuple[int, int]] = set()
        self.fs_roots: set[str] = set()
        self.refused: dict[str, str] = {}
        self.done: set[str] = set()

    def sync(self, roots: list[str]) -> None:
        """Mark roots not marked yet (new in the policy, or created since), and new filesystems under
        whole-filesystem roots. Cost: a stat per root, and one mount table read."""
        self.table.refresh(force=bool(self.fs_roots))
        for root in roots:
            if root in self.done:
                continue
            try:
                st = Path(root).stat()
            except OSError:
                continue  # not there yet
            fstype = self.table.fstype(dev_of(st))
            if fstype in PSEUDO_FS:
                self._refuse(root, f"{root} is on {fstype}, a kernel pseudo filesystem: not marked")
                self.done.add(root)
                continue
            if self.content is not None and self._is_fs_root(root, st):
                self.fs_roots.add(root)
            else:
                self._walk(root)
            self.done.add(root)
        for root in self.fs_roots:
            self._mark_filesystems_under(root)

    def _is_fs_root(self, root: str, st: os.stat_result) -> bool:
        if root == "/":
            return True
        try:
            parent = Path(root.rstrip("/")).parent.stat()  # roots are absolute (policy.model)
        except OSError:
            return False
        return parent.st_dev != st.st_dev

    def _mark_filesystems_under(self, root: str) -> None:
        prefix = root.rstrip("/") + "/"
        for m in self.table.mounts:
            if m.dev in self.filesystems or not (m.mountpoint == root or m.mountpoint.startswith(prefix)
                                                 or root == "/"):
                continue
            if m.fstype in PSEUDO_FS:
                continue
            assert self.content is not None
            try:
                st = Path(m.mountpoint).stat()
                if dev_of(st) != m.dev:
                    continue  # hidden under another mount: that one is in the table too
                self.content.mark(m.mountpoint, FS_MASK, fan.FAN_MARK_FILESYSTEM)
                self.filesystems.add(m.dev)
                if self.on_found is not None:
                    self.on_found(m.mountpoint, st, "fs")
            except OSError as exc:
                self.log.warning("file_mark_failed", path=m.mountpoint, fstype=m.fstype, error=str(exc))

    def _walk(self, top: str) -> None:
        """Mark ``top`` and every directory under it; other filesystems met on the way are marked whole."""
        try:
            top_dev = Path(top).stat().st_dev
        except OSError:
            return
        stack = [top]
        while stack:
            d = stack.pop()
            if d not in self.dirs:
                self.mark_dir(d)
                if self.on_found is not None:
                    with contextlib.suppress(OSError):
                        self.on_found(d, Path(d).lstat(), "dir")
            try:
                entries = list(os.scandir(d))
            except OSError:
                continue
            for entry in entries:
                try:
                    if not entry.is_dir(follow_symlinks=False):
                        if self.on_found is not None and entry.is_file(follow_symlinks=False):
                            self.on_found(entry.path, entry.stat(follow_symlinks=False), "file")
                        continue
                    st = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                if st.st_dev != top_dev:
                    fstype = self.table.fstype(dev_of(st))
                    if fstype in PSEUDO_FS:
                        continue
                stack.append(entry.path)

    def mark_dir(self, path: str) -> None:
        try:
            self.inotify.watch(path, self.watch_mask)
            self.dirs.add(path)
        except OSError as exc:
            self.log.warning("file_mark_failed", path=path, error=str(exc))

    def mark_file(self, path: str, fid: fan.Fanotify | None, is_dir: bool = False) -> None:
        """An inode mark on one weight file (a directory's own mark is made by the walk), and
        its file-id mark. ``path`` may be /proc/self/fd/N: the inode it names is marked."""
        try:
            if self.content is not None and not is_dir:
                self.content.mark(path, FILE_MASK)
            if fid is not None:
                fid.mark(path, FID_DIR_MASK if is_dir else FID_FILE_MASK)
        except OSError as exc:
            self.log.warning("file_mark_failed", path=path, error=str(exc))

    def on_new_entry(self, mask: int, path: str) -> bool:
        """An inotify creation under a marked directory: a new directory is marked with its subtree."""
        if mask & Inotify.IN_ISDIR and mask & NEW_DIR and path not in self.dirs:
            self._walk(path)
            return True
        return False

    def _refuse(self, root: str, why: str) -> None:
        if root not in self.refused:
            self.refused[root] = why
            self.log.warning("file_mark_refused", path=root, reason=why)
