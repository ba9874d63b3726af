"""Copies and derivatives of the weights written elsewhere, remembered by inode and kept across restarts.

A staged copy is watched as weights (an inode mark: it follows the file
through renames and through every mount namespace), so whoever reads it next,
minutes or days later, is reported with ``staged_copy_of``. The list lives in
the state directory (``staged-copies.json``, 0600, replaced atomically) so an
upload long after the copy is still linked after the agent restarts. A copy
is forgotten when its file is gone, or past ``limit`` (oldest first).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from weightwarden import logs
from weightwarden.agent.files import kernel

STATE_FILE = "staged-copies.json"


@dataclass
class StagedCopy:
    path: str
    dev: tuple[int, int]
    ino: int
    sources: list[str]
    size: int
    ts: float
    handle: str | None = None  # hex file handle: finds the file again after a rename
    mount: str | None = None  # a mount point of its filesystem, to open the handle through
    remote: str | None = None
    writer: dict[str, Any] = field(default_factory=dict)


class StagedCopies:
    def __init__(self, state_dir: Path | None, limit: int = 10_000) -> None:
        self.file = state_dir / STATE_FILE if state_dir is not None else None
        self.limit = limit
        self.copies: OrderedDict[tuple[tuple[int, int], int], StagedCopy] = OrderedDict()
        self.dirty = False
        self.log = logs.get("agent.files")

    def add(self, copy: StagedCopy) -> None:
        key = (copy.dev, copy.ino)
        self.copies.pop(key, None)
        self.copies[key] = copy
        while len(self.copies) > self.limit:
            self.copies.popitem(last=False)
        self.dirty = True

    def get(self, dev: tuple[int, int], ino: int) -> StagedCopy | None:
        return self.copies.get((dev, ino))

    def load(self) -> list[StagedCopy]:
        """Copies from the last run that still exist (found by path, or by handle after a rename)."""
        if self.file is None:
            return []
        try:
            raw = json.loads(self.file.read_text())
            entries = raw["copies"]
        except FileNotFoundError:
            return []
        except (OSError, ValueError, KeyError, TypeError) as exc:
            self.log.error("staged_copies_unreadable", path=str(self.file), error=str(exc))
            return []
        found = []
        for entry in entries if isinstance(entries, list) else []:
            try:
                copy = StagedCopy(**{**entry, "dev": tuple(entry["dev"])})
            except (TypeError, KeyError):
                continue
            where = locate(copy)
            if where is not None:
                copy.path = where
                self.copies[(copy.dev, copy.ino)] = copy
                found.append(copy)
        return found

    def prune(self) -> None:
        for key, copy in list(self.copies.items()):
            where = locate(copy)
            if where is None:
                del self.copies[key]
                self.dirty = True
            elif where != copy.path:
                copy.path = where
                self.dirty = True

    def save(self) -> None:
        if self.file is None or not self.dirty:
            return
        self.dirty = False
        body = json.dumps({"version": 1, "saved_at": time.time(),
                           "copies": [asdict(c) for c in self.copies.values()]})
        self.file.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        # mkstemp: a fresh name, O_EXCL, mode 0600 (the file names who copied what).
        fd, tmp = tempfile.mkstemp(dir=self.file.parent, prefix=".staged-", suffix=".json")
        try:
            with os.fdopen(fd, "w") as fh:
                fh.write(body)
                fh.flush()
                os.fsync(fh.fileno())
            Path(tmp).replace(self.file)
        except OSError as exc:
            self.log.error("staged_copies_not_saved", path=str(self.file), error=str(exc))
            with contextlib.suppress(OSError):
                Path(tmp).unlink()


def locate(copy: StagedCopy) -> str | None:
    """The copy's path now: where it was if the inode is still there, else by its handle."""
    try:
        st = Path(copy.path).stat()
        if (os.major(st.st_dev), os.minor(st.st_dev), st.st_ino) == (*copy.dev, copy.ino):
            return copy.path
    except OSError:
        pass
    if not copy.handle or not copy.mount:
        return None
    try:
        mount_fd = os.open(copy.mount, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        fd = kernel.open_handle(mount_fd, bytes.fromhex(copy.handle))
    except (OSError, ValueError):
        return None
    finally:
        os.close(mount_fd)
    try:
        path = str(Path(f"/proc/self/fd/{fd}").readlink())
        st = os.fstat(fd)
    except OSError:
        return None
    finally:
        os.close(fd)
    if st.st_nlink == 0 or path.endswith(" (deleted)") or st.st_ino != copy.ino:
        return None
    return path
