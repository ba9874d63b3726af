"""The kernel matrix: the sensor's one CO-RE object, loaded and exercised on several kernels.

For each of Debian's kernels (``apt-get download``, cached) it boots the kernel in QEMU with a small
initramfs made here from this machine's own files (busybox, the Python running this script and the few
modules ``guest.py`` imports, the loader, ``ww-probe``, the object), and runs ``guest.py`` inside: every
program loaded alone (accepted, or refused with the verifier's reason), ``weightwarden-bpf --probe``, a
real attach and a connect/send/DNS/unix smoke test that checks each byte is credited to the process that
sent it. The running kernel is checked the same way on this host, in a network namespace of its own.
Prints a table; exits 1 when a kernel that must load the object does not (a refused program, a failed
probe, attach or smoke test), 2 when the matrix itself could not run. Not part of the pytest suite
(minutes, not seconds); ``scripts/kernel-matrix.sh`` is its CI stage. Needs root, qemu-system-x86,
busybox-static, clang/bpftool/libbpf-dev (the build), and Debian's package lists (``apt-get update``).

    tests/kernels/run.py                       # every kernel below, table on stdout
    tests/kernels/run.py --kernels debian-6.1 --json out.json
    tests/kernels/run.py vmlinux-h linux-image-6.12-cloud-amd64   # regenerate the generic vmlinux_x86.h

Why QEMU without KVM by default: on this machine /dev/kvm is KVM-PVM (nested virtualisation without
VMX/SVM), which runs an ordinary guest kernel by emulating its privileged code an instruction at a time:
a Debian kernel spends ~28 s of guest time to reach memory set-up and then dies on an instruction the
emulator lacks (``shlx`` in the bzImage decompressor, ``lock cmpxchg16b`` in SLUB when booted as PVH).
QEMU's TCG boots the same kernel to user space in ~3 s. ``--accel kvm`` uses KVM where the CPU
advertises vmx or svm; ``auto`` (default) chooses that way.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import modulefinder
import os
import platform
import re
import shutil
import stat
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from weightwarden.agent.attribution.ebpf.sensor import CAPABILITIES

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
BPF = REPO / "weightwarden" / "agent" / "attribution" / "ebpf" / "bpf"
FILES_BPF = REPO / "weightwarden" / "agent" / "files" / "ebpf" / "bpf"
VM_SECONDS = 900.0  # one VM, boot to power-off; TCG on a loaded 2-core machine is slow, a hang still ends
ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C", "LC_ALL": "C"}


@dataclass(frozen=True)
class Kernel:
    name: str
    package: str  # a Debian linux-image package (a meta-package names the newest of its series); "" = this host
    must_load: bool = True  # every program must load and the smoke test pass, else the matrix fails
    may_refuse: frozenset[str] = frozenset()  # programs this kernel is known and accepted to refuse


KERNELS = [
    Kernel("debian-6.1", "linux-image-cloud-amd64"),  # Debian 12, Amazon Linux 2023's 6.1 series
    Kernel("debian-6.12", "linux-image-6.12-cloud-amd64"),  # Debian 12 updates, Amazon Linux 2023's 6.12
    Kernel("running", ""),  # this machine's kernel, on this host (no VM: its image is not on disk)
]


@dataclass
class Result:
    kernel: Kernel
    release: str = ""
    package_version: str = ""
    accel: str = ""
    boot_seconds: float | None = None  # QEMU start to the guest's first line of user space
    total_seconds: float = 0.0
    verdict: dict[str, object] | None = None
    failure: str = ""  # why there is no verdict (boot failed, timed out...)
    console_tail: str = ""
    programs: list[dict[str, object]] = field(default_factory=list)
    file_programs: list[dict[str, object]] = field(default_factory=list)  # the file-read sensor's

    @property
    def problems(self) -> list[str]:
        """What makes this kernel fail the matrix (empty: it passes)."""
        if self.failure:
            return [self.failure]
        v = self.verdict or {}
        out = []
        for p in self.programs:
            if status(p) == "REFUSED" and p["program"] not in self.kernel.may_refuse and not optional(str(p["program"])):
                out.append(f"{p['program']} refused: {verifier_reason(str(p['log']), str(p['error']))}")
        for p in self.file_programs:
            # A hook this kernel lacks is a fallback the agent names; a refusal of one it has is our bug.
            if status(p) == "REFUSED":
                out.append(f"file sensor: {p['program']} refused: {verifier_reason(str(p['log']), str(p['error']))}")
        if v.get("probe_tool"):
            out.append(f"ww-probe: {v['probe_tool']}")
        if not v.get("loader_probe_ok"):
            out.append(f"weightwarden-bpf --probe failed: {loader_reason(str(v.get('loader_probe')))}")
        if not v.get("attach_ok"):
            out.append(f"attach failed: {loader_reason(str(v.get('attach')))}")
        checks = v.get("checks")
        for c in checks if isinstance(checks, list) else []:
            if not c["ok"] and c.get("expected", True):
                out.append(f"smoke: {c['name']}: {c['detail']}")
        return out


# ----------------------------------------------------------------------------------------------- kernels

def run(argv: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
    kw.setdefault("env", ENV)
    return subprocess.run(argv, capture_output=True, text=True, check=False, **kw)  # type: ignore[call-overload,no-any-return]


def resolve(package: str) -> str:
    """A meta-package's linux-image-X (the newest of its series), or the package itself."""
    done = run(["apt-cache", "depends", package])
    if done.returncode != 0:
        raise SystemExit(f"run.py: apt-cache does not know {package} (run apt-get update?): {done.stderr.strip()}")
    deps = re.findall(r"^\s+Depends: (linux-image-\S+)$", done.stdout, re.M)
    concrete = [d for d in deps if re.match(r"linux-image-\d", d) and not d.endswith("-dbg")]
    return concrete[0] if concrete else package


def fetch_kernel(package: str, cache: Path) -> tuple[Path, str]:
    """The kernel image (bzImage) of a Debian package, downloaded once into ``cache``; with its version."""
    name = resolve(package)
    debs = sorted(cache.glob(f"{name}_*.deb"))
    if not debs:
        done = run(["apt-get", "download", name], cwd=cache)
        debs = sorted(cache.glob(f"{name}_*.deb"))
        if not debs:
            raise SystemExit(f"run.py: apt-get download {name} failed: {done.stderr.strip()}")
    deb = debs[-1]
    version = deb.name.split("_")[1]
    image = cache / f"{name}.vmlinuz"
    if not image.exists():
        with subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, env=ENV) as proc:  # stopped early: a broken pipe
            assert proc.stdout is not None
            with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
                for member in tar:
                    if re.fullmatch(r"\./boot/vmlinuz-.*", member.name):
                        src = tar.extractfile(member)
                        assert src is not None
                        image.with_suffix(".tmp").write_bytes(src.read())
                        image.with_suffix(".tmp").rename(image)
                        break
        if not image.exists():
            raise SystemExit(f"run.py: no boot/vmlinuz-* in {deb}")
    return image, version


def extract_vmlinux(image: Path) -> bytes:
    """The ELF inside a bzImage (as the kernel's scripts/extract-vmlinux does): it carries the BTF."""
    data = image.read_bytes()
    for magic, tool in ((b"\x28\xb5\x2f\xfd", "zstd"), (b"\x02\x21\x4c\x18", "lz4"), (b"\xfd7zXZ\x00", "xz"),
                        (b"\x1f\x8b\x08", "gzip")):
        at = data.find(magic)
        while at >= 0:
            done = subprocess.run([tool, "-dc"], input=data[at:], capture_output=True, env=ENV, check=False)
            if done.stdout[:4] == b"\x7fELF":
                return done.stdout
            at = data.find(magic, at + 1)
    raise SystemExit(f"run.py: no compressed ELF found in {image}")


def vmlinux_h(package: str, out: Path, cache: Path) -> None:
    image, version = fetch_kernel(package, cache)
    name = resolve(package)
    with tempfile.TemporaryDirectory(prefix="ww-vmlinux-") as tmp:
        elf = Path(tmp) / "vmlinux"
        elf.write_bytes(extract_vmlinux(image))
        dump = subprocess.run(["bpftool", "btf", "dump", "file", str(elf), "format", "c"], capture_output=True,
                              check=True, env=ENV).stdout
    head = (
        "/* SPDX-License-Identifier: GPL-2.0-only */\n"
        "/* The kernel's types for the CO-RE programs (weightwarden.bpf.c), one header for every x86-64 kernel:\n"
        " * libbpf relocates each field access to the running kernel's own layout when the object loads, so the\n"
        " * object is built once (at packaging time) and runs on kernels older and newer than this one.\n"
        " * Generated, not edited: `bpftool btf dump file vmlinux format c` of Debian's\n"
        f" * {name} ({version}), a kernel anyone can download again.\n"
        " * Regenerate with `tests/kernels/run.py vmlinux-h PACKAGE` (see tests/kernels/README.md). */\n"
    )
    out.write_bytes(head.encode() + dump)
    print(f"{out}: from {name} {version}, {len(dump)} bytes")


# ------------------------------------------------------------------------------------------- initramfs

class Cpio:
    """A newc archive (the initramfs format) built in memory: no root-owned tree left on disk."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.names: set[str] = set()
        self.ino = 1

    def _entry(self, name: str, mode: int, data: bytes, mtime: int = 0) -> None:
        name = name.lstrip("/")
        if name in self.names:
            return
        parent = os.path.dirname(name)
        if parent and parent not in self.names:
            self._entry(parent, stat.S_IFDIR | 0o755, b"")
        self.names.add(name)
        raw = name.encode() + b"\0"
        fields = (self.ino, mode, 0, 0, 1, mtime, len(data), 0, 0, 0, 0, len(raw), 0)
        head = b"070701" + b"".join(b"%08x" % f for f in fields)
        self.ino += 1
        self.chunks += [head, raw, b"\0" * (-(len(head) + len(raw)) % 4), data, b"\0" * (-len(data) % 4)]

    def dir(self, name: str) -> None:
        self._entry(name, stat.S_IFDIR | 0o755, b"")

    def file(self, name: str, data: bytes, mode: int = 0o644, mtime: int = 0) -> None:
        self._entry(name, stat.S_IFREG | mode, data, mtime)

    def copy(self, src: Path, name: str | None = None) -> None:
        """A host file at the same path (or ``name``), symlinks followed, mode and mtime kept."""
        st = src.stat()
        self.file(name or str(src), src.read_bytes(), stat.S_IMODE(st.st_mode), int(st.st_mtime))

    def symlink(self, name: str, target: str) -> None:
        self._entry(name, stat.S_IFLNK | 0o777, target.encode())

    def close(self) -> bytes:
        self._entry("TRAILER!!!", 0, b"")
        return b"".join(self.chunks)


def with_libraries(cpio: Cpio, binary: Path, seen: set[str]) -> None:
    """A dynamically linked file and the shared libraries it needs (ldd), each at its host path."""
    cpio.copy(binary)
    done = run(["ldd", str(binary)])
    for line in done.stdout.splitlines():
        m = re.search(r"(?:=> )?(/\S+) \(0x", line)
        if m and m.group(1) not in seen:
            seen.add(m.group(1))
            cpio.copy(Path(m.group(1)), m.group(1))


SKIP_MODULES = {"tkinter", "_tkinter", "turtle", "idlelib", "lib2to3", "ensurepip", "pydoc_data", "test",
                "_testcapi", "_testinternalcapi", "_testbuffer", "_testmultiphase", "_xxtestfuzz"}


def python_modules() -> list[Path]:
    """The files of every module guest.py may import: what importing it loads, and what modulefinder sees
    it (and them) import lazily (argparse imports shutil only when it formats help, for instance)."""
    code = ("import runpy, sys; runpy.run_path(sys.argv[1], run_name='imported'); "
            "print('\\n'.join(sorted({m.__file__ for m in list(sys.modules.values()) "
            "if getattr(m, '__file__', None)})))")
    done = subprocess.run([sys.executable, "-S", "-E", "-c", code, str(HERE / "guest.py")], capture_output=True,
                          text=True, check=True, cwd=REPO, env=ENV)
    files = {Path(p) for p in done.stdout.splitlines()}
    stdlib = Path(os.__file__).parent
    finder = modulefinder.ModuleFinder(path=[str(REPO), str(stdlib), str(stdlib / "lib-dynload")])
    finder.run_script(str(HERE / "guest.py"))
    for codec in stdlib.glob("encodings/*.py"):  # looked up by name at run time (socket asks for idna)
        finder.import_hook(f"encodings.{codec.stem}")
    for name, module in finder.modules.items():
        path = getattr(module, "__file__", None)  # modulefinder.Module: None for built-in modules
        if isinstance(path, str) and name.split(".")[0] not in SKIP_MODULES:
            files.add(Path(path))
    return sorted(files)


INIT = """#!/bin/busybox sh
/bin/busybox mkdir -p /proc /sys /dev /tmp /sbin /usr/bin /usr/sbin
/bin/busybox --install -s
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mount -t tmpfs tmp /tmp
mkdir -p /sys/fs/cgroup /sys/fs/bpf
mount -t cgroup2 cgroup2 /sys/fs/cgroup
mount -t bpf bpf /sys/fs/bpf
ip link set lo up
echo "WW-GUEST-START $(uname -r) $(cut -d' ' -f1 /proc/uptime)"
{python} -S -E /ww/guest.py --loader /ww/weightwarden-bpf --probe-tool /ww/ww-probe --object /ww/weightwarden.bpf.o \
  --files-object /ww/files.bpf.o --out /dev/ttyS1
echo "WW-GUEST-DONE $? $(cut -d' ' -f1 /proc/uptime)"
poweroff -f
"""


def build_initramfs(tools: dict[str, Path]) -> bytes:
    cpio = Cpio()
    seen: set[str] = set()
    busybox = shutil.which("busybox", path=ENV["PATH"])
    said = run(["ldd", busybox]) if busybox else None
    if not busybox or not said or "not a dynamic executable" not in said.stdout + said.stderr:
        raise SystemExit("run.py: needs a static busybox (apt-get install busybox-static)")
    cpio.copy(Path(busybox), "/bin/busybox")
    python = Path(sys._base_executable).resolve()  # type: ignore[attr-defined]
    with_libraries(cpio, python, seen)
    for f in python_modules():
        if f.is_relative_to(REPO):
            cpio.copy(f, "/ww/" + str(f.relative_to(REPO)))
            continue
        cpio.copy(f)
        if f.suffix == ".py" and Path(cache := importlib.util.cache_from_source(str(f))).exists():
            cpio.copy(Path(cache))  # compiled already: TCG need not compile the standard library each boot
        if f.suffix == ".so":
            with_libraries(cpio, f, seen)
    stdlib = Path(os.__file__).parent
    cpio.copy(stdlib / "os.py")  # the landmark Python finds its prefix by
    cpio.dir(str(stdlib / "lib-dynload"))
    cpio.copy(HERE / "guest.py", "/ww/guest.py")
    for name in ("weightwarden-bpf", "ww-probe"):
        with_libraries(cpio, tools[name], seen)
        cpio.copy(tools[name], f"/ww/{name}")
    cpio.copy(tools["weightwarden.bpf.o"], "/ww/weightwarden.bpf.o")
    cpio.copy(tools["files.bpf.o"], "/ww/files.bpf.o")
    cpio.file("/init", INIT.format(python=python).encode(), 0o755)
    return cpio.close()


def build_tools(work: Path) -> dict[str, Path]:
    """The object and loader exactly as build.sh makes them, and ww-probe beside them."""
    options = {k: v for k, v in os.environ.items() if k in ("WW_STATIC", "WW_VMLINUX_H")}  # build.sh's own
    done = run([str(BPF / "build.sh")], env=ENV | options)
    if done.returncode != 0:
        raise SystemExit(f"run.py: build.sh failed: {done.stderr.strip()}")
    done = run([str(FILES_BPF / "build.sh")], env=ENV | options)
    if done.returncode != 0:
        raise SystemExit(f"run.py: the file sensor's build.sh failed: {done.stderr.strip()}")
    probe = work / "ww-probe"
    done = run(["cc", "-O2", "-Wall", "-Wextra", str(HERE / "probe.c"), "-o", str(probe), "-lbpf"])
    if done.returncode != 0:
        raise SystemExit(f"run.py: building ww-probe failed: {done.stderr.strip()}")
    return {"weightwarden-bpf": BPF / "build" / "weightwarden-bpf", "ww-probe": probe,
            "weightwarden.bpf.o": BPF / "build" / "weightwarden.bpf.o", "files.bpf.o": FILES_BPF / "build" / "files.bpf.o"}


# ------------------------------------------------------------------------------------------------ runs

def kvm_usable() -> bool:
    """KVM only where the CPU has hardware virtualisation (see the module's docstring: KVM-PVM)."""
    flags = Path("/proc/cpuinfo").read_text()
    return os.access("/dev/kvm", os.R_OK | os.W_OK) and bool(re.search(r"^flags\s*:.*\b(vmx|svm)\b", flags, re.M))


def boot(kernel: Kernel, image: Path, initramfs: Path, accel: str, work: Path, res: Result) -> None:
    console, result = work / f"{kernel.name}.console", work / f"{kernel.name}.result"
    accel_args = ["-accel", "kvm", "-cpu", "host"] if accel == "kvm" else ["-accel", "tcg", "-cpu", "max"]
    argv = ["qemu-system-x86_64", *accel_args, "-m", "1024", "-smp", "1", "-nodefaults", "-no-user-config",
            "-display", "none", "-no-reboot", "-kernel", str(image), "-initrd", str(initramfs),
            "-append", "console=ttyS0 panic=-1 quiet", "-serial", f"file:{console}", "-serial", f"file:{result}"]
    began = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=ENV)
    try:
        while proc.poll() is None and time.monotonic() - began < VM_SECONDS:
            if res.boot_seconds is None and console.exists() and b"WW-GUEST-START" in console.read_bytes():
                res.boot_seconds = round(time.monotonic() - began, 1)
            time.sleep(0.2)
        if proc.poll() is None:
            res.failure = f"no power-off within {VM_SECONDS:.0f} s"
    finally:
        if proc.poll() is None:
            proc.kill()
        _, err = proc.communicate()
    res.total_seconds = round(time.monotonic() - began, 1)
    text = console.read_bytes().decode("utf-8", "replace") if console.exists() else ""
    res.console_tail = "\n".join(text.splitlines()[-25:])
    if proc.returncode not in (0, None) and not res.failure:
        res.failure = f"qemu exited {proc.returncode}: {err.decode('utf-8', 'replace').strip()[-500:]}"
    raw = result.read_bytes().decode("utf-8", "replace").strip() if result.exists() else ""
    if raw:
        res.verdict = json.loads(raw)
    elif not res.failure:
        res.failure = "the guest wrote no verdict (see the console)"
    m = re.search(r"WW-GUEST-START (\S+)", text)
    res.release = m.group(1) if m else ""


def run_here(tools: dict[str, Path], res: Result) -> None:
    """The running kernel: guest.py on this host, in a network namespace of its own (its loopback only)."""
    began = time.monotonic()
    script = (f"ip link set lo up && exec {sys.executable} {HERE / 'guest.py'} --loader {tools['weightwarden-bpf']} "
              f"--probe-tool {tools['ww-probe']} --object {tools['weightwarden.bpf.o']} "
              f"--files-object {tools['files.bpf.o']}")
    done = subprocess.run(["unshare", "--net", "--", "sh", "-c", script], capture_output=True, text=True,
                          timeout=VM_SECONDS, cwd=REPO, env=ENV | {"PYTHONPATH": str(REPO)}, check=False)
    res.total_seconds = round(time.monotonic() - began, 1)
    res.release = platform.release()
    res.accel = "host"
    if done.returncode != 0 or not done.stdout.strip():
        res.failure = f"guest.py exited {done.returncode}: {done.stderr.strip()[-1000:]}"
        return
    res.verdict = json.loads(done.stdout)


def verifier_reason(log: str, error: str) -> str:
    """The verifier's (or libbpf's) own words for a refusal, shortened to its last meaningful lines."""
    body = log
    m = re.search(r"-- BEGIN PROG LOAD LOG --\n(.*?)-- END PROG LOAD LOG --", log, re.S)
    if m:
        body = m.group(1)
    lines = [ln.strip() for ln in body.splitlines() if ln.strip()]
    noise = re.compile(r"^(processed \d+ insns|verification time|stack depth|libbpf: failed to load|libbpf: prog '.*': "
                       r"failed to load|libbpf: failed to load object)")
    lines = [ln for ln in lines if not noise.match(ln)]
    return " | ".join(lines[-2:])[:400] or error


def lost(r: Result) -> list[str]:
    """The sensor's capabilities this kernel loses (the agent's own table: what it reports as off)."""
    down = {str(p["program"]) for p in r.programs if status(p) != "loaded"}
    return [c.name for c in CAPABILITIES if down & set(c.programs)]


def optional(program: str) -> bool:
    """A program only optional capabilities need (AF_XDP bytes, the bpf LSM): any kernel may refuse it, and the
    agent reports the capability off rather than itself degraded."""
    caps = [c for c in CAPABILITIES if program in c.programs]
    return bool(caps) and not any(c.expected for c in caps)


def loader_reason(text: str) -> str:
    """The loader's ERROR text up to the verifier's log (which the loader cuts at 4 KiB: see ww-probe's)."""
    return text.split("-- BEGIN PROG LOAD LOG --")[0].replace("\n", " ").strip()[:400]


def status(p: dict[str, object]) -> str:
    """loaded; absent (its tracepoint is not in this kernel: the loader leaves it out, the feature is lost);
    REFUSED (the verifier or libbpf said no)."""
    if p["loaded"]:
        return "loaded"
    if re.search(r"failed to find kernel BTF type ID of '(\w+)'", str(p["log"])):
        return "absent"
    return "REFUSED"


# ------------------------------------------------------------------------------------------------ table

def table(results: list[Result]) -> str:
    programs: list[str] = []
    for r in results:
        for p in r.programs + r.file_programs:
            if p["program"] not in programs:
                programs.append(str(p["program"]))
    head = ["kernel", "release", "accel", *programs, "--probe", "attach", "smoke", "boot s", "total s", "verdict",
            "features lost"]
    rows = [head]
    for r in results:
        v = r.verdict or {}
        loaded = {str(p["program"]): status(p) for p in r.programs + r.file_programs}
        rows.append([
            r.kernel.name, r.release or "?", r.accel, *[loaded.get(p, "-") for p in programs],
            "ok" if v.get("loader_probe_ok") else "FAIL" if v else "-",
            "ok" if v.get("attach_ok") else "FAIL" if v else "-",
            "ok" if v.get("smoke_ok") else "FAIL" if v else "-",
            "-" if r.boot_seconds is None else f"{r.boot_seconds:.1f}", f"{r.total_seconds:.1f}",
            "pass" if not r.problems else ("FAIL" if r.kernel.must_load else "known"),
            "; ".join(lost(r)) or "none",
        ])
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    for r in results:
        for p in r.programs + r.file_programs:
            if status(p) != "loaded":
                lines.append(f"{r.kernel.name}: {p['program']} {status(p).lower()}: "
                             f"{verifier_reason(str(p['log']), str(p['error']))}")
        for problem in r.problems:
            if "refused:" not in problem:
                lines.append(f"{r.kernel.name}: {problem}")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kernels", default=",".join(k.name for k in KERNELS),
                    help=f"comma-separated, from: {', '.join(k.name for k in KERNELS)}")
    ap.add_argument("--cache", type=Path, default=Path(os.environ.get("WW_KERNEL_CACHE",
                                                                      Path.home() / ".cache" / "weightwarden-kernels")),
                    help="where the kernel packages are kept between runs (default: $WW_KERNEL_CACHE or "
                         "~/.cache/weightwarden-kernels)")
    ap.add_argument("--accel", choices=("auto", "kvm", "tcg"), default="auto")
    ap.add_argument("--json", type=Path, help="also write every result here")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (initramfs, consoles)")
    ap.add_argument("command", nargs="*", help="`vmlinux-h [PACKAGE]`: regenerate the generic vmlinux_x86.h")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("run.py: needs root (loads BPF programs)", file=sys.stderr)
        return 2
    args.cache.mkdir(parents=True, exist_ok=True)
    if args.command:
        if args.command[0] != "vmlinux-h" or len(args.command) > 2:
            ap.error("the only command is: vmlinux-h [PACKAGE]")
        package = args.command[1] if len(args.command) > 1 else "linux-image-6.12-cloud-amd64"
        vmlinux_h(package, BPF / "vmlinux_x86.h", args.cache)
        return 0
    known = {k.name: k for k in KERNELS}
    chosen = [known[n] for n in args.kernels.split(",") if n in known]
    unknown = [n for n in args.kernels.split(",") if n not in known]
    if unknown or not chosen:
        ap.error(f"unknown kernels {unknown}; choose from {sorted(known)}")
    accel = args.accel if args.accel != "auto" else ("kvm" if kvm_usable() else "tcg")
    work = Path(tempfile.mkdtemp(prefix="ww-kernels-"))
    results: list[Result] = []
    try:
        began = time.monotonic()
        tools = build_tools(work)
        initramfs = None
        for k in chosen:
            res = Result(k)
            results.append(res)
            if not k.package:
                run_here(tools, res)
            else:
                image, res.package_version = fetch_kernel(k.package, args.cache)
                if initramfs is None:
                    initramfs = work / "initramfs.cpio"
                    initramfs.write_bytes(build_initramfs(tools))
                res.accel = accel
                boot(k, image, initramfs, accel, work, res)
            progs = (res.verdict or {}).get("programs")
            res.programs = progs if isinstance(progs, list) else []
            fprogs = (res.verdict or {}).get("file_programs")
            res.file_programs = fprogs if isinstance(fprogs, list) else []
            print(f"{k.name}: {'pass' if not res.problems else 'FAIL'} in {res.total_seconds:.1f} s", file=sys.stderr,
                  flush=True)
        print(table(results))
        print(f"matrix: {len(results)} kernels in {time.monotonic() - began:.0f} s ({accel})")
        if args.json:
            args.json.write_text(json.dumps([{
                "kernel": r.kernel.name, "package": r.kernel.package, "package_version": r.package_version,
                "release": r.release, "accel": r.accel, "boot_seconds": r.boot_seconds,
                "total_seconds": r.total_seconds, "problems": r.problems, "features_lost": lost(r), "verdict": r.verdict,
                "failure": r.failure, "console_tail": r.console_tail} for r in results], indent=1))
        for r in results:
            if r.failure and r.console_tail:
                print(f"--- {r.kernel.name} console (last lines) ---\n{r.console_tail}", file=sys.stderr)
        return 1 if any(r.problems and r.kernel.must_load for r in results) else 0
    finally:
        if args.keep:
            print(f"run.py: kept {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
