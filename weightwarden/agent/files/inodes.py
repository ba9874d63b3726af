"""The weights known by inode: every weight file, staged copy, canary and weight directory, by
(device, inode), whatever name it is reached by.

A file enters when the agent first sees it in the weights tree (the walk at start, a creation
or an open under a watched directory) or when a reader writes a copy of it; from then on it is
a weight under every name: a hard link made anywhere, a rename or move within its filesystem, a
bind mount, a container's overlay, /proc/PID/fd/N, open_by_handle_at. ``path`` is its weights
path (the name it had in the tree, or where the copy was written), the name every report uses;
``names`` are all the names it has been seen by. Listeners hear of each new entry (the kernel's
map, fanotify's inode marks) and of each one that is gone. Pure bookkeeping: no I/O here.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Literal

# "fs": a whole filesystem that is a weights root (inode: its root directory's); its files are
# known one by one as they are opened.
Kind = Literal["weight", "canary", "staged", "dir", "fs"]
DevIno = tuple[tuple[int, int], int]

MAX_NAMES = 64  # FileIdentity.names holds at most 64


@dataclass
class WeightFile:
    id: int  # the agent's number for it (the kernel's map holds it); never reused
    dev: tuple[int, int]  # major, minor
    ino: int
    path: str  # its weights path
    kind: Kind
    size: int = 0
    names: list[str] = field(default_factory=list)  # every name it has been seen by, path first
    sources: list[str] = field(default_factory=list)  # a staged copy: the weight files it came from
    handle: bytes | None = None  # its file handle: finds it again by inode, whatever its name now

    @property
    def key(self) -> DevIno:
        return self.dev, self.ino

    @property
    def wire_dev(self) -> int:
        """The device as stat(2) reports it (st_dev), the number FileIdentity.dev carries."""
        return os.makedev(*self.dev)

    def identity(self) -> dict[str, object]:
        """FileIdentity's fields for this file."""
        return {"inode": self.ino, "dev": self.wire_dev, "names": self.names[:MAX_NAMES]}


class WeightInodes:
    def __init__(self, limit: int = 100_000) -> None:
        self.limit = limit
        self._by_key: OrderedDict[DevIno, WeightFile] = OrderedDict()
        self._by_id: dict[int, WeightFile] = {}
        self._by_handle: dict[bytes, WeightFile] = {}
        self._next_id = 1
        self.refused = 0  # entries not added: the limit was reached
        self.on_add: list[Callable[[WeightFile, str | None], None]] = []  # (file, a path to mark it through)
        self.on_remove: list[Callable[[WeightFile], None]] = []

    def __len__(self) -> int:
        return len(self._by_key)

    def __iter__(self) -> Iterator[WeightFile]:
        return iter(list(self._by_key.values()))

    def get(self, dev: tuple[int, int], ino: int) -> WeightFile | None:
        return self._by_key.get((dev, ino))

    def by_id(self, wid: int) -> WeightFile | None:
        return self._by_id.get(wid)

    def by_handle(self, handle: bytes) -> WeightFile | None:
        return self._by_handle.get(handle)

    def add(self, dev: tuple[int, int], ino: int, path: str, kind: Kind, size: int = 0,
            sources: list[str] | None = None, handle: bytes | None = None, via: str | None = None) -> WeightFile | None:
        """The entry for (dev, ino), made if new (None past the limit). A known file keeps its
        weights path. ``via``: a path that reaches it from here when ``path`` may not (a
        container's own tmpfs): /proc/self/fd/N of a descriptor on it."""
        wf = self._by_key.get((dev, ino))
        if wf is not None:
            self.named(wf, path)
            if size:
                wf.size = size
            if sources and not wf.sources:
                wf.sources = list(sources)
            if handle and not wf.handle:
                wf.handle = handle
                self._by_handle[handle] = wf
            return wf
        if len(self._by_key) >= self.limit:
            self.refused += 1
            return None
        wf = WeightFile(self._next_id, dev, ino, path, kind, size, [path], list(sources or []), handle)
        self._next_id += 1
        self._by_key[wf.key] = wf
        self._by_id[wf.id] = wf
        if handle:
            self._by_handle[handle] = wf
        for listener in self.on_add:
            listener(wf, via)
        return wf

    def named(self, wf: WeightFile, name: str) -> bool:
        """Record another name of the file; True if it is new."""
        if not name or name in wf.names:
            return False
        if len(wf.names) >= MAX_NAMES:
            del wf.names[1]  # the weights path stays first; the oldest other name goes
        wf.names.append(name)
        return True

    def renamed(self, wf: WeightFile, old: str, new: str) -> None:
        """A name that no longer exists gives way to the new one (the weights path stays)."""
        if old != wf.path and old in wf.names:
            wf.names.remove(old)
        self.named(wf, new)

    def moved(self, wf: WeightFile, new: str) -> None:
        """Renamed within the weights tree: its new name is its weights path now."""
        old = wf.path
        wf.path = new
        wf.names = [new] + [n for n in wf.names if n not in (old, new)]

    def remove(self, dev: tuple[int, int], ino: int) -> WeightFile | None:
        wf = self._by_key.pop((dev, ino), None)
        if wf is None:
            return None
        del self._by_id[wf.id]
        if wf.handle:
            self._by_handle.pop(wf.handle, None)
        for listener in self.on_remove:
            listener(wf)
        return wf

    def under(self, directory: str) -> list[WeightFile]:
        """Weight files whose weights path lies under a directory."""
        prefix = directory.rstrip("/") + "/"
        return [wf for wf in self._by_key.values() if wf.kind not in ("dir", "fs") and wf.path.startswith(prefix)]
