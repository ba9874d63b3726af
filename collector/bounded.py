"""A dict with a size limit: the collector's caches only skip work, so forgetting is always safe."""

from __future__ import annotations

import itertools
from typing import TypeVar

K = TypeVar("K")
V = TypeVar("V")


class BoundedDict(dict[K, V]):
    """Forgets its oldest entries (insertion order) past ``limit``; a tenth at a time, so the
    cost per insertion stays constant. Only ``d[k] = v`` is bounded: use that to add."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        if limit < 1:
            raise ValueError("limit must be at least 1")
        self.limit = limit

    def __setitem__(self, key: K, value: V) -> None:
        if len(self) >= self.limit and key not in self:
            for old in list(itertools.islice(iter(self), max(1, self.limit // 10))):
                del self[old]
        super().__setitem__(key, value)
