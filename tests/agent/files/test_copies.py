"""Copies and derivatives of the weights, written from other mount namespaces and containers.

Every process here is started on its own (no descriptors beyond 0-2 in
common with the watcher or with each other): what links a copy to the
weights is only that its writer read them.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.agent.files.collect import Collected
from tests.helpers.flaky import load_sensitive
from weightwarden.agent.files.patterns import WeightPaths
from weightwarden.agent.files.watcher import FileWatcher

pytestmark = pytest.mark.privileged
MiB = 2**20
REFRESH_WAIT_S = 1.5
CGROUP2 = Path("/sys/fs/cgroup/unified") if Path("/sys/fs/cgroup/unified/cgroup.procs").exists() \
    else Path("/sys/fs/cgroup")


def run(*argv: str) -> None:
    subprocess.run(list(argv), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, check=True,
                   env={**os.environ, "LANG": "C"})


@pytest.fixture
def weights(tmp_path: Path) -> Path:
    models = tmp_path / "models"
    models.mkdir()
    (models / "model.safetensors").write_bytes(os.urandom(4 * MiB))  # real bytes: compressors see them
    return models


@pytest.fixture
def watch(weights: Path, tmp_path: Path) -> Iterator[Collected]:
    w = FileWatcher(WeightPaths([f"{weights}/*.safetensors"]), state_dir=tmp_path / "state")
    w.start()
    assert w.mode == "fanotify", w.detail
    c = Collected(w)
    yield c
    c.stop()
    w.close()


@contextmanager
def container(tmp_path: Path, *setup: str) -> Iterator[int]:
    """A process in its own mount namespace (mounts made by ``setup``), as a container runtime makes one."""
    ready = tmp_path / f"ready-{secrets.token_hex(3)}"
    script = " && ".join([*setup, f"touch {ready}", "exec sleep 120"])
    proc = subprocess.Popen(["unshare", "-m", "--propagation", "private", "sh", "-c", script],
                            stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while not ready.exists():
            assert proc.poll() is None and time.monotonic() < deadline, "container set-up failed"
            time.sleep(0.05)
        yield proc.pid
    finally:
        proc.kill()
        proc.wait()


def inside(pid: int, *argv: str, cgroup: Path | None = None) -> None:
    """Run ``argv`` in the container's mount namespace (and cgroup), sharing nothing with us but 0-2."""
    cmd = ["nsenter", "-t", str(pid), "-m", *argv]
    if cgroup is not None:
        cmd = ["sh", "-c", f'echo $$ > {cgroup}/cgroup.procs && exec "$@"', "sh", *cmd]
    run(*cmd)


def test_a_copy_judged_between_two_counts_carries_what_its_writer_read(
        watch: Collected, weights: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The kernel counts reads as they happen; the agent reads the counts once an interval. A `cp` that
    exits between two reads of them is judged at its exit: on the counts read then, not on none."""
    import weightwarden.agent.files.counting as counting
    import weightwarden.agent.files.watcher as watcher
    assert watch.watcher.reads == "kernel", watch.watcher.reads_detail
    monkeypatch.setattr(watcher, "REFRESH_S", 60.0)
    monkeypatch.setattr(counting, "COUNT_SOON_S", 60.0)
    time.sleep(REFRESH_WAIT_S)  # the refresh already planned passes; the next is a minute away
    src = str(weights / "model.safetensors")
    for n in range(4):
        dst = tmp_path / f"c{n}.bin"
        # Alone and in a private mount namespace (its opens are described later: the exit may come first).
        run(*(("unshare", "-m", "--propagation", "private") if n % 2 else ()), "cp", src, str(dst))
        rec = watch.wait("weights_copy", destination=str(dst))
        assert rec["sources"] == [src] and rec["source_bytes_read"] >= 4 * MiB - 1024, rec


def test_copies_from_other_mount_namespaces_are_seen(watch: Collected, weights: Path, tmp_path: Path) -> None:
    src = str(weights / "model.safetensors")
    stage = tmp_path / "stage"
    stage.mkdir()
    # A private mount namespace writing to a filesystem the host has too (a mount mark would miss it).
    run("unshare", "-m", "--propagation", "private", "cp", src, str(stage / "a.bin"))
    rec = watch.wait("weights_copy", destination=str(stage / "a.bin"))
    assert rec["sources"] == [src] and rec["exe"] == "/usr/bin/cp" and rec["derivative"] is False, __import__("json").dumps(rec)
    assert rec["destination_size"] == 4 * MiB and rec["source_bytes_read"] >= 4 * MiB - 1024

    # A container's own tmpfs: a filesystem only its namespace has, found and marked while it runs.
    private = tmp_path / "ctr-tmp"
    private.mkdir()
    with container(tmp_path, f"mount -t tmpfs wwtest {private}") as pid:
        dev = subprocess.run(["nsenter", "-t", str(pid), "-m", "stat", "-c", "%Hd:%Ld", str(private)],
                             capture_output=True, text=True, check=True).stdout.strip()
        marked = tuple(int(x) for x in dev.split(":"))
        deadline = time.monotonic() + 5
        while marked not in watch.watcher.write_marks.devs:  # type: ignore[union-attr]
            assert time.monotonic() < deadline, f"the container's tmpfs {dev} was never marked"
            time.sleep(0.1)
        inside(pid, "cp", src, str(private / "w.bin"))
        rec = watch.wait("weights_copy", destination=str(private / "w.bin"))
        assert rec["sources"] == [src]
        # The copy is watched as weights: whoever reads it next is known, in its namespace too.
        inside(pid, "cat", str(private / "w.bin"))
        read = watch.wait("file_access", path=str(private / "w.bin"), final=True)
        assert read["staged_copy_of"] == [src] and read["exe"] == "/usr/bin/cat", __import__("json").dumps(read)
        assert not (private / "w.bin").exists(), "the host cannot see the container's tmpfs"


@load_sensitive  # a writer that exits at once is described late under load (exe lost)
def test_derivatives_of_a_reader_are_copies(watch: Collected, weights: Path, tmp_path: Path) -> None:
    src = str(weights / "model.safetensors")
    out = tmp_path / "out"
    out.mkdir()
    run("sh", "-c", f"gzip -1 -c {src} > {out}/w.gz")
    run("openssl", "enc", "-aes-256-cbc", "-pbkdf2", "-pass", "pass:x", "-in", src, "-out", str(out / "w.enc"))
    run("split", "-b", "1M", src, str(out / "part."))
    run("tar", "cf", str(out / "w.tar"), "-C", str(weights), "model.safetensors")
    for name, exe in (("w.gz", "/usr/bin/gzip"), ("w.enc", "/usr/bin/openssl"), ("w.tar", "/usr/bin/tar")):
        rec = watch.wait("weights_copy", destination=str(out / name))
        assert rec["derivative"] is True and rec["sources"] == [src] and rec["exe"] == exe, rec
        assert rec["destination_size"] != 4 * MiB
    parts = sorted(out.glob("part.*"))
    assert len(parts) == 4
    for part in parts:
        rec = watch.wait("weights_copy", destination=str(part))
        assert rec["derivative"] is True and rec["destination_size"] == MiB and rec["exe"] == "/usr/bin/split"
    # Later, another process reads the derivative to upload it: it is a staged read of the weights.
    run("cat", str(out / "w.gz"))
    read = watch.wait("file_access", path=str(out / "w.gz"), final=True)
    assert read["staged_copy_of"] == [src] and read["exe"] == "/usr/bin/cat"
    # A process that never read weights writes a large file: nothing.
    run("dd", "if=/dev/zero", f"of={out}/zeros", "bs=1M", "count=2", "status=none")
    time.sleep(1.5)
    assert not watch.of("weights_copy", destination=str(out / "zeros"))


@load_sensitive  # a reader that exits at once is described late under load
def test_container_reads_name_the_host_file_and_the_container(watch: Collected, weights: Path,
                                                              tmp_path: Path) -> None:
    src = str(weights / "model.safetensors")
    cid = secrets.token_hex(32)
    group = CGROUP2 / f"ww-test-{os.getpid()}" / f"docker-{cid}.scope"
    group.mkdir(parents=True)
    bind, ovl = tmp_path / "ctr-models", tmp_path / "ctr-root"
    for d in (bind, ovl, tmp_path / "upper", tmp_path / "work"):
        d.mkdir()
    try:
        with container(tmp_path, f"mount --bind {weights} {bind}",
                       f"mount -t overlay overlay -o lowerdir={weights},upperdir={tmp_path}/upper,"
                       f"workdir={tmp_path}/work {ovl}") as pid:
            inside(pid, "cat", f"{bind}/model.safetensors", cgroup=group)
            inside(pid, "cat", f"{ovl}/model.safetensors", cgroup=group)
            reads: list[dict[str, Any]] = []
            deadline = time.monotonic() + 10
            while len(reads) < 2 and time.monotonic() < deadline:
                reads = [r for r in watch.of("file_access", path=src, final=True) if r.get("container")]
                time.sleep(0.1)
            assert len(reads) == 2, watch.of("file_access")
            for rec in reads:
                assert rec["host_path"] == src and rec["exe"] == "/usr/bin/cat"
                assert rec["container"]["runtime"] == "docker" and rec["container"]["id"] == cid
                assert rec["bytes_read"] >= 4 * MiB - 1024
            assert {r["view_path"] for r in reads} == {f"{bind}/model.safetensors", None}
            # A copy written inside the container lands in the overlay's upper layer: named by its host path.
            inside(pid, "cp", f"{ovl}/model.safetensors", f"{ovl}/copy.bin", cgroup=group)
            rec = watch.wait("weights_copy", destination=str(tmp_path / "upper" / "copy.bin"))
            assert rec["sources"] == [src] and rec["container"]["id"] == cid
    finally:
        for d in (group, group.parent):
            for _ in range(50):
                try:
                    d.rmdir()
                    break
                except OSError:
                    time.sleep(0.1)
