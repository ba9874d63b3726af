"""The wheel is complete and works: built from a copy of the tree (offline, with this venv's setuptools),
every module and data file of the package is in it, the eBPF loader and object too (executable,
where the agent looks), and the unpacked wheel passes tests/packaging/smoke.py: imports, --help, and
as root the eBPF path and a real broker/collector/agent stack. scripts/ci-wheel.sh does the same
from a clean venv with the wheel pip-installed (dependencies from the index)."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SMOKE = Path(__file__).resolve().parent / "smoke.py"
BPF = "weightwarden/agent/attribution/ebpf/bpf"
FILES_BPF = "weightwarden/agent/files/ebpf/bpf"
SOURCE_ONLY = {".c", ".h", ".sh"}  # shipped too, but checked by name below


@dataclass
class Built:
    wheel: Path
    names: set[str]
    modes: dict[str, int]
    unpacked: Path


def tracked_files() -> list[str]:
    out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, capture_output=True, text=True,
                         check=True).stdout
    return [line for line in out.splitlines() if line and (REPO / line).is_file()]


def copy_tree(dest: Path) -> None:
    """What git knows (tracked and new, not ignored), plus the eBPF build in place, times kept: the
    build script then finds its outputs up to date, as in a tree bootstrap has built."""
    for rel in tracked_files():
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, dest / rel)
    for bpf in (BPF, FILES_BPF):
        built = REPO / bpf / "build"
        if built.is_dir():
            shutil.copytree(built, dest / bpf / "build", copy_function=shutil.copy2)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Built]:
    work = tmp_path_factory.mktemp("wheel")
    src = work / "src"
    copy_tree(src)
    res = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                          str(work / "dist"), str(src)], capture_output=True, text=True, timeout=600,
                         env={**os.environ, "LANG": "C", "PIP_NO_INDEX": "1"})
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    [wheel] = (work / "dist").glob("*.whl")
    unpacked = work / "unpacked"
    with zipfile.ZipFile(wheel) as zf:
        infos = zf.infolist()
        for info in infos:
            path = Path(zf.extract(info, unpacked))
            if info.external_attr >> 16 & 0o111:
                path.chmod(0o755)  # as pip does
    yield Built(wheel, {i.filename for i in infos}, {i.filename: i.external_attr >> 16 for i in infos}, unpacked)


def test_the_wheel_is_for_this_platform_and_any_python3(built: Built) -> None:
    tag = built.wheel.name.removesuffix(".whl").split("-", 2)[2]
    assert tag == f"py3-none-linux_{platform.machine()}", tag
    wheel_meta = next(n for n in built.names if n.endswith(".dist-info/WHEEL"))
    assert "Root-Is-Purelib: false" in (built.unpacked / wheel_meta).read_text()


def test_every_module_and_data_file_of_the_package_is_in_the_wheel(built: Built) -> None:
    package = [f for f in tracked_files() if f.startswith("weightwarden/") and "/__pycache__/" not in f]
    missing = sorted(f for f in package if f not in built.names)
    assert not missing, f"in the tree, not in the wheel: {missing}"
    assert any(f.endswith("collector/detect/detector.py") for f in built.names), "the module the first wheel lost"
    extra = sorted(n for n in built.names if not n.startswith(("weightwarden/", "weightwarden-")))
    assert not extra, f"outside the package: {extra}"
    shipped = ("weightwarden-bpf", "weightwarden-files-bpf", ".bpf.o")
    leftovers = sorted(n for n in built.names if "/build/" in n and not n.endswith(shipped))
    assert not leftovers, f"build intermediates shipped: {leftovers}"


def test_the_sensor_is_built_into_the_wheel_where_the_agent_looks(built: Built) -> None:
    loader, obj = f"{BPF}/build/weightwarden-bpf", f"{BPF}/build/weightwarden.bpf.o"
    assert loader in built.names and obj in built.names
    assert built.modes[loader] & 0o111, "pip installs it executable only if the wheel says so"
    head = (built.unpacked / loader).read_bytes()[:4]
    assert head == b"\x7fELF"
    assert (built.unpacked / obj).read_bytes()[:4] == b"\x7fELF"


def test_the_file_read_sensor_is_built_into_the_wheel_where_the_agent_looks(built: Built) -> None:
    from weightwarden.agent.files.ebpf.loader import BUILT

    loader = f"{FILES_BPF}/build/weightwarden-files-bpf"
    assert BUILT.as_posix().endswith(loader), BUILT
    assert loader in built.names
    assert built.modes[loader] & 0o111, "pip installs it executable only if the wheel says so"
    assert (built.unpacked / loader).read_bytes()[:4] == b"\x7fELF"
    for src in ("build.sh", "files.bpf.c", "loader.c", "wf.h"):
        assert f"{FILES_BPF}/{src}" in built.names


def smoke(built: Built, *args: str) -> subprocess.CompletedProcess[str]:
    # -P and a cwd outside the tree: the unpacked wheel is the only weightwarden on the path (smoke.py checks).
    env = {k: v for k, v in os.environ.items() if not k.startswith("WEIGHTWARDEN_")}
    return subprocess.run([sys.executable, "-P", str(SMOKE), "--prefix", str(built.unpacked), *args],
                          cwd=str(built.unpacked), env={**env, "PYTHONPATH": str(built.unpacked), "LANG": "C"},
                          capture_output=True, text=True, timeout=300)


def test_the_unpacked_wheel_imports_and_answers_help(built: Built) -> None:
    res = smoke(built)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "modules import, from " + str(built.unpacked) in res.stdout


@pytest.mark.privileged
def test_the_unpacked_wheel_runs_on_the_ebpf_path_and_against_a_broker(built: Built) -> None:
    res = smoke(built, "--ebpf", "--stack")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "on the eBPF path" in res.stdout and "the host is stored" in res.stdout
