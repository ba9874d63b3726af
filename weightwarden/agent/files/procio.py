"""What /proc says about a process and the weights: I/O counters, identity, open files, mapped files.

Processes exit at any moment; every reader returns None or empty for "gone".
Only ``mapped_weights`` and ``mapped_files`` read another process's memory
map (they take its mmap lock, so a process stalled on a FUSE page can stall
them): the watcher calls those through ``offload.Offloader``, never inline.
The rest read kernel state only and never wait on the target.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict

from weightwarden.events import safe_text

# is_weight(path, (major, minor), inode): a mapped file is a weight file by its path or its inode
# (a file mapped through a container's mount namespace shows the container's path).
WeightTest = Callable[[str, tuple[int, int], int], bool]
_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True, slots=True)
class IoCounters:
    rchar: int
    wchar: int
    read_bytes: int


def io_counters(pid: int, proc_root: str = "/proc") -> IoCounters | None:
    try:
        text = Path(proc_root, str(pid), "io").read_text()
    except OSError:
        return None
    values = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        values[key] = int(value.strip() or 0)
    return IoCounters(values.get("rchar", 0), values.get("wchar", 0), values.get("read_bytes", 0))


_BOOT: dict[str, float] = {}


def _boot_time(proc_root: str) -> float:
    if proc_root in _BOOT:
        return _BOOT[proc_root]
    try:
        for line in Path(proc_root, "stat").read_text().splitlines():
            if line.startswith("btime "):
                _BOOT[proc_root] = float(line.split()[1])
                return _BOOT[proc_root]
    except OSError:
        pass
    return 0.0


def start_time(pid: int, proc_root: str = "/proc") -> float | None:
    """When the process started (Unix seconds), or None when it is gone: with pid, names one process."""
    try:
        stat = Path(proc_root, str(pid), "stat").read_text(errors="replace")
        return round(int(stat[stat.rfind(")") + 2:].split()[19]) / _TICKS + _boot_time(proc_root), 2)
    except (OSError, ValueError, IndexError):
        return None


def start_ticks(pid: int, proc_root: str = "/proc") -> int | None:
    """When the process started, in clock ticks since boot (the kernel's own number), or None."""
    try:
        stat = Path(proc_root, str(pid), "stat").read_text(errors="replace")
        return int(stat[stat.rfind(")") + 2:].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def boot_time(proc_root: str = "/proc") -> float:
    """When the machine booted (Unix seconds), as /proc/stat says."""
    return _boot_time(proc_root)


def ticks_of(boot_ns: int) -> int:
    """A start time in boot-time ns (as the kernel keeps it) in clock ticks, as /proc prints it."""
    return boot_ns // (1_000_000_000 // _TICKS)


def start_of_ns(boot_ns: int, boot: float) -> float:
    """A start time in boot-time ns as :func:`start_time` gives it (whole ticks, then seconds): the two
    compare equal for one process. Rounding the ns itself differs from /proc's truncated ticks by 0.01 s
    about half the time, and the kernel's word on a process then matched nothing /proc said of it."""
    return round(ticks_of(boot_ns) / _TICKS + boot, 2)


class ProcFields(TypedDict, total=False):
    """Who a process is, as the file events carry it (events.ProcessFields): each source (/proc, a
    worker's description, the kernel's opener or exit record) fills the keys it knows."""

    pid: int | None
    ppid: int | None
    name: str | None
    exe: str | None
    uid: int | None
    user: str
    cmdline: list[str]
    cgroup: str | None
    container: dict[str, str | None] | None
    start_time: float
    pipes: list[int]
    pipe_ends: dict[str, str]


def identity(pid: int, proc_root: str = "/proc") -> ProcFields | None:
    """Name, ppid, uid, exe, cgroup and start time, from files that never touch the process's memory.

    (psutil's name() falls back to the memory-backed cmdline for long names, so it is not used here.)
    """
    base = Path(proc_root, str(pid))
    try:
        status = (base / "status").read_text(errors="replace")
        stat = (base / "stat").read_text(errors="replace")
    except OSError:
        return None
    fields: dict[str, str] = {}
    for line in status.splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    if fields.get("State", "").startswith(("Z", "X")):
        return None  # exited: what /proc still shows of it is empty (no executable, zeroed counters)
    try:
        uid = int(fields.get("Uid", "").split()[0])
        ppid = int(fields.get("PPid", "0"))
        start = int(stat[stat.rfind(")") + 2:].split()[19]) / _TICKS + _boot_time(proc_root)
    except (ValueError, IndexError):
        return None
    try:
        exe = os.readlink(base / "exe")  # noqa: PTH115 - per opener: hot path: pathlib costs 2-4x os here on 3.11
    except OSError:
        exe = ""
    cgroup = None
    try:
        for line in (base / "cgroup").read_text().splitlines():
            if line.startswith("0::"):
                cgroup = safe_text(line[3:] or "/")
    except OSError:
        pass
    return {"name": safe_text(fields.get("Name", ""), 256), "ppid": ppid, "uid": uid,
            "exe": safe_text(exe.removesuffix(" (deleted)")), "cgroup": cgroup, "start_time": round(start, 2)}


@dataclass(frozen=True, slots=True)
class OpenFile:
    fd: int
    position: int


@dataclass(frozen=True, slots=True)
class FdScan:
    files: list[OpenFile]  # the process's fds on the file we asked about
    io_uring: bool  # it has an io_uring instance: reads through it bypass rchar
    others: list[str]  # other files it has open (its redirected stdout, say), as the kernel prints them


def scan_fds(pid: int, target: str, proc_root: str = "/proc") -> FdScan | None:
    """The process's open descriptors on one file, with their offsets, and whether it has an io_uring.

    Matched by the link text (the kernel prints the same mount and dentry the
    same way); never a stat, which on a FUSE file could wait on its server.
    """
    fd_dir = f"{proc_root}/{pid}/fd"
    try:
        names = os.listdir(fd_dir)  # noqa: PTH208 - hot path: pathlib costs 2-4x os here on 3.11
    except OSError:
        return None
    files: list[OpenFile] = []
    others: list[str] = []
    ring = False
    for name in names:
        try:
            link = os.readlink(f"{fd_dir}/{name}")  # noqa: PTH115 - per fd: hot path: pathlib costs 2-4x os here on 3.11
        except OSError:
            continue
        if link == "anon_inode:[io_uring]":
            ring = True
        elif link == target:
            files.append(OpenFile(int(name), fd_position(pid, int(name), proc_root) or 0))
        elif link.startswith("/") and len(others) < 64:
            others.append(link)
    return FdScan(files, ring, others)


def fd_position(pid: int, fd: int, proc_root: str = "/proc") -> int | None:
    try:
        text = Path(proc_root, str(pid), "fdinfo", str(fd)).read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("pos:"):
            return int(line.split()[1])
    return None


@dataclass
class Mapping:
    path: str
    mapped_bytes: int
    resident_bytes: int
    dev: tuple[int, int] = (0, 0)
    ino: int = 0


def _map_header(line: str) -> tuple[int, int, tuple[int, int], int, str] | None:
    head = line.split(None, 5)
    if len(head) < 5 or "-" not in head[0] or ":" not in head[3]:
        return None
    try:
        start, end = (int(x, 16) for x in head[0].split("-"))
        major, minor = (int(x, 16) for x in head[3].split(":"))
        inode = int(head[4])
    except ValueError:
        return None
    path = head[5].removesuffix(" (deleted)") if len(head) == 6 else ""
    return start, end, (major, minor), inode, path


def mapped_weights(pid: int, is_weight: WeightTest, proc_root: str = "/proc") -> list[Mapping]:
    """Weight files mapped into a process, with mapped and resident (touched) bytes, from smaps."""
    try:
        text = Path(proc_root, str(pid), "smaps").read_text()
    except OSError:
        return []
    found: dict[str, Mapping] = {}
    current: Mapping | None = None
    for line in text.splitlines():
        header = _map_header(line)
        if header is not None:
            current = None
            start, end, dev, inode, path = header
            if path.startswith("/") and inode and is_weight(path, dev, inode):
                current = found.setdefault(path, Mapping(path, 0, 0, dev, inode))
                current.mapped_bytes += end - start
        elif current is not None and line.startswith("Rss:"):
            current.resident_bytes += int(line.split()[1]) * 1024
    return sorted(found.values(), key=lambda m: m.path)


def maps_weights(pid: int, is_weight: WeightTest, proc_root: str = "/proc") -> bool:
    """Whether the process maps any weight file (the cheaper maps, for the scan at start)."""
    try:
        text = Path(proc_root, str(pid), "maps").read_text()
    except OSError:
        return False
    for line in text.splitlines():
        header = _map_header(line)
        if header is not None and header[4].startswith("/") and header[3] and is_weight(header[4], header[2],
                                                                                         header[3]):
            return True
    return False
