#!/usr/bin/env python3
"""Cost of watching the weights, measured against the watcher off in the same run.

1. A reader of a 2 GiB weight file (dd to /dev/null, page cache warm: the highest read rate the
   sensor can see), at 1 MiB and 64 KiB blocks: no watcher; the watcher with reads measured from
   /proc (fanotify notifications only); the watcher with reads counted in the kernel (eBPF); and
   the kernel programs alone (their loader told the weight's inode, no watcher, no fanotify mark),
   which says how much of the watcher's cost is the programs'; and an empty program on the same
   tracepoint (bench/hook_floor, built here with clang and libbpf): the kernel's dispatch to any
   program there, a floor no program on that hook can go under. Rounds are interleaved so a change
   in the machine's load hits every setting alike. What is compared is the reader's own CPU time
   (user + system, from wait4), not the wall clock: on a small shared machine the wall clock of a
   0.2 s read swings by several percent with whatever else runs (the watcher's own threads among
   them), while what the sensor costs a reader is the work done in the reader's syscalls. Each
   round keeps the least disturbed of 3 runs; the median over rounds is compared, and the best.
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
from weightwarden.agent.files.ebpf.loader import FileBpf, Weight  # noqa: E402
from weightwarden.agent.files.ebpf.wire import K_FILE  # noqa: E402
from weightwarden.agent.files.patterns import WeightPaths  # noqa: E402
from weightwarden.agent.files.watcher import FileWatcher  # noqa: E402

# no watcher; notifications and /proc only; kernel counts; the kernel programs alone; an empty program
SETTINGS = ("none", "proc", "ebpf", "bpf only", "empty hook")
FLOOR = REPO / "bench" / "hook_floor"


def build_empty_hook(out: Path) -> tuple[Path, Path]:
    """The empty program's object and its loader, built into ``out``."""
    obj, loader = out / "empty.bpf.o", out / "load"
    arch = subprocess.run(["cc", "-dumpmachine"], capture_output=True, text=True, check=True).stdout.strip()
    subprocess.run(["clang", "-O2", "-g", "-target", "bpf", f"-I/usr/include/{arch}", "-c", str(FLOOR / "empty.bpf.c"),
                    "-o", str(obj)], check=True)  # the multiarch dir: linux/bpf.h wants asm/types.h
    subprocess.run(["cc", "-O2", str(FLOOR / "load.c"), "-o", str(loader), "-lbpf"], check=True)
    return obj, loader


def dd(path: Path, bs: str) -> tuple[float, float]:
    """(wall, cpu) seconds of one dd reading ``path``: dd's own timing of its copy, and the CPU time
    (user + system) of the whole dd process, from wait4."""
    proc = subprocess.Popen(["dd", f"if={path}", "of=/dev/null", f"bs={bs}"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    m = re.search(r"copied, ([\d.]+) s", err)
    assert proc.returncode == 0 and m, err
    return float(m.group(1)), usage.ru_utime + usage.ru_stime


class Sensor:
    """One setting, running: nothing, a watcher, or the kernel programs alone."""

    def __init__(self, weights: Path, big: Path, setting: str, empty: tuple[Path, Path]) -> None:
        self.watcher: FileWatcher | None = None
        self.bpf: FileBpf | None = None
        self.empty: subprocess.Popen[str] | None = None
        if setting in ("proc", "ebpf"):
            w = FileWatcher(WeightPaths([f"{weights}/*.safetensors"]), sensor="off" if setting == "proc" else "ebpf")
            w.start()
            assert w.reads == ("kernel" if setting == "ebpf" else "proc"), w.detail
            self.watcher = w
        elif setting == "bpf only":
            st = big.stat()
            self.bpf = FileBpf()
            self.bpf.start()
            self.bpf.add([Weight(1, (os.major(st.st_dev), os.minor(st.st_dev)), st.st_ino, K_FILE)])
            self.bpf.read()  # the add is in the kernel before the first read
        elif setting == "empty hook":
            obj, loader = empty
            self.empty = subprocess.Popen([str(loader), str(obj)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                          text=True)
            assert self.empty.stdout is not None
            assert self.empty.stdout.readline().strip() == "ready", "the empty program did not attach"

    def close(self) -> None:
        if self.empty is not None:
            assert self.empty.stdin is not None
            self.empty.stdin.close()
            self.empty.wait()
        if self.watcher is not None:
            self.watcher.close()
        if self.bpf is not None:
            self.bpf.close()


Runs = dict[tuple[str, str, str], list[tuple[float, float]]]


def readers(big: Path, other: Path, weights: Path, rounds: int, empty: tuple[Path, Path]) -> Runs:
    """(file, block, setting) -> (wall, cpu) seconds, one per round: the least of 3 dd runs each."""
    out: Runs = {}
    for rnd in range(rounds):
        order = SETTINGS if rnd % 2 == 0 else SETTINGS[::-1]
        for setting in order:
            sensor = Sensor(weights, big, setting, empty)
            try:
                for kind, path, bs in (("weight", big, "1M"), ("weight", big, "64K"), ("other", other, "64K")):
                    runs = [dd(path, bs) for _ in range(3)]
                    out.setdefault((kind, bs, setting), []).append((min(r[0] for r in runs), min(r[1] for r in runs)))
            finally:
                sensor.close()
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
    """How much longer ``a`` took than ``b``."""
    return f"{(a / b - 1) * 100:+.2f}%"


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
        empty = build_empty_hook(tmp)
        got = readers(big, other, weights, args.rounds, empty)
        print(f"\n{args.gib} GiB file read with dd to /dev/null, page cache warm; least of 3 runs per round, "
              f"{args.rounds} rounds interleaved\n")
        print(f"{'file':>8} {'block':>6} {'reads via':>10} {'cpu ms':>7} {'median':>8} {'best':>8} "
              f"{'wall GB/s':>10} {'median':>8} {'best':>8}")
        size = big.stat().st_size
        for (kind, bs, setting), runs in got.items():
            base = got[(kind, bs, "none")]
            cpu, base_cpu = [r[1] for r in runs], [r[1] for r in base]
            wall, base_wall = [r[0] for r in runs], [r[0] for r in base]
            med, bmed = statistics.median(cpu), statistics.median(base_cpu)
            wmed = statistics.median(wall)
            print(f"{kind:>8} {bs:>6} {setting:>10} {med * 1e3:>7.1f} {pct(med, bmed):>8} {pct(min(cpu), min(base_cpu)):>8} "
                  f"{size / wmed / 1e9:>10.2f} {pct(wmed, statistics.median(base_wall)):>8} "
                  f"{pct(min(wall), min(base_wall)):>8}")
        print("(cost: how much more CPU time (wall time) the reader took than with no watcher, median over rounds "
              "and best against best; 'other' is a file that is not a weight;\n"
              "'empty hook': an empty program on the tracepoint the sensor counts reads on, the hook's own cost)")
        bare_runs, watched_runs = [], []
        for _ in range(3):  # interleaved
            bare_runs.append(writes())
            w = Sensor(weights, big, "ebpf", empty)
            time.sleep(0.3)
            watched_runs.append(writes())
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
