"""Weight-path matching, coalescing, smaps and mountinfo parsing, the bounded
reader and the staged-copy store: no root."""

import os
import stat
import threading
import time
from pathlib import Path

from weightwarden.agent.files.coalesce import Coalescer
from weightwarden.agent.files.mounts import new_superblocks, parse_mountinfo, remote_type
from weightwarden.agent.files.offload import Offloader
from weightwarden.agent.files.patterns import WeightPaths, base_dir
from weightwarden.agent.files.procio import mapped_weights, start_of_ns, ticks_of
from weightwarden.agent.files.staged import StagedCopies, StagedCopy


def test_patterns() -> None:
    w = WeightPaths(["/srv/models/**/*.safetensors", "/ckpt", "/data/*.gguf"], ["/srv/models/.canary/x.bin"])
    assert w.matches("/srv/models/llama/70b/model-00001.safetensors")
    assert w.matches("/srv/models/a.safetensors")
    assert not w.matches("/srv/models/llama/README.md")
    assert w.matches("/ckpt/step-100/optim.pt") and not w.matches("/ckptx/a.pt")
    assert w.matches("/data/q4.gguf") and not w.matches("/data/sub/q4.gguf")
    assert w.is_canary("/srv/models/.canary/x.bin") and w.matches("/srv/models/.canary/x.bin")
    assert base_dir("/srv/models/**/*.safetensors") == "/srv/models"
    assert w.roots() == ["/ckpt", "/data", "/srv/models", "/srv/models/.canary"]


def test_total_size_counts_hard_links_once(tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "a.safetensors").write_bytes(b"x" * 1000)
    (tmp_path / "m" / "b.safetensors").hardlink_to(tmp_path / "m" / "a.safetensors")
    (tmp_path / "m" / "notes.txt").write_text("hello")
    assert WeightPaths([f"{tmp_path}/m/*.safetensors"]).total_size() == (1, 1000)


def test_coalescer_turns_cycles_into_one_record() -> None:
    c = Coalescer(settle=1.0)
    for i in range(1000):
        t = i / 1000
        c.opened(t, 7, "/w/a", 4096, rchar=i * 4096, proc={"exe": "/usr/bin/x"})
        c.accessed(t, 7, "/w/a", rchar=i * 4096 + 4096)
        c.closed(t, 7, "/w/a", rchar=i * 4096 + 4096)
    assert c.due(1.5) == []  # closed 0.5 s ago: still settling
    records = c.due(2.5)
    assert len(records) == 1
    r = records[0]
    assert r["opens"] == r["closes"] == r["reads"] == 1000
    assert r["bytes_read"] == 1000 * 4096 and r["exe"] == "/usr/bin/x" and r["final"]
    assert c.sessions == {}


def test_long_reads_report_progress_then_final() -> None:
    c = Coalescer(settle=1.0, progress_every=5.0)
    c.opened(0, 9, "/w/big", 10**9, rchar=100)
    c.update_rchar(9, 100 + 4 * 10**8)
    progress = c.due(6.0)
    assert len(progress) == 1 and not progress[0]["final"] and progress[0]["bytes_read"] == 4 * 10**8
    assert progress[0]["still_open"]
    c.closed(7.0, 9, "/w/big", rchar=100 + 10**9)
    final = c.due(9.0)
    assert final[0]["final"] and final[0]["bytes_read"] == 10**9


def test_sessions_are_bounded() -> None:
    c = Coalescer(max_sessions=10)
    for pid in range(50):
        c.opened(pid, pid, "/w/a", 1, 0)
    assert len(c.sessions) == 10 and c.overflowed == 40


def test_smaps_parsing(tmp_path: Path) -> None:
    proc = tmp_path / "42"
    proc.mkdir()
    (proc / "smaps").write_text(
        "7f0000000000-7f0010000000 r--s 00000000 08:01 1234   /w/model.safetensors\n"
        "Size:             262144 kB\nRss:              131072 kB\n"
        "7f0020000000-7f0020001000 r--p 00000000 08:01 99   /usr/lib/libc.so.6\nRss:  4 kB\n"
        "7f0030000000-7f0030100000 rw-p 00000000 00:00 0\nRss:  8 kB\n")
    maps = mapped_weights(42, lambda p, _dev, _ino: p.startswith("/w/"), str(tmp_path))
    assert [(m.path, m.mapped_bytes, m.resident_bytes) for m in maps] == [
        ("/w/model.safetensors", 0x10000000, 131072 * 1024)]
    assert mapped_weights(43, lambda _p, _dev, _ino: True, str(tmp_path)) == []


def test_mountinfo_parsing_and_filesystem_kinds() -> None:
    text = (
        "27 1 254:0 / / rw,relatime - ext4 /dev/vda rw\n"
        "96 82 0:41 /wwsb /tmp/w\\040sb rw - tmpfs tmpfs rw\n"
        "22 27 0:21 / /proc rw - proc proc rw\n"
        "88 27 0:50 / /mnt/remote rw - fuse.sshfs user@host:/ rw\n"
        "garbage line\n")
    mounts = parse_mountinfo(text)
    assert [(m.mnt_id, m.dev, m.root, m.mountpoint, m.fstype) for m in mounts] == [
        (27, (254, 0), "/", "/", "ext4"), (96, (0, 41), "/wwsb", "/tmp/w sb", "tmpfs"),
        (22, (0, 21), "/", "/proc", "proc"), (88, (0, 50), "/", "/mnt/remote", "fuse.sshfs")]
    assert remote_type("fuse.sshfs") == "fuse.sshfs" and remote_type("nfs4") == "nfs4"
    assert remote_type("fuseblk") is None and remote_type("ext4") is None
    # Pseudo filesystems and overlays are not marked for writes; a known filesystem is not marked twice.
    fresh = new_superblocks(mounts, 1234, "mnt:[1]", {(254, 0)})
    assert [(s.dev, s.paths) for s in fresh] == [((0, 41), ("/proc/1234/root/tmp/w sb",)),
                                                  ((0, 50), ("/proc/1234/root/mnt/remote",))]


def test_reads_rchar_misses_are_never_zero() -> None:
    c = Coalescer(settle=0.0)
    # splice: the offset moved (seen half-way), rchar did not; the rest went after our last look.
    c.opened(0, 1, "/w/a", 1000, rchar=50)
    c.sessions[(1, "/w/a")].position = 500
    c.closed(1, 1, "/w/a", rchar=50)
    # io_uring: nothing counted at all.
    c.opened(0, 2, "/w/a", 1000, rchar=0)
    c.sessions[(2, "/w/a")].io_uring = True
    c.closed(1, 2, "/w/a", rchar=0)
    # A mapping process whose offset is at the end read nothing through it.
    c.opened(0, 3, "/w/a", 1000, rchar=0)
    c.sessions[(3, "/w/a")].position = 1000
    c.sessions[(3, "/w/a")].extra["mapped_bytes"] = 1000
    c.closed(1, 3, "/w/a", rchar=8)
    got = {r["pid"]: (r["bytes_read"], r["how"], r["bytes_estimated"]) for r in c.due(5)}
    assert got == {1: (1000, "position", True), 2: (1000, "io_uring", True), 3: (8, "rchar", False)}


def test_offloader_skips_a_read_that_hangs() -> None:
    off = Offloader(timeout=0.1)
    release = threading.Event()
    try:
        assert off.submit("describe", 11, lambda: release.wait(10))
        assert off.submit("describe", 12, lambda: "quick", wait=1.0)
        assert ("describe", 12, "quick") in off.results()  # the second worker was free
        time.sleep(0.2)
        off.check()
        assert 11 in off.stalling and off.stuck == 1 and "stuck" in (off.degraded or "")
        assert not off.submit("describe", 11, lambda: "again")  # never asked twice
        assert off.submit("describe", 13, lambda: "still served", wait=1.0)
        assert ("describe", 13, "still served") in off.results()
    finally:
        release.set()
        time.sleep(0.1)
        off.close()
    assert 11 not in off.stalling  # it answered in the end


def test_staged_copies_persist_0600_and_forget_deleted_files(tmp_path: Path) -> None:
    f = tmp_path / "copy.bin"
    f.write_bytes(b"x" * 10)
    st = f.stat()
    store = StagedCopies(tmp_path / "state")
    store.add(StagedCopy(str(f), (os.major(st.st_dev), os.minor(st.st_dev)), st.st_ino, ["/w/a"], 10, 1.0))
    store.save()
    saved = tmp_path / "state" / "staged-copies.json"
    assert stat.S_IMODE(saved.stat().st_mode) == 0o600
    again = StagedCopies(tmp_path / "state")
    assert [c.sources for c in again.load()] == [["/w/a"]]
    f.unlink()
    again.prune()
    assert again.copies == {}
    saved.write_text("{not json")
    assert StagedCopies(tmp_path / "state").load() == []  # logged, never a crash


def test_a_kernel_start_time_reads_as_proc_prints_it() -> None:
    # /proc prints whole clock ticks since boot; the kernel keeps ns. 7/10 of a tick past it, rounded to
    # 0.01 s, would read a tick later than /proc says, and the two would name different processes.
    ticks = os.sysconf("SC_CLK_TCK")
    tick_ns = 1_000_000_000 // ticks
    boot = 1_796_000_000.0
    for tick in (0, 1, 123_456, 9_999_999):
        for into in (0, tick_ns * 3 // 10, tick_ns * 7 // 10, tick_ns - 1):
            ns = tick * tick_ns + into
            assert ticks_of(ns) == tick
            assert start_of_ns(ns, boot) == round(tick / ticks + boot, 2), (tick, into)
