"""Which paths are weights: directories and globs from spec.weights.paths. Pure, plus a size walk."""

from __future__ import annotations

import glob
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

GLOB_CHARS = set("*?[")


def _translate(pattern: str) -> str:
    """A glob where ``**`` crosses directories and ``*`` does not."""
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        elif pattern[i] == "[":
            end = pattern.find("]", i + 1)
            if end < 0:
                out.append(re.escape("["))
                i += 1
            else:
                out.append(pattern[i:end + 1].replace("[!", "[^"))
                i = end + 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return "".join(out) + r"\Z"


def base_dir(pattern: str) -> str:
    """The deepest directory of a pattern that has no glob characters."""
    parts = pattern.rstrip("/").split("/")
    fixed: list[str] = []
    for part in parts:
        if GLOB_CHARS & set(part):
            return "/".join(fixed) or "/"
        fixed.append(part)
    return pattern.rstrip("/") or "/"


@dataclass
class WeightPaths:
    patterns: list[str]
    canaries: list[str] = field(default_factory=list)
    staged: dict[str, list[str]] = field(default_factory=dict)  # copy -> the weight files it came from

    def __post_init__(self) -> None:
        self._plain = [p.rstrip("/") for p in self.patterns if not GLOB_CHARS & set(p)]
        self._globs = [re.compile(_translate(p)) for p in self.patterns if GLOB_CHARS & set(p)]
        self._canaries = {os.path.normpath(c) for c in self.canaries}
        self._cache: dict[str, bool] = {}

    def add_staged(self, path: str, sources: list[str]) -> None:
        if len(self.staged) >= 10_000:
            self.staged.pop(next(iter(self.staged)))
        self.staged[path] = sources
        self._cache.pop(path, None)

    def staged_from(self, path: str) -> list[str]:
        return self.staged.get(path, [])

    def is_canary(self, path: str) -> bool:
        return path in self._canaries

    def matches(self, path: str) -> bool:
        hit = self._cache.get(path)
        if hit is None:
            hit = self._match(path)
            if len(self._cache) > 50_000:  # bounded: a directory of many small files
                self._cache.clear()
            self._cache[path] = hit
        return hit

    def _match(self, path: str) -> bool:
        if path in self._canaries or path in self.staged:
            return True
        for plain in self._plain:
            if path == plain or path.startswith(plain + "/"):
                return True
        return any(g.match(path) for g in self._globs)

    def roots(self) -> list[str]:
        """Directories to watch: the fixed prefix of each pattern, and each canary's directory."""
        roots = {base_dir(p) for p in self.patterns} | {os.path.dirname(c) for c in self._canaries}  # noqa: PTH120 - as written
        return sorted(roots)

    def files(self) -> list[str]:
        seen: set[str] = set()
        for pattern in self.patterns:
            # glob.glob's rules are the policy's (``**`` with recursive=True, hidden names not matched by ``*``).
            hits = glob.glob(pattern, recursive=True) if GLOB_CHARS & set(pattern) else [pattern]  # noqa: PTH207
            for hit in hits:
                if Path(hit).is_dir():
                    for d, _dirs, names in os.walk(hit):
                        seen.update(os.path.join(d, n) for n in names)  # noqa: PTH118 - every file of the tree
                elif Path(hit).is_file():
                    seen.add(hit)
        return sorted(f for f in seen if Path(f).is_file() and f not in self._canaries)

    def total_size(self) -> tuple[int, int]:
        """(files, bytes) of the weights on this host; hard links counted once."""
        inodes: set[tuple[int, int]] = set()
        total = 0
        for f in self.files():
            try:
                st = Path(f).stat()
            except OSError:
                continue
            if (st.st_dev, st.st_ino) in inodes:
                continue
            inodes.add((st.st_dev, st.st_ino))
            total += st.st_size
        return len(inodes), total
