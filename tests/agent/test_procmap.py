"""Socket-owner lookups against a fixture /proc tree, including vanished processes."""

import os
from pathlib import Path

from weightwarden.agent.features import cgroup_layout
from weightwarden.agent.procmap import ProcessTable


def _proc(root: Path, pid: int, inodes: list[int]) -> None:
    fd = root / str(pid) / "fd"
    fd.mkdir(parents=True)
    for i, inode in enumerate(inodes):
        os.symlink(f"socket:[{inode}]", fd / str(i + 3))
    os.symlink("/dev/null", fd / "0")


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
    os.symlink("pipe:[777]", tmp_path / "500" / "fd" / "9")
    assert ProcessTable(str(tmp_path))._pipes(500) == (777,)
