"""A weight file is known by its inode: whatever name reaches it (a hard link in another
directory, a move out of the tree, a bind mount in a private mount namespace, /proc/self/fd),
or no name at all (open_by_handle_at), its reads are reported with the reader's pid, the bytes,
and the file's weights path; a new name is a ``weights_relinked``. Each case has a benign twin
that raises nothing theft-like. Real processes, real files, with reads counted in the kernel
(``ebpf``) and from /proc (``off``)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.agent.files.collect import Collected
from tests.helpers.flaky import load_sensitive
from weightwarden.agent.files.patterns import WeightPaths
from weightwarden.agent.files.watcher import FileWatcher

pytestmark = pytest.mark.privileged
MiB = 2**20
SIZE = 24 * MiB
READ = "import sys\nf = open(sys.argv[1], 'rb')\nwhile f.read(1 << 16): pass\n"


@pytest.fixture(params=["ebpf", "off"])
def sensor(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def weight(tmp_path: Path) -> Path:
    (tmp_path / "models").mkdir()
    (tmp_path / "elsewhere").mkdir()
    path = tmp_path / "models" / "model.safetensors"
    path.write_bytes(os.urandom(SIZE))
    return path


@pytest.fixture
def watch(weight: Path, tmp_path: Path, sensor: str) -> Iterator[Collected]:
    w = FileWatcher(WeightPaths([f"{weight.parent}/*.safetensors"]), state_dir=tmp_path / "state", sensor=sensor)
    w.start()
    assert w.mode == "fanotify" and w.reads == ("kernel" if sensor == "ebpf" else "proc"), w.detail
    c = Collected(w)
    yield c
    c.stop()
    w.close()


def read(path: str | Path, code: str = READ) -> int:
    """A reader that exits when done; its pid."""
    proc = subprocess.Popen([sys.executable, "-c", code, str(path)], stdin=subprocess.DEVNULL)
    assert proc.wait(timeout=60) == 0
    return proc.pid


def run(*argv: str) -> int:
    proc = subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    assert proc.wait(timeout=30) == 0
    return proc.pid


# [off] (the /proc fallback) measures a read from the reader's rchar when the agent gets to its open: on a
# loaded machine a reader that read everything before then is measured short. The kernel path is exact.
def assert_read_of(rec: dict[str, Any], weight: Path, name: str | Path, sensor: str) -> None:
    st = weight.stat() if weight.exists() else Path(name).stat()
    assert rec["path"] == str(weight), rec
    if sensor == "ebpf":
        assert abs(rec["bytes_read"] - SIZE) / SIZE < 0.01 and rec["how"] == "kernel", rec
    else:
        # From /proc: a reader gone before the agent looked is measured by all it read in its life
        # (its taskstats exit record: the interpreter's own files too). Never less than the file.
        assert SIZE - 1024 <= rec["bytes_read"] <= SIZE + 2 * MiB, rec
    assert rec["inode"] == st.st_ino and rec["dev"] == st.st_dev and str(name) in rec["names"], rec


def nothing_theft_like(watch: Collected, seconds: float = 2.5) -> None:
    time.sleep(seconds)
    assert not watch.of("file_access"), watch.of("file_access")
    assert not watch.of("weights_copy"), watch.of("weights_copy")


@load_sensitive  # [off]: the baseline read late (above assert_read_of)
def test_a_hard_link_in_another_directory(watch: Collected, weight: Path, tmp_path: Path, sensor: str) -> None:
    link = tmp_path / "elsewhere" / "notes.bin"
    ln = run("ln", str(weight), str(link))
    reader = read(link)
    rec = watch.wait("file_access", pid=reader, final=True)
    assert_read_of(rec, weight, link, sensor)
    rel = watch.wait("weights_relinked", to_path=str(link))
    assert rel["how"] == "hardlink" and rel["from_path"] == str(weight) and rel["outside_tree"] is True, rel
    assert rel["inode"] == weight.stat().st_ino and rel["size"] == SIZE
    if sensor == "ebpf":
        assert rel["pid"] == ln and rel["exe"] == "/usr/bin/ln", rel  # seen as it was made
    assert len(watch.of("weights_relinked")) == 1


def test_a_hard_link_read_by_nobody(watch: Collected, weight: Path, tmp_path: Path, sensor: str) -> None:
    link = tmp_path / "elsewhere" / "notes.bin"
    ln = run("ln", str(weight), str(link))
    if sensor == "ebpf":
        # The link itself is reported (a medium alert at most): who made it, and where.
        rel = watch.wait("weights_relinked", to_path=str(link))
        assert rel["pid"] == ln and rel["how"] == "hardlink"
    nothing_theft_like(watch)


@load_sensitive  # [off]: the baseline read late (above assert_read_of)
def test_a_read_after_a_move_out_of_the_tree(watch: Collected, weight: Path, tmp_path: Path, sensor: str) -> None:
    moved = tmp_path / "elsewhere" / "x.bin"
    inode = weight.stat().st_ino
    mv = run("mv", str(weight), str(moved))
    rel = watch.wait("weights_relinked", to_path=str(moved))
    assert rel["how"] == "rename" and rel["from_path"] == str(weight) and rel["outside_tree"] is True, rel
    assert rel["pid"] == mv and rel["inode"] == inode, rel
    reader = read(moved)
    rec = watch.wait("file_access", pid=reader, final=True)
    assert_read_of(rec, weight, moved, sensor)


@load_sensitive  # [off]: the baseline read late (above assert_read_of)
def test_a_move_inside_the_tree(watch: Collected, weight: Path, sensor: str) -> None:
    renamed = weight.parent / "model-v2.safetensors"
    run("mv", str(weight), str(renamed))
    time.sleep(1.5)
    assert not watch.of("weights_relinked"), watch.of("weights_relinked")
    reader = read(renamed)
    rec = watch.wait("file_access", pid=reader, final=True)
    assert_read_of(rec, renamed, renamed, sensor)
    assert not watch.of("weights_relinked")


@load_sensitive  # [off]: the baseline read late (above assert_read_of)
def test_a_bind_mount_in_a_private_mount_namespace(watch: Collected, weight: Path, tmp_path: Path, sensor: str) -> None:
    view = tmp_path / "view"
    view.mkdir()
    # unshare and sh exec: the pid that reads is the pid we started. A sleeper stays in the namespace,
    # as a container's init does: the reader is gone before the agent looks, its namespace is not.
    holder = tmp_path / "holder.pid"
    reader = run("unshare", "-m", "--propagation", "private", "sh", "-c",
                 f"mount --bind {weight.parent} {view} && {{ sleep 120 & echo $! > {holder}; }}"
                 f" && exec cat {view}/{weight.name}")
    try:
        rec = watch.wait("file_access", pid=reader, final=True)
    finally:
        os.kill(int(holder.read_text()), signal.SIGKILL)
    assert rec["host_path"] == str(weight) and rec["view_path"] == f"{view}/{weight.name}", rec
    assert_read_of(rec, weight, weight, sensor)
    if sensor == "ebpf":
        assert rec["exe"] == "/usr/bin/cat", rec  # named by the kernel as it read, though gone since


def test_a_bind_mount_nobody_reads(watch: Collected, weight: Path, tmp_path: Path) -> None:
    view = tmp_path / "view"
    view.mkdir()
    run("unshare", "-m", "--propagation", "private", "sh", "-c", f"mount --bind {weight.parent} {view} && ls {view}")
    nothing_theft_like(watch)


PROC_FD = """
import os, sys
fd = os.open(sys.argv[1], os.O_PATH)  # no open of the file itself, and then one through /proc
f = open(f"/proc/self/fd/{fd}", "rb")
while f.read(1 << 16):
    pass
"""


@load_sensitive  # [off]: the baseline read late (above assert_read_of)
def test_a_read_through_proc_self_fd(watch: Collected, weight: Path, sensor: str) -> None:
    reader = read(weight, PROC_FD)
    rec = watch.wait("file_access", pid=reader, final=True)
    assert_read_of(rec, weight, weight, sensor)


def test_proc_self_fd_of_another_file(watch: Collected, weight: Path, tmp_path: Path) -> None:
    other = tmp_path / "elsewhere" / "data.bin"
    other.write_bytes(os.urandom(4 * MiB))
    read(other, PROC_FD)
    nothing_theft_like(watch)


BY_HANDLE = """
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
class Handle(ctypes.Structure):
    _fields_ = [("handle_bytes", ctypes.c_uint), ("handle_type", ctypes.c_int), ("f_handle", ctypes.c_ubyte * 128)]
handle, mount_id = Handle(128, 0), ctypes.c_int()
if libc.name_to_handle_at(-100, sys.argv[1].encode(), ctypes.byref(handle), ctypes.byref(mount_id), 0) != 0:
    raise OSError(ctypes.get_errno(), "name_to_handle_at")
mount_fd = os.open(os.path.dirname(sys.argv[1]), os.O_RDONLY | os.O_DIRECTORY)
fd = libc.open_by_handle_at(mount_fd, ctypes.byref(handle), os.O_RDONLY)  # no name at all
if fd < 0:
    raise OSError(ctypes.get_errno(), "open_by_handle_at")
f = os.fdopen(fd, "rb")
while f.read(1 << 16):
    pass
"""


@load_sensitive  # [off]: the baseline read late (above assert_read_of)
def test_a_read_through_open_by_handle_at(watch: Collected, weight: Path, sensor: str) -> None:
    reader = read(weight, BY_HANDLE)
    rec = watch.wait("file_access", pid=reader, final=True)
    assert_read_of(rec, weight, weight, sensor)


def test_open_by_handle_at_of_another_file(watch: Collected, weight: Path, tmp_path: Path) -> None:
    other = tmp_path / "elsewhere" / "data.bin"
    other.write_bytes(os.urandom(4 * MiB))
    read(other, BY_HANDLE)
    nothing_theft_like(watch)
