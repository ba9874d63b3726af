"""Socket-owner lookups against a fixture /proc tree, including vanished processes."""

import os
from pathlib import Path

from weightwarden.agent.kernel.features import cgroup_layout
from weightwarden.agent.kernel.procmap import ProcessTable


def _proc(root: Path, pid: int, inodes: list[int]) -> None:
    fd = root / str(pid) / "fd"
    fd.mkdir(parents=True)
    for i, inode in enumerate(inodes):
        (fd / str(i + 3)).symlink_to(f"socket:[{inode}]")
    (fd / "0").symlink_to("/dev/null")


def test_owners_found_and_cached(tmp_path: Path) -> None:
    _proc(tmp_path, 100, [11, 12])
    _proc(tmp_path, 200, [21])
    table = ProcessTable(str(tmp_path))
    assert table.owners({12, 21, 999}) == {12: 100, 21: 200}
    # Cached: the owner stays known while its /proc entry exists.
    assert table.owners({12}) == {12: 100}


def test_vanished_process_is_a_normal_answer(tmp_path: Path) -> None:
    _proc(tmp_path, 300, [31])
    table = ProcessTable(str(tmp_path))
    assert table.owners({31}) == {31: 300}
    for entry in (tmp_path / "300" / "fd").iterdir():
        entry.unlink()
    (tmp_path / "300" / "fd").rmdir()
    (tmp_path / "300").rmdir()
    assert table.owners({31}) == {}
    assert table.describe(999_999_999) is None


def test_unreadable_fd_dir_is_skipped(tmp_path: Path) -> None:
    (tmp_path / "400").mkdir()  # no fd/ at all: a kernel thread, or a race
    _proc(tmp_path, 401, [41])
    assert ProcessTable(str(tmp_path)).owners({41}) == {41: 401}


def test_describe_self() -> None:
    info = ProcessTable().describe(os.getpid())
    assert info is not None and info.pid == os.getpid() and info.exe and info.uid == os.getuid()


def test_cgroup_layouts(tmp_path: Path) -> None:
    self_dir = tmp_path / "self"
    self_dir.mkdir()
    (self_dir / "cgroup").write_text("0::/system.slice/x.service\n")
    assert "unified" in cgroup_layout(str(tmp_path)).detail
    (self_dir / "cgroup").write_text("12:memory:/\n1:name=systemd:/\n0::/\n")
    hybrid = cgroup_layout(str(tmp_path))
    assert hybrid.ok and "hybrid" in hybrid.detail
    (self_dir / "cgroup").write_text("12:memory:/\n")
    assert not cgroup_layout(str(tmp_path)).ok


def test_pipes_are_reported(tmp_path: Path) -> None:
    _proc(tmp_path, 500, [51])
    (tmp_path / "500" / "fd" / "9").symlink_to("pipe:[777]")
    assert ProcessTable(str(tmp_path))._pipes(500) == (777,)


def test_pipe_ends_come_from_fdinfo_access_modes(tmp_path: Path) -> None:
    _proc(tmp_path, 600, [])
    info = tmp_path / "600" / "fdinfo"
    info.mkdir()
    for fd, inode, flags in ((1, 900, "01"), (2, 900, "0100001"), (5, 901, "00"), (6, 902, "02")):
        (tmp_path / "600" / "fd" / str(fd)).symlink_to(f"pipe:[{inode}]")
        (info / str(fd)).write_text(f"pos:\t0\nflags:\t{flags}\nmnt_id:\t15\n")
    table = ProcessTable(str(tmp_path))
    assert table._pipe_ends(600) == ((900, "w"), (901, "r"), (902, "rw"))
    assert table._pipes(600) == (900, 901, 902)


def test_pipe_ends_of_a_real_pipe() -> None:
    r, w = os.pipe()
    try:
        ends = dict(ProcessTable()._pipe_ends(os.getpid()))
        ino_r, ino_w = os.fstat(r).st_ino, os.fstat(w).st_ino
        assert ino_r == ino_w and ends[ino_r] == "rw"  # this process holds both ends
    finally:
        os.close(r)
        os.close(w)


def test_a_stalled_cmdline_read_gives_unknown_not_a_stall(tmp_path: Path) -> None:
    """A FIFO with no writer blocks open() forever, as a stalled FUSE page blocks a cmdline read."""
    import time

    from weightwarden.agent.kernel.procread import BoundedReader

    fifo = tmp_path / "stuck"
    os.mkfifo(fifo)
    reader = BoundedReader(timeout=0.1, max_stuck=2)
    started = time.monotonic()
    for _ in range(6):
        assert reader.read(str(fifo)) is None
    assert time.monotonic() - started < 2.0, "each read returns by its deadline, even once workers are stuck"
    assert reader.stalled == 6
    ok = tmp_path / "ok"
    ok.write_bytes(b"a\0b\0")
    # Every worker is now stuck: answers are "unknown" at once rather than a wait.
    assert reader.read(str(ok)) is None
    fresh = BoundedReader(timeout=1.0)
    assert fresh.read(str(ok)) == b"a\0b\0"
    fd = os.open(fifo, os.O_RDWR)  # a writer appears: the stuck workers finish
    time.sleep(0.1)
    os.close(fd)


def test_an_exec_is_read_again_when_the_caller_says_so() -> None:
    """Same pid, same start time, another program: a container's runc init that execs its first
    program (seen with podman + runc: every container's process was named runc:[2:INIT])."""
    import subprocess
    import sys
    import time

    child = subprocess.Popen([sys.executable, "-c", "import os, sys; sys.stdin.readline(); "
                              "os.execv('/bin/sleep', ['sleep', '30'])"], stdin=subprocess.PIPE)
    try:
        table = ProcessTable()
        before = table.describe(child.pid)
        assert before is not None and before.name.startswith("python")
        assert child.stdin is not None
        child.stdin.write(b"go\n")
        child.stdin.flush()
        deadline = time.monotonic() + 5
        while Path(f"/proc/{child.pid}/comm").read_text().strip() != "sleep" and time.monotonic() < deadline:
            time.sleep(0.01)
        cached = table.describe(child.pid)
        assert cached is not None and cached.name == before.name, "the cache alone cannot see an exec"
        table.forget(child.pid)
        after = table.describe(child.pid)
        assert after is not None and after.name == "sleep" and after.exe.endswith("/sleep")
        assert after.create_time == before.create_time
    finally:
        child.kill()
        child.wait()
        if child.stdin is not None:
            child.stdin.close()
