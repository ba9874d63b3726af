"""Weight-path matching, coalescing and smaps parsing: pure, no root."""

from pathlib import Path

from weightwarden.agent.files.coalesce import Coalescer
from weightwarden.agent.files.patterns import WeightPaths, base_dir
from weightwarden.agent.files.procio import mapped_weights


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
