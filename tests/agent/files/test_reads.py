"""Reads rchar does not count (splice, io_uring), mappings made before the agent started, and what a
holder's file_access carries. Real processes reading real files, with reads counted in the kernel
(``ebpf``) and, where the kernel sensor is off, from /proc (``off``)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.agent.files.collect import Collected
from tests.helpers.flaky import load_sensitive
from weightwarden.agent.files.patterns import WeightPaths
from weightwarden.agent.files.watcher import FileWatcher

pytestmark = pytest.mark.privileged
MiB = 2**20
SIZE = 16 * MiB


@pytest.fixture
def weight(tmp_path: Path) -> Path:
    (tmp_path / "models").mkdir()
    path = tmp_path / "models" / "model.safetensors"
    path.write_bytes(os.urandom(SIZE))
    return path


def start(weight: Path, tmp_path: Path, sensor: str = "ebpf") -> tuple[FileWatcher, Collected]:
    w = FileWatcher(WeightPaths([f"{weight.parent}/*.safetensors"]), state_dir=tmp_path / "state", sensor=sensor)
    w.start()
    assert w.mode == "fanotify", w.detail
    assert w.reads == ("kernel" if sensor == "ebpf" else "proc"), w.detail
    return w, Collected(w)


@pytest.fixture(params=["ebpf", "off"])
def sensor(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def watch(weight: Path, tmp_path: Path, sensor: str) -> Iterator[Collected]:
    w, c = start(weight, tmp_path, sensor)
    yield c
    c.stop()
    w.close()


SPLICE = """
import os, sys, threading, time
fd = os.open(sys.argv[1], os.O_RDONLY)
r, w = os.pipe()
null = os.open("/dev/null", os.O_WRONLY)
# The pipe is drained by splice too: no read() anywhere, so rchar never moves.
threading.Thread(target=lambda: [os.splice(r, null, 1 << 20) for _ in iter(int, 1)], daemon=True).start()
half = int(sys.argv[2]) // 2
while half > 0:
    half -= os.splice(fd, w, min(half, 1 << 16))
time.sleep(1.6)  # the watcher looks at the offset meanwhile
while os.splice(fd, w, 1 << 16):
    pass
os.close(fd)
"""


def test_splice_reads_are_never_zero(watch: Collected, weight: Path, sensor: str) -> None:
    proc = subprocess.Popen([sys.executable, "-c", SPLICE, str(weight), str(SIZE)], stdin=subprocess.DEVNULL)
    assert proc.wait(timeout=30) == 0
    rec = watch.wait("file_access", path=str(weight), final=True, pid=proc.pid)
    if sensor == "ebpf":
        # The kernel saw every splice from the page cache: exact.
        assert rec["how"] == "kernel" and rec["bytes_estimated"] is False and rec["bytes_read"] == SIZE, rec
    else:
        # Half was seen as the file offset; the rest went after our last look: the whole file, estimated.
        assert rec["how"] == "position" and rec["bytes_estimated"] is True and rec["bytes_read"] == SIZE, rec


@load_sensitive  # the agent describes a fast exiter late under load
def test_io_uring_reads_are_measured_or_estimated(watch: Collected, weight: Path, sensor: str) -> None:
    fio = subprocess.run(["fio", "--name=r", f"--filename={weight}", "--rw=read", "--bs=1M", "--ioengine=io_uring",
                          f"--size={SIZE}", "--output=/dev/null"], stdin=subprocess.DEVNULL, check=True)
    assert fio.returncode == 0
    rec = watch.wait("file_access", path=str(weight), final=True, where=lambda d: d["name"] == "fio")
    if sensor == "ebpf":
        # io_uring's buffered reads go through the page cache like any other: counted, not guessed.
        assert rec["how"] == "kernel" and rec["bytes_estimated"] is False and rec["bytes_read"] == SIZE, rec
    else:
        assert rec["how"] == "io_uring" and rec["bytes_estimated"] is True and rec["bytes_read"] == SIZE, rec


HOLDER = """
import mmap, sys, time
f = open(sys.argv[1], "rb")
m = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
f.close()
s = sum(m[i] for i in range(0, len(m), 4096))
print("mapped", flush=True)
sys.stdin.readline()  # then write a large file of its own
with open(sys.argv[2], "wb") as out:
    out.write(m[: 2 << 20])
print("wrote", flush=True)
time.sleep(30)
"""


def test_a_process_mapping_weights_before_the_agent_is_found(weight: Path, tmp_path: Path) -> None:
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(weight), str(tmp_path / "dump.bin")],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdin is not None
        assert holder.stdout.readline().strip() == "mapped"
        w, watch = start(weight, tmp_path)  # started after the mapping was made and the file closed
        try:
            rec = watch.wait("weight_holder", pid=holder.pid)
            assert rec["path"] == str(weight) and rec["resident_bytes"] >= 0.9 * SIZE
            holder.stdin.write("go\n")
            holder.stdin.flush()
            assert holder.stdout.readline().strip() == "wrote"
            copy = watch.wait("weights_copy", destination=str(tmp_path / "dump.bin"))
            assert copy["pid"] == holder.pid and copy["sources"] == [str(weight)] and copy["derivative"] is True
        finally:
            watch.stop()
            w.close()
    finally:
        holder.kill()
        holder.communicate()


LOADER = """
import mmap, sys, time
f = open(sys.argv[1], "rb")
header = f.read(8)  # a safetensors loader reads the header, then maps the rest
m = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
f.close()
s = sum(m[i] for i in range(0, len(m), 4096))
time.sleep(30)
"""


@load_sensitive  # the agent describes a fast exiter late under load
def test_file_access_of_a_holder_says_it_maps_the_file(watch: Collected, weight: Path) -> None:
    loader = subprocess.Popen([sys.executable, "-c", LOADER, str(weight)], stdin=subprocess.DEVNULL)
    try:
        # The mapping keeps the file open (the kernel closes it at munmap): a progress record.
        rec = watch.wait("file_access", pid=loader.pid)
        # What the collector needs to tell "holds them" from "read them to copy them".
        assert rec["mapped_bytes"] == SIZE and rec["how"] == "mmap" and rec["bytes_read"] < MiB, rec
    finally:
        loader.kill()
        loader.wait()
    # A streaming reader of the same file carries no mapping.
    subprocess.run(["cat", str(weight)], stdout=subprocess.DEVNULL, check=True)
    rec = watch.wait("file_access", final=True, where=lambda d: d["exe"] == "/usr/bin/cat")
    assert rec["mapped_bytes"] is None and rec["bytes_read"] >= SIZE - 1024
    assert rec["how"] in ("rchar", "taskstats", "kernel") and rec["bytes_estimated"] is False
