#!/usr/bin/env python3
"""Cost of watching the weights: a multi-GB weight file streamed with and without the watcher,
and small files written elsewhere (every filesystem has a close-write mark) with and without it.

Reports the reader's throughput (dd, 1 MiB blocks, page cache warm: the
highest event rate the watcher can see), the watcher thread's CPU, and how
many events the read produced after coalescing; then the time a process
takes to write and close 20,000 files of 4 KiB (the close-write events of a
busy host, none of them from a weights reader). Root (fanotify).

Run: python bench/files.py [--gib 2]
"""

from __future__ import annotations

import argparse
import os
import queue
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import psutil  # noqa: E402

from weightwarden import logs  # noqa: E402
from weightwarden.agent.files.patterns import WeightPaths  # noqa: E402
from weightwarden.agent.files.watcher import FileWatcher  # noqa: E402
from weightwarden.events import FileAccess  # noqa: E402


def dd(path: Path, bs: str) -> float:
    out = subprocess.run(["dd", f"if={path}", "of=/dev/null", f"bs={bs}"], capture_output=True, text=True).stderr
    m = re.search(r"copied, ([\d.]+) s", out)
    return path.stat().st_size / float(m.group(1)) if m else 0.0


WRITER = """
import os, sys, time
d = sys.argv[1]
t0 = time.perf_counter()
for i in range(20000):
    fd = os.open(f"{d}/f{i}", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.write(fd, b"x" * 4096)
    os.close(fd)
print(time.perf_counter() - t0)
"""


def writes() -> float:
    # tmpfs: on a disk, deleting 20,000 files (discard, journal) slows the next run more than anything here.
    d = tempfile.mkdtemp(dir="/dev/shm")
    try:
        out = subprocess.run([sys.executable, "-c", WRITER, d], capture_output=True, text=True, check=True).stdout
    finally:
        shutil.rmtree(d)
    return float(out)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--gib", type=int, default=2)
    args = parser.parse_args()
    logs.configure()
    tmp = Path(tempfile.mkdtemp(dir="/var/tmp"))
    weights = tmp / "models"
    weights.mkdir()
    big = weights / "model.safetensors"
    subprocess.run(["dd", "if=/dev/zero", f"of={big}", "bs=1M", f"count={args.gib * 1024}"], capture_output=True,
                   check=True)
    try:
        rows = []
        for bs in ("1M", "64K"):
            dd(big, bs)  # warm the page cache
            bare = max(dd(big, bs) for _ in range(3))
            watcher = FileWatcher(WeightPaths([f"{weights}/*.safetensors"]))
            watcher.start()
            thread = next(t for t in psutil.Process().threads() if t.id == watcher._thread.native_id)  # type: ignore[union-attr]
            cpu0 = thread.user_time + thread.system_time
            t0 = time.monotonic()
            watched = max(dd(big, bs) for _ in range(3))
            time.sleep(1.5)
            elapsed = time.monotonic() - t0
            thread = next(t for t in psutil.Process().threads() if t.id == watcher._thread.native_id)  # type: ignore[union-attr]
            cpu = thread.user_time + thread.system_time - cpu0
            watcher.close()
            events = []
            while True:
                try:
                    events.append(watcher.out.get_nowait())
                except queue.Empty:
                    break
            finals = [e for e in events if isinstance(e, FileAccess) and e.final]
            reads = sum(e.reads for e in finals)
            total = sum(e.bytes_read for e in finals)
            rows.append((bs, bare, watched, cpu, elapsed, len(events), reads, total))
        print(f"\n{args.gib} GiB weight file read 3 times with dd, page cache warm\n")
        print(f"{'block':>6} {'bare GB/s':>10} {'watched GB/s':>13} {'cost':>7} {'watcher CPU s':>14} "
              f"{'events':>7} {'bytes reported':>15}")
        for bs, bare, watched, cpu, elapsed, n, _reads, total in rows:
            print(f"{bs:>6} {bare / 1e9:>10.2f} {watched / 1e9:>13.2f} {(1 - watched / bare) * 100:>6.1f}% "
                  f"{cpu:>8.2f} ({cpu / elapsed * 100:.0f}%) {n:>7} {total:>15,}")
        print(f"(3 reads of {big.stat().st_size:,} bytes = {3 * big.stat().st_size:,} expected)")
        bare_runs, watched_runs = [], []
        for _ in range(3):  # interleaved, so a change in the machine's load hits both alike
            bare_runs.append(writes())
            watcher = FileWatcher(WeightPaths([f"{weights}/*.safetensors"]))
            watcher.start()
            time.sleep(0.3)
            watched_runs.append(writes())
            watcher.close()
        bare_w, watched_w = min(bare_runs), min(watched_runs)
        print(f"\n20,000 files of 4 KiB written and closed on tmpfs (best of 3, interleaved): {bare_w:.2f} s bare, "
              f"{watched_w:.2f} s watched ({(watched_w / bare_w - 1) * 100:+.1f}%; {(watched_w - bare_w) / 20000 * 1e6:.1f} "
              "us per file)")
    finally:
        big.unlink()
        os.rmdir(weights)
        os.rmdir(tmp)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
