"""The kernel's byte counts, straight from the file-read loader: real processes read a real weight
file in every way the sensor claims to count, and each count must be exact (the per-CPU slot, its
takeover by another reader, threads, exits and the rchar settling of short or mid-page reads are all
on these paths). No watcher in between: what the programs counted is what is checked."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from weightwarden.agent.files.ebpf import wire
from weightwarden.agent.files.ebpf.loader import FileBpf, Weight

pytestmark = pytest.mark.privileged
MiB = 2**20
SIZE = 8 * MiB + 1234  # not a whole number of pages: the last one is clipped at the file's end


@pytest.fixture(scope="module")
def bpf() -> Iterator[FileBpf]:
    b = FileBpf()
    features = b.start()
    assert features["reads"].on and features["mmap"].on, features
    yield b
    b.close()


@pytest.fixture
def weight(tmp_path: Path, bpf: FileBpf) -> Iterator[Path]:
    path = tmp_path / "model.safetensors"
    path.write_bytes(os.urandom(SIZE))
    st = path.stat()
    bpf.add([Weight(41, (os.major(st.st_dev), os.minor(st.st_dev)), st.st_ino, wire.K_FILE)])
    subprocess.run(["cat", str(path)], stdout=subprocess.DEVNULL, check=True)  # in the page cache
    yield path
    bpf.remove([((os.major(st.st_dev), os.minor(st.st_dev)), st.st_ino)])


def run(code: str, *args: object) -> int:
    proc = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return int(proc.stdout.split()[0]) if proc.stdout.strip() else 0


def counted(bpf: FileBpf, path: Path, code: str, *args: object) -> tuple[int, int, int]:
    """(bytes, mapped, expected) of one process that runs ``code``; it prints its pid and what it read."""
    pid_and_expected = subprocess.run([sys.executable, "-c", code, str(path), *map(str, args)], capture_output=True,
                                      text=True)
    assert pid_and_expected.returncode == 0, pid_and_expected.stderr
    pid, expected = map(int, pid_and_expected.stdout.split()[:2])
    ino = path.stat().st_ino
    mine = [r for r in bpf.read().readers if r.key.tgid == pid and r.key.ino == ino]
    return sum(r.bytes for r in mine), sum(r.mapped for r in mine), expected


HEAD = "import os, sys, threading\nfd = os.open(sys.argv[1], os.O_RDONLY)\nsize = os.fstat(fd).st_size\n"
BLOCKS = HEAD + """
n, bs = 0, int(sys.argv[2])
while (got := len(os.read(fd, bs))):
    n += got
print(os.getpid(), n)
"""
SMALL = HEAD + """
n = 0
for i in range(3000):  # the same pages over and over, 100 bytes at a time
    n += len(os.pread(fd, 100, (i * 100) % 20000))
print(os.getpid(), n)
"""
MID_PAGE = HEAD + """
n = 0
for off in (1000, 8191, 3 * 4096 + 17):
    n += len(os.pread(fd, 5000, off))
print(os.getpid(), n)
"""
SENDFILE = HEAD + """
null = os.open("/dev/null", os.O_WRONLY)
n = 0
while (got := os.sendfile(null, fd, None, 1 << 20)):
    n += got
print(os.getpid(), n)
"""
SPLICE = HEAD + """
r, w = os.pipe()
null = os.open("/dev/null", os.O_WRONLY)
n = 0
while (got := os.splice(fd, w, 1 << 16)):
    n += got
    os.splice(r, null, got)
print(os.getpid(), n)
"""
COPY_RANGE = HEAD + """
out = os.open(sys.argv[2], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
n = 0
while (got := os.copy_file_range(fd, out, 1 << 20)):
    n += got
print(os.getpid(), n)
"""
THREADS = HEAD + """
def reader(bs):
    own = os.open(sys.argv[1], os.O_RDONLY)
    while os.read(own, bs):
        pass
ts = [threading.Thread(target=reader, args=(bs,)) for bs in (65536, 4096, 100000)]
for t in ts: t.start()
for t in ts: t.join()
print(os.getpid(), 3 * size)
"""
THREAD_EXITS = HEAD + """
def small(k):
    own = os.open(sys.argv[1], os.O_RDONLY)
    for i in range(k):
        os.pread(own, 100, 7 + i * 100)
for k in (50, 70):  # each thread's last read is settled when it exits, its process still running
    t = threading.Thread(target=small, args=(k,)); t.start(); t.join()
small(30)
print(os.getpid(), 150 * 100)
"""
FAILED_THEN_SPLICE = HEAD + """
import ctypes, errno
libc = ctypes.CDLL(None, use_errno=True)
assert libc.read(fd, ctypes.c_void_p(1), 65536) == -1 and ctypes.get_errno() == errno.EFAULT  # pages, no rchar
r, w = os.pipe()
null = os.open("/dev/null", os.O_WRONLY)
n = 0
while n < (1 << 20):
    got = os.splice(fd, w, 1 << 16)
    os.splice(r, null, got)
    n += got
os.read(os.open("/dev/zero", os.O_RDONLY), 1)  # rchar + 1: the failed read must not be settled with it
print(os.getpid(), n)
"""
MMAP = HEAD + """
import mmap
m = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
s = sum(m[i] for i in range(0, size, 4096))
print(os.getpid(), size)
"""


@pytest.mark.parametrize("block", [65536, 4097, MiB, 3 * MiB])
def test_reads_in_any_block_size_are_exact(bpf: FileBpf, weight: Path, block: int) -> None:
    got, _, expected = counted(bpf, weight, BLOCKS, block)
    assert expected == SIZE and got == SIZE


@pytest.mark.parametrize("code", [SMALL, MID_PAGE], ids=["same-pages", "mid-page"])
def test_small_and_mid_page_reads_count_what_they_returned(bpf: FileBpf, weight: Path, code: str) -> None:
    got, _, expected = counted(bpf, weight, code)
    assert got == expected


@pytest.mark.parametrize("code", [SENDFILE, SPLICE, COPY_RANGE], ids=["sendfile", "splice", "copy_file_range"])
def test_reads_without_read_are_exact(bpf: FileBpf, weight: Path, tmp_path: Path, code: str) -> None:
    got, _, expected = counted(bpf, weight, code, tmp_path / "copy")
    assert expected == SIZE and got == SIZE


@pytest.mark.parametrize("code", [THREADS, THREAD_EXITS], ids=["together", "one-after-another"])
def test_threads_of_a_process_add_up(bpf: FileBpf, weight: Path, code: str) -> None:
    got, _, expected = counted(bpf, weight, code)
    assert got == expected


def test_a_failed_read_then_splice_is_never_counted_short(bpf: FileBpf, weight: Path) -> None:
    """rchar settles only the syscall that asked for the pages: a read that failed and the splices
    after it (neither moves rchar) are not one read that returned one byte."""
    got, _, expected = counted(bpf, weight, FAILED_THEN_SPLICE)
    assert expected == MiB and MiB <= got <= MiB + 65536


def test_mapped_pages_are_counted_apart(bpf: FileBpf, weight: Path) -> None:
    got, mapped, _ = counted(bpf, weight, MMAP)
    assert got == 0 and 0 < mapped <= SIZE


PINNED = """
import os, sys
os.sched_setaffinity(0, {0})
fd = os.open(sys.argv[1], os.O_RDONLY)
n = 0
while (got := len(os.read(fd, int(sys.argv[2])))):
    n += got
    os.sched_yield()
print(os.getpid(), n)
"""


def test_readers_taking_turns_on_one_cpu_each_keep_their_own_count(bpf: FileBpf, weight: Path) -> None:
    """Three processes on CPU 0 take its slot from each other on almost every read."""
    procs = [subprocess.Popen([sys.executable, "-c", PINNED, str(weight), str(bs)], stdout=subprocess.PIPE, text=True)
             for bs in (65536, 8192, 12345)]
    outs = [p.communicate(timeout=60)[0].split() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    readers = bpf.read().readers
    for pid, n in ((int(o[0]), int(o[1])) for o in outs):
        assert n == SIZE
        assert sum(r.bytes for r in readers if r.key.tgid == pid and r.key.ino == weight.stat().st_ino) == SIZE


def test_other_files_are_not_counted(bpf: FileBpf, weight: Path, tmp_path: Path) -> None:
    other = tmp_path / "data.bin"
    other.write_bytes(os.urandom(MiB))
    pid = run(BLOCKS.replace("print(os.getpid(), n)", "print(os.getpid())"), other, 65536)
    assert not [r for r in bpf.read().readers if r.key.tgid == pid]
