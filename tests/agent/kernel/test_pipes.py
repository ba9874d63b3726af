"""Pipe and FIFO ends as /proc shows them, on real pipes, FIFOs and processes."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from weightwarden.agent.kernel.pipes import PipeWriters, fifo_inode, pipe_ends
from weightwarden.agent.kernel.procmap import ProcessTable

PROC = Path("/proc")


def test_a_fifo_is_known_by_its_inode_and_the_end_held(tmp_path: Path) -> None:
    fifo = tmp_path / "f"
    os.mkfifo(fifo)
    r = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # a reader first: then opening to write does not wait
    w = os.open(fifo, os.O_WRONLY)
    plain = os.open(tmp_path / "plain", os.O_WRONLY | os.O_CREAT)
    try:
        inode = Path(fifo).stat().st_ino
        assert fifo_inode(f"/proc/self/fd/{r}") == inode and fifo_inode(f"/proc/self/fd/{plain}") is None
        paths: dict[int, str] = {}
        ends = dict(pipe_ends(PROC, os.getpid(), paths))
        assert ends[inode] == "rw"  # this process holds both ends, by two descriptors
        assert paths[inode] == str(fifo)
        assert (tmp_path / "plain").stat().st_ino not in ends, "a plain file is not a pipe"
    finally:
        for fd in (r, w, plain):
            os.close(fd)


def test_the_writers_of_a_pipe_and_of_a_fifo_are_found(tmp_path: Path) -> None:
    """sh -c 'cat src | cat > /dev/null' style: whoever holds the write end is found by the scan."""
    fifo = tmp_path / "f"
    os.mkfifo(fifo)
    writer = subprocess.Popen(["sh", "-c", f"exec sleep 30 > {fifo}"])  # opens the FIFO to write: waits for us
    reader_fd = os.open(fifo, os.O_RDONLY)  # now the writer's open returns
    piped = subprocess.Popen(["sleep", "30"], stdout=subprocess.PIPE)  # writes the pipe we read
    try:
        table = ProcessTable()
        mine = dict(table._pipe_ends(os.getpid()))
        fifo_ino = Path(fifo).stat().st_ino
        assert piped.stdout is not None
        pipe_ino = os.fstat(piped.stdout.fileno()).st_ino
        assert mine[fifo_ino] == "r" and mine[pipe_ino] == "r"
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and dict(table._pipe_ends(writer.pid)).get(fifo_ino) != "w":
            time.sleep(0.05)
        assert dict(table._pipe_ends(writer.pid))[fifo_ino] == "w"
        scan = PipeWriters()
        found = scan.writers({fifo_ino, pipe_ino}, table.fifo_paths)
        assert writer.pid in found[fifo_ino] and piped.pid in found[pipe_ino]
        assert os.getpid() not in found[fifo_ino], "a reader is not a writer"
        again = scan.writers({fifo_ino}, table.fifo_paths)
        assert again[fifo_ino] == found[fifo_ino] and scan.scans == 1, "answers are kept: no second scan"
    finally:
        os.close(reader_fd)
        for p in (writer, piped):
            p.kill()
            p.wait()
        if piped.stdout is not None:
            piped.stdout.close()


def test_scans_are_bounded(tmp_path: Path) -> None:
    now = [100.0]
    scan = PipeWriters(clock=lambda: now[0])
    scan.writers({1}, {})
    scan.writers({2}, {})  # asked again at once: no second scan, no answer yet
    assert scan.scans == 1
    now[0] += 3
    scan.writers({2}, {})
    assert scan.scans == 2
    assert sys.platform == "linux"
