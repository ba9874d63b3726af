#!/usr/bin/env python3
"""Cost of watching the weights, measured against the watcher off in the same run.

1. A reader of a 2 GiB weight file (dd to /dev/null, page cache warm: the highest read rate the
   sensor can see), at 1 MiB and 64 KiB blocks: no watcher; the watcher with reads measured from
   /proc (fanotify notifications only); the watcher with reads counted in the kernel (eBPF).
   Rounds are interleaved so a change in the machine's load hits every setting alike; the best
   run of each setting is compared (the least disturbed), and the median too.
2. Processes that never touch the weights: a reader of another 2 GiB file at 64 KiB blocks, and a
   process writing and closing 20,000 files of 4 KiB (every filesystem has a close-write mark).
3. Open latency of a weight file (open, read 4 KiB, close) with the agent running, stopped
   (SIGSTOP) and absent (killed): the agent is a process of its own here, as in production.

Root (fanotify, eBPF). Run: python bench/files.py [--gib 2] [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from weightwarden import logs  # noqa: E402
from weightwarden.agent.files.patterns import WeightPaths  # noqa: E402
from weightwarden.agent.files.watcher import FileWatcher  # noqa: E402

SETTINGS = ("none", "proc", "ebpf")  # no watcher; notifications and /proc only; kernel counts


def dd(path: Path, bs: str) -> float:
    out = subprocess.run(["dd", f"if={path}", "of=/dev/null", f"bs={bs}"], capture_output=True, text=True).stderr
    m = re.search(r"copied, ([\d.]+) s", out)
    return path.stat().st_size / float(m.group(1)) if m else 0.0


def watcher(weights: Path, setting: str) -> FileWatcher | None:
    if setting == "none":
        return None
    w = FileWatcher(WeightPaths([f"{weights}/*.safetensors"]), sensor="off" if setting == "proc" else "ebpf")
    w.start()
    assert w.reads == ("kernel" if setting == "ebpf" else "proc"), w.detail
    return w


def readers(big: Path, other: Path, weights: Path, rounds: int) -> dict[tuple[str, str, str], list[float]]:
    """(file, block, setting) -> throughputs, one per round (best of 3 dd runs each)."""
    out: dict[tuple[str, str, str], list[float]] = {}
    for rnd in range(rounds):
        order = SETTINGS if rnd % 2 == 0 else SETTINGS[::-1]
        for setting in order:
            w = watcher(weights, setting)
            try:
                for bs in ("1M", "64K"):
                    out.setdefault(("weight", bs, setting), []).append(max(dd(big, bs) for _ in range(3)))
                out.setdefault(("other", "64K", setting), []).append(max(dd(other, "64K") for _ in range(3)))
            finally:
                if w is not None:
                    w.close()
    return out


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


AGENT = """
import sys, time
sys.path.insert(0, sys.argv[1])
from weightwarden.agent.files.patterns import WeightPaths
from weightwarden.agent.files.watcher import FileWatcher
w = FileWatcher(WeightPaths([sys.argv[2] + "/*.safetensors"]), sensor="auto")
w.start()
print(w.reads, flush=True)
while True:
    while not w.out.empty():
        w.out.get()
    time.sleep(0.05)
"""


def opens(path: Path, n: int = 2000) -> list[float]:
    """Seconds each open + read 4 KiB + close of a weight file took."""
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fd = os.open(path, os.O_RDONLY)
        os.read(fd, 4096)
        os.close(fd)
        out.append(time.perf_counter() - t0)
    return out


def latency(small: Path, weights: Path) -> dict[str, list[float]]:
    agent = subprocess.Popen([sys.executable, "-c", AGENT, str(REPO), str(weights)], stdout=subprocess.PIPE, text=True)
    assert agent.stdout is not None
    reads = agent.stdout.readline().strip()
    out = {f"running ({reads})": opens(small)}
    os.kill(agent.pid, signal.SIGSTOP)
    try:
        out["stopped (SIGSTOP)"] = opens(small)
    finally:
        os.kill(agent.pid, signal.SIGCONT)
    agent.kill()
    agent.wait()
    out["absent (killed)"] = opens(small)
    return out


def pct(a: float, b: float) -> str:
    return f"{(1 - a / b) * 100:+.2f}%"


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--gib", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    logs.configure()
    tmp = Path(tempfile.mkdtemp(dir="/var/tmp"))
    weights, elsewhere = tmp / "models", tmp / "data"
    weights.mkdir()
    elsewhere.mkdir()
    big, other, small = weights / "model.safetensors", elsewhere / "dataset.bin", weights / "small.safetensors"
    for path in (big, other):
        subprocess.run(["dd", "if=/dev/zero", f"of={path}", "bs=1M", f"count={args.gib * 1024}"], capture_output=True,
                       check=True)
    small.write_bytes(os.urandom(4096))
    try:
        for path in (big, other):
            dd(path, "1M")  # warm the page cache
        got = readers(big, other, weights, args.rounds)
        print(f"\n{args.gib} GiB file read with dd to /dev/null, page cache warm; best of 3 per round, "
              f"{args.rounds} rounds interleaved\n")
        print(f"{'file':>8} {'block':>6} {'reads via':>9} {'best GB/s':>10} {'cost':>8} {'median GB/s':>12} {'cost':>8}")
        for (kind, bs, setting), runs in got.items():
            base = got[(kind, bs, "none")]
            best, med = max(runs), statistics.median(runs)
            print(f"{kind:>8} {bs:>6} {setting:>9} {best / 1e9:>10.2f} {pct(best, max(base)):>8} {med / 1e9:>12.2f} "
                  f"{pct(med, statistics.median(base)):>8}")
        print("(cost: how much slower than with no watcher; 'other' is a file that is not a weight)")
        bare_runs, watched_runs = [], []
        for _ in range(3):  # interleaved
            bare_runs.append(writes())
            w = watcher(weights, "ebpf")
            time.sleep(0.3)
            watched_runs.append(writes())
            assert w is not None
            w.close()
        bare_w, watched_w = min(bare_runs), min(watched_runs)
        print(f"\n20,000 files of 4 KiB written and closed on tmpfs (best of 3, interleaved): {bare_w:.2f} s bare, "
              f"{watched_w:.2f} s watched ({(watched_w / bare_w - 1) * 100:+.1f}%; "
              f"{(watched_w - bare_w) / 20000 * 1e6:.1f} us per file)")
        print("\nopen + read 4 KiB + close of a weight file, 2,000 times, with the agent (a process of its own):\n")
        print(f"{'agent':>28} {'median us':>10} {'p99 us':>8} {'max ms':>8}")
        for state, times in latency(small, weights).items():
            times.sort()
            print(f"{state:>28} {statistics.median(times) * 1e6:>10.1f} {times[int(len(times) * 0.99)] * 1e6:>8.1f} "
                  f"{times[-1] * 1e3:>8.2f}")
    finally:
        shutil.rmtree(tmp)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
