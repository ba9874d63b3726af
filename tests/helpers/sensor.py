"""For the kernel sensor's tests: a bpf filesystem of a test's own, an agent in the lab's host namespace,
processes in the lab's cgroup and the host's namespace, and a packet-socket sender.

Everything made here is removed, even after a failure: pins (the programs detach), the bpffs mount and
its directory.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.helpers.containers import Lab
from tests.helpers.netns import sh
from weightwarden.agent.attribution.ebpf.loader import unpin

HELPERS = Path(__file__).resolve().parent
_counter = itertools.count(1)


class HostNs:
    """What DaemonRun needs of a namespace pair, for the lab's host namespace. nsenter --net, not
    `ip netns exec`: the latter remounts /sys, hiding the cgroup hierarchy the eBPF path attaches to."""

    def __init__(self, lab: Lab) -> None:
        self.a = lab.host
        self.procs = lab.procs

    def popen(self, ns: str, *argv: str, **kw: Any) -> subprocess.Popen[bytes]:
        proc: subprocess.Popen[bytes] = subprocess.Popen(["nsenter", f"--net=/run/netns/{ns}", *argv], **kw)
        self.procs.append(proc)
        return proc


@contextmanager
def bpffs() -> Iterator[Path]:
    """A bpf filesystem of this test's own (a new instance per mount): pins made there never meet the
    host's or another test's. The pin directory the agent is given is ``<yielded>/ww``."""
    base = Path(tempfile.mkdtemp(prefix=f"ww-sensor-bpffs-{os.getpid()}-{next(_counter)}-"))
    sh("mount", "-t", "bpf", "bpf", str(base))
    try:
        yield base
    finally:
        unpin(str(base / "ww"))
        sh("umount", str(base), check=False)
        shutil.rmtree(base, ignore_errors=True)


def in_host(lab: Lab, cgroup: Path, *argv: str) -> list[str]:
    """argv that runs in ``cgroup`` (under the lab's scope) and in the lab's host network namespace, where the
    agent is: a process on the host itself, not in a container."""
    cgroup.mkdir(parents=True, exist_ok=True)
    return ["sh", "-c", f"echo $$ > {cgroup}/cgroup.procs && exec nsenter --net=/run/netns/{lab.host} "
            + " ".join(f"'{a}'" for a in argv)]


def uplink(lab: Lab) -> str:
    """The host namespace's veth towards the outside namespace."""
    return f"wh{lab.tag}o"[:15]


def link_counters(ns: str, dev: str) -> dict[str, int]:
    stats = json.loads(sh("ip", "-j", "-s", "link", "show", dev, netns=ns).stdout)[0]["stats64"]
    return {"tx_bytes": stats["tx"]["bytes"], "tx_packets": stats["tx"]["packets"], "rx_bytes": stats["rx"]["bytes"]}


def build_rawsend(into: Path, name: str = "rawsend") -> Path:
    cc = shutil.which("cc") or shutil.which("gcc")
    assert cc, "a C compiler is needed for the packet-socket sender (scripts/bootstrap.sh installs gcc)"
    out = into / name
    subprocess.run([cc, "-O2", "-Wall", "-o", str(out), str(HELPERS / "rawsend.c")], check=True, capture_output=True)
    return out


def cgroup_links(cgroup: Path) -> list[dict[str, Any]]:
    """The bpf links attached to ``cgroup`` (bpftool, as an intruder would list them)."""
    cg_id = os.stat(cgroup).st_ino
    links = json.loads(subprocess.run(["bpftool", "-j", "link", "show"], capture_output=True, text=True,
                                      check=True).stdout.strip() or "[]")
    return [link for link in links if link.get("cgroup_id") == cg_id]


def cgroup_programs(cgroup: Path) -> list[dict[str, Any]]:
    out = subprocess.run(["bpftool", "-j", "cgroup", "show", str(cgroup)], capture_output=True, text=True, check=False)
    return list(json.loads(out.stdout.strip() or "[]"))  # nothing attached: no JSON at all
