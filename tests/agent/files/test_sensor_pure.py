"""The kernel sensor's wire format, the inode registry, kernel counts in sessions, and relinks:
pure logic, no root."""

from __future__ import annotations

import os
import re
import struct
from pathlib import Path
from typing import Any

from weightwarden.agent.files.coalesce import Coalescer
from weightwarden.agent.files.ebpf import wire
from weightwarden.agent.files.ebpf.loader import features_of
from weightwarden.agent.files.inodes import WeightInodes
from weightwarden.agent.files.patterns import WeightPaths
from weightwarden.agent.files.relinks import Relinks
from weightwarden.events import WeightsRelinked

BPF = Path(__file__).resolve().parents[3] / "weightwarden" / "agent" / "files" / "ebpf" / "bpf"


def test_wire_sizes_match_the_loader() -> None:
    """The loader's static asserts pin the C sizes; these pin Python's to the same numbers."""
    asserts = dict(re.findall(r"sizeof\(struct (\w+)\) == (\d+)", (BPF / "loader.c").read_text()))
    assert int(asserts["wf_reader_key"]) + int(asserts["wf_reader"]) == wire.RECORD
    assert int(asserts["wf_relink"]) == wire.RELINK.size
    assert int(asserts["wf_opener"]) == wire.OPENER.size
    assert int(asserts["wf_pending"]) == wire.PENDING.size
    assert int(asserts["wf_lost"]) == wire.LOST.size


def test_readers_pending_and_relinks_decode() -> None:
    key = wire.READER_KEY.pack(42, 7, 123_000, 99)
    rec = key + wire.READER.pack(4096, 1, 0, 5, 1, 1000, 1, b"cat\0" + b"\0" * 12)
    readers = wire.parse_readers(rec * 2)
    assert readers[0].key == wire.ReaderKey(42, 7, 123_000, 99) and readers[0].bytes == 4096 and readers[0].comm == "cat"
    # What a CPU holds for an entry is added to it: the agent sees every byte counted so far.
    pending = wire.parse_pending(wire.PENDING.pack(42, 7, 123_000, 99, 100, 2))
    merged = wire.merge_pending(readers[:1], pending)
    assert merged[0].bytes == 4196 and merged[0].calls == 3
    raw = wire.RELINK.pack(10, 11, 0, 1, 5, 1, 99, (8 << 20) | 1, 7, wire.RL_LINK, -100, 4026531840, wire.K_FILE, 265,
                           b"ln", b"notes.bin", b"/tmp/x")
    ev = wire.parse_relink(raw)
    assert ev is not None and ev.path == "/tmp/x/notes.bin" and wire.user_dev(ev.dev) == (8, 1)
    args = b"cat\0/w/a.bin\0" + b"\0" * (512 - 13)
    opener = wire.parse_opener(wire.OPENER.pack(10, 0, 5, 1, 1, 4026531840, b"cat", args, b"/usr/bin/cat"))
    assert opener is not None and opener.args == ("cat", "/w/a.bin") and opener.exe == "/usr/bin/cat"
    assert wire.kernel_dev((259, 3)) == (259 << 20) | 3


def test_features_need_their_programs() -> None:
    features = features_of({"programs": {"wf_get_pages": "", "wf_exit": "", "wf_map_pages": "no tracepoint",
                                         "wf_fault": "", "wf_ctime_xchg": "refused (EPERM): x", "wf_ctime_skip": "",
                                         "wf_ctime_set": ""}})
    assert features["reads"].on and features["mmap"].on and features["relinks"].on
    off = features_of({"programs": {"wf_get_pages": "", "wf_exit": "no sched_process_exit tracepoint"}})
    assert not off["reads"].on and "sched_process_exit" in (off["reads"].reason or "")


def test_the_registry_knows_files_by_inode() -> None:
    inodes = WeightInodes(limit=3)
    added: list[int] = []
    inodes.on_add.append(lambda wf, _via: added.append(wf.id))
    wf = inodes.add((8, 1), 100, "/w/a.safetensors", "weight", 10, handle=b"h1")
    assert wf is not None and wf.identity() == {"inode": 100, "dev": os.makedev(8, 1), "names": ["/w/a.safetensors"]}
    # The same inode under another name is the same file, with its weights path first.
    again = inodes.add((8, 1), 100, "/tmp/x/notes.bin", "weight")
    assert again is wf and wf.names == ["/w/a.safetensors", "/tmp/x/notes.bin"] and added == [wf.id]
    assert inodes.by_handle(b"h1") is wf and inodes.by_id(wf.id) is wf
    inodes.moved(wf, "/w/b.safetensors")
    assert wf.path == "/w/b.safetensors" and "/w/a.safetensors" not in wf.names
    inodes.add((8, 1), 101, "/w/c", "weight")
    inodes.add((8, 1), 102, "/w/d", "weight")
    assert inodes.add((8, 1), 103, "/w/e", "weight") is None and inodes.refused == 1
    assert inodes.remove((8, 1), 100) is wf and inodes.get((8, 1), 100) is None and inodes.by_handle(b"h1") is None


def test_kernel_counts_make_sessions_and_wait_for_a_reading() -> None:
    c = Coalescer(settle=1.0)
    # An open seen, its reads counted in the kernel: the kernel's number, not rchar's.
    c.opened(0.0, 7, "/w/a", 1000, rchar=500, proc={"exe": "/usr/bin/cat"})
    c.counted(0.5, 7, "/w/a", 1000, 1000, 3)
    c.closed(0.6, 7, "/w/a", rchar=99_999)
    # Closed at 0.6, but the counts were last read at 0.5: not final until they are read again.
    assert c.due(5.0, counted_at=0.5) == []
    (rec,) = c.due(5.0, counted_at=0.7)
    assert rec["bytes_read"] == 1000 and rec["how"] == "kernel" and rec["reads"] == 3 and not rec["bytes_estimated"]
    # A reader whose open was never seen (a lost notification): made from the counts alone, and
    # reported while it reads, then final once its counts stop.
    c.counted(10.0, 8, "/w/a", 1000, 400, 1, proc={"name": "dd"})
    c.counted(14.0, 8, "/w/a", 1000, 700, 2)
    (progress,) = c.due(15.5, counted_at=15.5)
    assert progress["final"] is False and progress["bytes_read"] == 700
    c.counted(16.0, 8, "/w/a", 1000, 1000, 3)
    assert c.due(18.0, counted_at=18.0) == []  # quiet for less than 3 s: maybe still reading
    (last,) = c.due(19.5, counted_at=19.5)
    assert last["final"] and last["bytes_read"] == 1000 and last["opens"] == 0 and last["name"] == "dd"


def test_a_late_notification_keeps_what_was_read_before_it() -> None:
    c = Coalescer(settle=0.0)
    # Seen after the reader had read 4096 bytes through its descriptor: they count from its rchar.
    c.opened(0.0, 9, "/w/a", 10_000, rchar=9096, position=4096)
    c.closed(1.0, 9, "/w/a", rchar=15_000)
    assert c.due(2.0)[0]["bytes_read"] == 10_000


def relinks(tmp_path: Path) -> tuple[Relinks, WeightInodes, list[dict[str, Any]]]:
    inodes = WeightInodes()
    out: list[dict[str, Any]] = []

    def emit(model: type[WeightsRelinked], data: dict[str, Any]) -> None:
        out.append(model.model_validate(data).model_dump())

    weights = WeightPaths([f"{tmp_path}/models/*.safetensors"])
    return Relinks(inodes, lambda: weights, emit, lambda _pid, _start: None, clock=lambda: 0.0), inodes, out


def relink(wf_id: int, dev: tuple[int, int], ino: int, kind: int, name: str, dirname: str = "") -> wire.Relink:
    own = Path("/proc/self/ns/mnt").stat().st_ino
    return wire.Relink(os.getpid(), os.getpid(), 0, 1, 0, 1, ino, wire.kernel_dev(dev), wf_id, kind, -100, own,
                       wire.K_FILE, 265, "ln", name, dirname)


def test_relinks_from_the_kernel(tmp_path: Path) -> None:
    (tmp_path / "models").mkdir()
    (tmp_path / "other").mkdir()
    src = tmp_path / "models" / "a.safetensors"
    src.write_bytes(b"w" * 100)
    st = src.stat()
    dev = (os.major(st.st_dev), os.minor(st.st_dev))
    r, inodes, out = relinks(tmp_path)
    wf = inodes.add(dev, st.st_ino, str(src), "weight", 100)
    assert wf is not None
    link = tmp_path / "other" / "notes.bin"
    os.link(src, link)
    # A relative name, with the directory the kernel walked for it.
    r.on_kernel(relink(wf.id, dev, st.st_ino, wire.RL_LINK, "notes.bin", str(tmp_path / "other")), 0.0)
    r.on_kernel(relink(wf.id, dev, st.st_ino, wire.RL_LINK, "notes.bin", str(tmp_path / "other")), 0.0)
    assert len(out) == 1, "one syscall changes the ctime more than once: one report"
    assert out[0]["how"] == "hardlink" and out[0]["to_path"] == str(link) and out[0]["outside_tree"] is True
    assert out[0]["from_path"] == str(src) and out[0]["pid"] == os.getpid() and str(link) in wf.names
    # A move within the tree is no event, and the new name is the weights path from then on.
    inside = tmp_path / "models" / "b.safetensors"
    Path(src).rename(inside)
    r.on_kernel(relink(wf.id, dev, st.st_ino, wire.RL_RENAME, str(inside)), 0.0)
    assert len(out) == 1 and wf.path == str(inside)
    # A move out of it is.
    outside = tmp_path / "other" / "x.bin"
    Path(inside).rename(outside)
    r.on_kernel(relink(wf.id, dev, st.st_ino, wire.RL_RENAME, str(outside)), 0.0)
    assert out[-1]["how"] == "rename" and out[-1]["to_path"] == str(outside) and out[-1]["from_path"] == str(inside)
    assert str(inside) in wf.names[:1] and str(outside) in wf.names


def test_relinks_of_an_unknown_inode_or_without_a_name_are_ignored(tmp_path: Path) -> None:
    r, _inodes, out = relinks(tmp_path)
    r.on_kernel(relink(99, (8, 1), 5, wire.RL_LINK, "/tmp/x"), 0.0)
    r.on_kernel(relink(99, (8, 1), 5, wire.RL_OTHER, ""), 0.0)
    assert out == []
    assert struct.calcsize("<I") == 4
