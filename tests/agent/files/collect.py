"""Collect a FileWatcher's payloads on a thread, and wait for one that matches."""

from __future__ import annotations

import queue
import threading
import time
from typing import Any

from weightwarden.agent.files.watcher import FileWatcher


class Collected:
    def __init__(self, watcher: FileWatcher) -> None:
        self.watcher = watcher
        self.items: list[tuple[float, str, dict[str, Any]]] = []
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._drain, daemon=True)
        self._t.start()

    def _drain(self) -> None:
        while not self._stop.is_set():
            try:
                payload = self.watcher.out.get(timeout=0.05)
            except queue.Empty:
                continue
            self.items.append((time.monotonic(), payload.TYPE, payload.model_dump(mode="json")))

    def of(self, type_: str, **match: Any) -> list[dict[str, Any]]:
        return [d for _t, ty, d in list(self.items) if ty == type_ and all(d.get(k) == v for k, v in match.items())]

    def wait(self, type_: str, timeout: float = 10, where: Any = None, **match: Any) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [d for d in self.of(type_, **match) if where is None or where(d)]
            if found:
                return found[0]
            time.sleep(0.05)
        raise AssertionError(f"no {type_} {match}; got {[(t, d.get('path')) for _x, t, d in self.items]}")

    def stop(self) -> None:
        self._stop.set()
        self._t.join(timeout=2)
