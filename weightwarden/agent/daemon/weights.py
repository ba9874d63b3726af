"""The policy's weight files as the daemon watches them: the file watcher (its own thread fills its
queue, the daemon's files loop empties it) and their total size as last measured (in heartbeats)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

from weightwarden.agent.daemon.host import weight_paths
from weightwarden.agent.daemon.state import FeatureJson, FileWatchJson, WeightsJson
from weightwarden.agent.files.watcher import FileWatcher
from weightwarden.agent.policy.loader import LoadedPolicy
from weightwarden.asyncutil import wait_for_stop
from weightwarden.events import Payload


class WeightWatch:
    def __init__(self, state_dir: Path, emit: Callable[[Payload], None]) -> None:
        self.state_dir = state_dir
        self.emit = emit
        self.files: FileWatcher | None = None
        self.total: WeightsJson | None = None

    def start(self, loaded: LoadedPolicy) -> dict[str, FeatureJson]:
        """Watch the policy's weights, if it names any (blocking: run it in a worker thread); the features
        to report at start."""
        weights = loaded.policy.spec.weights
        if not (weights.paths or weights.canaries):
            return {}
        self.files = FileWatcher(weight_paths(loaded), state_dir=self.state_dir)
        self.files.start()
        features: dict[str, FeatureJson] = {
            "file_watch": {"ok": self.files.mode == "fanotify", "detail": self.files.detail},
            # Reads of the weights counted in the kernel (eBPF), or measured from /proc where it cannot.
            "file_reads": {"ok": self.files.reads == "kernel", "detail": self.files.reads_detail},
        }
        self.measure(loaded)
        return features

    def update(self, loaded: LoadedPolicy) -> None:
        if self.files is not None:
            self.files.update(weight_paths(loaded))

    def measure(self, loaded: LoadedPolicy) -> None:
        paths = weight_paths(loaded)
        files, total = paths.total_size()
        self.total = {"paths": paths.patterns, "canaries": paths.canaries, "files": files,
                      "total_bytes": total, "measured_at": time.time()}

    def drain(self) -> None:
        """Emit what the file watcher's thread has queued (that thread fills it, we empty it)."""
        if self.files is not None:
            while not self.files.out.empty():
                self.emit(self.files.out.get_nowait())

    async def loop(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            self.drain()
            await wait_for_stop(stop, 0.2)

    async def close(self) -> None:
        """Stop the watcher, emit its last records, and forget it."""
        if self.files is not None:
            await asyncio.to_thread(self.files.close)
            self.drain()
            self.files = None

    def health(self) -> FileWatchJson:
        return {"mode": self.files.mode if self.files else "off",
                "detail": self.files.health_detail() if self.files else "no weight paths in the policy",
                "dropped": self.files.dropped if self.files else 0}
