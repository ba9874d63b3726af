""""Containers" built from what this machine has, for the eBPF attribution tests.

Three network namespaces: ``host`` (where the agent runs: the test's stand-in for
the root namespace, which is never touched), ``ctr`` (a container, routed
through host over a veth) and ``out`` (the outside world). A cgroup v2 subtree
made under the unified mount, shaped like a Kubernetes pod's
(kubepods.slice/.../cri-containerd-<id>.scope), holds the container's
processes; the agent's programs attach there and nowhere else. Everything is
removed at teardown, even after a failure.

:class:`Podman` runs real containers in the same lab: podman with runc, rootful, cgroupfs driver
(no systemd here), storage of its own in a temporary folder. Each container joins a network
namespace the lab made (``--network ns:``, as a CRI runtime joins the namespace CNI made: podman's
own networks would change the root namespace's firewall and routes), has its own PID, mount, UTS
and IPC namespaces, the runtime's cgroup under a kubelet-shaped parent (cgroupfs driver:
``kubepods/besteffort/pod<uid>/libpod-<id>``) and an overlay of this machine's root as its root
filesystem (``--rootfs /:O``: no image, no registry; the tools the tests run are there).
What a runtime cannot do here, and the hand-made labs still cover: the systemd driver's names
(``cri-containerd-<id>.scope`` in ``kubepods-...slice``; no systemd runs here), and crun, which
refuses this hybrid cgroup host ("cgroups in hybrid mode not supported, drop all controllers from
cgroupv2"): runc is used.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Generator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.netns import sh, stop_all, wait_for
from weightwarden.agent.attribution.ebpf.loader import loader_path
from weightwarden.agent.kernel.cgroupfs import find_cgroup2

REPO = Path(__file__).resolve().parents[2]
POD_UID = "6b0f9b2c-1f3c-4e8a-9d6f-0123456789ab"
CTR_ID = "c0ffee" * 10 + "beef"
_counter = itertools.count(1)


@dataclass
class Lab:
    tag: str
    host: str
    ctr: str
    out: str
    host_addr: str  # host's address towards the container
    ctr_addr: str
    out_addr: str
    root: Path  # the test's cgroup subtree (the agent's scope)
    pod_cgroup: Path  # the container's cgroup directory
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def pod_rel(self) -> str:
        unified = find_cgroup2()
        assert unified is not None
        return "/" + str(self.pod_cgroup.relative_to(unified))

    def in_ctr(self, *argv: str, cgroup: Path | None = None) -> list[str]:
        """argv that runs a command as the container would: in its cgroup, network and mount namespaces."""
        cg = cgroup or self.pod_cgroup
        cmd = shlex.join(argv)
        return ["sh", "-c", f"echo $$ > {cg}/cgroup.procs && exec nsenter --net=/run/netns/{self.ctr} "
                f"unshare --mount --propagation private {cmd}"]

    def run_ctr(self, *argv: str, cgroup: Path | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.in_ctr(*argv, cgroup=cgroup), capture_output=True, text=True, check=check,
                              env={**os.environ, "LANG": "C"}, cwd=str(REPO))

    def popen_ctr(self, *argv: str, **kw: Any) -> subprocess.Popen[bytes]:
        proc: subprocess.Popen[bytes] = subprocess.Popen(self.in_ctr(*argv), cwd=str(REPO), **kw)
        self.procs.append(proc)
        return proc

    def popen(self, ns: str, *argv: str, **kw: Any) -> subprocess.Popen[bytes]:
        proc: subprocess.Popen[bytes] = subprocess.Popen(["ip", "netns", "exec", ns, *argv], cwd=str(REPO), **kw)
        self.procs.append(proc)
        return proc

    def sink(self, tcp_port: int, udp_port: int, quiet: bool = True) -> subprocess.Popen[bytes]:
        """tests/helpers/sink.py on the outside address, answering once it listens (stopped with the lab)."""
        proc = self.popen(self.out, sys.executable, "-m", "tests.helpers.sink", self.out_addr, str(tcp_port),
                          str(udp_port), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL if quiet else None)
        assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"
        return proc

    def subgroup(self, name: str) -> Path:
        path = self.pod_cgroup.parent / name
        path.mkdir(exist_ok=True)
        return path

    def teardown(self) -> None:
        stop_all(self.procs)
        for ns in (self.host, self.ctr, self.out):
            for pid in sh("ip", "netns", "pids", ns, check=False).stdout.split():
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)
            sh("ip", "netns", "del", ns, check=False)
        _remove_cgroup_tree(self.root)


def _remove_cgroup_tree(root: Path) -> None:
    if not root.exists():
        return
    dirs = sorted((p for p in root.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True) + [root]
    for d in dirs:
        with contextlib.suppress(OSError):
            (d / "cgroup.kill").write_text("1")
    for d in dirs:
        for _ in range(50):
            try:
                d.rmdir()
                break
            except FileNotFoundError:
                break
            except OSError:
                time.sleep(0.05)


def make_lab() -> Lab:
    unified = find_cgroup2()
    if unified is None:
        raise RuntimeError("no cgroup v2 hierarchy mounted")
    n = next(_counter)
    tag = f"{os.getpid() % 10000}{n}"
    subnet = (os.getpid() + n) % 200 + 20
    root = Path(unified) / f"ww-test-{tag}"
    pod = (root / "kubepods.slice" / "kubepods-besteffort.slice"
           / f"kubepods-besteffort-pod{POD_UID.replace('-', '_')}.slice" / f"cri-containerd-{CTR_ID}.scope")
    lab = Lab(tag, f"wwh-{tag}", f"wwc-{tag}", f"wwo-{tag}", f"198.18.{subnet}.1", f"198.18.{subnet}.2",
              f"198.19.{subnet}.2", root, pod)
    try:
        pod.mkdir(parents=True)
        for ns in (lab.host, lab.ctr, lab.out):
            sh("ip", "netns", "add", ns)
            sh("ip", "link", "set", "lo", "up", netns=ns)
        hc, ch, ho, oh = f"wh{tag}c"[:15], f"wc{tag}h"[:15], f"wh{tag}o"[:15], f"wo{tag}h"[:15]
        sh("ip", "link", "add", hc, "netns", lab.host, "type", "veth", "peer", "name", ch, "netns", lab.ctr)
        sh("ip", "link", "add", ho, "netns", lab.host, "type", "veth", "peer", "name", oh, "netns", lab.out)
        for ns, dev, addr in ((lab.host, hc, f"{lab.host_addr}/24"), (lab.ctr, ch, f"{lab.ctr_addr}/24"),
                              (lab.host, ho, f"198.19.{subnet}.1/24"), (lab.out, oh, f"{lab.out_addr}/24")):
            sh("ip", "addr", "add", addr, "dev", dev, netns=ns)
            sh("ip", "link", "set", dev, "up", netns=ns)
        sh("ip", "route", "add", "default", "via", lab.host_addr, netns=lab.ctr)
        sh("ip", "route", "add", "default", "via", f"198.19.{subnet}.1", netns=lab.out)
        sh("sysctl", "-q", "-w", "net.ipv4.ip_forward=1", netns=lab.host)
        # As distributions do: any group may open unprivileged ICMP (ping) sockets.
        sh("sysctl", "-q", "-w", "net.ipv4.ping_group_range=0 2147483647", netns=lab.ctr)
    except Exception:
        lab.teardown()
        raise
    return lab


class AgentTop:
    """``weightwarden-agent top --json`` in the lab's host namespace, watching the lab's cgroup. Every sample
    must come from a whole eBPF sensor (no program left out), unless ``allow_degraded``."""

    def __init__(self, lab: Lab, *args: str, allow_degraded: bool = False, env: dict[str, str] | None = None) -> None:
        self.allow_degraded = allow_degraded
        self.proc = subprocess.Popen(
            ["nsenter", f"--net=/run/netns/{lab.host}", sys.executable, "-m", "weightwarden.agent", "top", "--json",
             "--attribution", "ebpf", "--bpf-cgroup", str(lab.root), *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=str(REPO), env={**os.environ, **(env or {})})
        lab.procs.append(self.proc)
        self.stderr: list[str] = []
        self.samples: list[dict[str, Any]] = []
        self._threads = [threading.Thread(target=self._err, daemon=True), threading.Thread(target=self._out, daemon=True)]
        for t in self._threads:
            t.start()

    def _err(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr.append(line.decode(errors="replace"))

    def _out(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.samples.append(json.loads(line))

    def wait_ready(self, timeout: float = 30) -> None:
        ok = wait_for(lambda: any('"attribution"' in line for line in self.stderr) or self.proc.poll() is not None,
                      timeout)
        assert ok and self.proc.poll() is None, "agent did not start: " + "".join(self.stderr)

    def wait_samples(self, n: int, timeout: float = 15) -> None:
        target = len(self.samples) + n
        assert wait_for(lambda: len(self.samples) >= target, timeout), "".join(self.stderr[-5:])

    def stop(self, timeout: float = 15) -> list[dict[str, Any]]:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=timeout)
        for t in self._threads:
            t.join(timeout=2)
        assert self.proc.returncode == 0, "".join(self.stderr)
        if not self.allow_degraded:
            for sample in self.samples:
                sensor = sample.get("sensor") or {}
                assert sensor.get("path") == "ebpf" and not sensor.get("degraded"), \
                    f"the eBPF sensor is not whole: {sensor}"
        return self.samples


PODMAN = shutil.which("podman")
RUNC = shutil.which("runc") or ("/usr/sbin/runc" if os.path.exists("/usr/sbin/runc") else None)
# This sandbox lacks CAP_SYS_RESOURCE, so podman's default limits (nofile 1048576, nproc max), which
# runc would raise to, are refused; limits below ours need no privilege.
ULIMITS = ("--ulimit", "nofile=8192:8192", "--ulimit", "nproc=8192:8192")


def podman_missing() -> str | None:
    if PODMAN is None or RUNC is None:
        return "needs podman and runc (run scripts/bootstrap.sh)"
    return None


@dataclass
class Podman:
    """Real containers in a lab: see the module's docstring."""

    lab: Lab
    work: Path
    started: list[str] = field(default_factory=list)

    def base(self) -> list[str]:
        assert PODMAN is not None and RUNC is not None
        # --tmpdir too: podman's default (/run/libpod) would outlive the test.
        return [PODMAN, "--root", str(self.work / "root"), "--runroot", str(self.work / "run"),
                "--tmpdir", str(self.work / "tmp"), "--cgroup-manager",
                "cgroupfs", "--events-backend", "none", "--runtime", RUNC, "--log-level", "error"]

    def pod_parent(self, pod_uid: str = POD_UID, qos: str = "besteffort") -> str:
        """The kubelet's cgroupfs layout for a pod, inside the lab's subtree (the agent's scope)."""
        unified = find_cgroup2()
        assert unified is not None
        return "/" + str((self.lab.root / "kubepods" / qos / f"pod{pod_uid}").relative_to(unified))

    def argv(self, *cmd: str, netns: str | None = None, pod_uid: str = POD_UID, volumes: tuple[str, ...] = (),
             detach: bool = False, name: str | None = None) -> list[str]:
        name = name or f"ww-{self.lab.tag}-{len(self.started)}"
        self.started.append(name)
        return [*self.base(), "run", "--rm", "--name", name, "--cidfile", str(self.work / f"{name}.cid"),
                *(["-d"] if detach else []), *ULIMITS,
                "--network", f"ns:/run/netns/{netns or self.lab.ctr}", "--cgroup-parent", self.pod_parent(pod_uid),
                "--workdir", str(REPO), "-e", f"PYTHONPATH={REPO}",
                *[a for v in volumes for a in ("-v", v)], "--rootfs", "/:O", *cmd]

    def run(self, *cmd: str, check: bool = True, **kw: Any) -> subprocess.CompletedProcess[str]:
        res = subprocess.run(self.argv(*cmd, **kw), capture_output=True, text=True, timeout=300,
                             env={**os.environ, "LANG": "C"})
        if check:
            assert res.returncode == 0, f"podman run {cmd}: {res.returncode} {res.stderr[-2000:]}"
        return res

    def start(self, *cmd: str, **kw: Any) -> str:
        """A detached container; returns its full id."""
        res = subprocess.run(self.argv(*cmd, detach=True, **kw), capture_output=True, text=True, timeout=120,
                             env={**os.environ, "LANG": "C"})
        assert res.returncode == 0, res.stderr[-2000:]
        return res.stdout.strip().splitlines()[-1]

    def last_id(self) -> str:
        """The id of the container started last (from its --cidfile: it outlives a --rm container)."""
        return (self.work / f"{self.started[-1]}.cid").read_text().strip()

    def close(self) -> None:
        subprocess.run([*self.base(), "rm", "-f", "-a", "-t", "0"], capture_output=True, timeout=120)
        for line in reversed(Path("/proc/self/mounts").read_text().splitlines()):
            target = line.split()[1]
            if target.startswith(str(self.work)):
                subprocess.run(["umount", "-l", target], capture_output=True)
        shutil.rmtree(self.work, ignore_errors=True)
        # runc made the pods' cgroups in every v1 controller too (conmon's beside them): the lab
        # removes its unified subtree, this the rest.
        unified = find_cgroup2()
        rel = self.lab.root.relative_to(unified) if unified else None
        for controller in Path("/sys/fs/cgroup").iterdir():
            if rel is not None and controller != Path(str(unified)) and (controller / rel).is_dir():
                _remove_cgroup_tree(controller / rel)


def podman_fixture(lab: Lab, work: Path) -> Generator[Podman, None, None]:
    missing = podman_missing()
    if missing:
        if os.environ.get("WEIGHTWARDEN_REQUIRE_PRIVILEGED") == "1":
            raise AssertionError(f"WEIGHTWARDEN_REQUIRE_PRIVILEGED=1 but {missing}")
        import pytest

        pytest.skip(missing)
    podman = Podman(lab, work)
    try:
        yield podman
    finally:
        podman.close()


def require_loader() -> None:
    """The lab's tests run on the eBPF path: a loader that was not built is a failed set-up, never a skip."""
    if not loader_path().exists():
        pytest.fail(f"the eBPF loader is not built ({loader_path()}): run scripts/bootstrap.sh")


def lab_fixture() -> Iterator[Lab]:
    require_loader()
    lab = make_lab()
    try:
        yield lab
    finally:
        lab.teardown()
