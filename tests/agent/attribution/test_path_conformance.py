"""Every registered attribution path keeps the same promises (tests/helpers/path_conformance.py), each
where it can run: eBPF on a cgroup of its own, NFQUEUE in a namespace of its own. A path registered
without a place to run here fails this test: adding a path means adding it below."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable

import pytest

from tests.helpers.containers import REPO, make_lab
from tests.helpers.netns import make_pair
from weightwarden.agent.attribution import paths
from weightwarden.agent.attribution.dns import NameCache
from weightwarden.agent.attribution.paths import AttributionPath, PathContext, PathUnavailable
from weightwarden.agent.kernel.procmap import ProcessTable

PORT = 8102


def _sink(popen: Callable[..., subprocess.Popen[bytes]], ns: str, addr: str) -> None:
    proc = popen(ns, sys.executable, "-m", "tests.helpers.sink", addr, str(PORT), str(PORT + 1),
                 stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"


def _run_ebpf() -> subprocess.CompletedProcess[str]:
    lab = make_lab()
    try:
        _sink(lab.popen, lab.out, lab.out_addr)
        return subprocess.run(["nsenter", f"--net=/run/netns/{lab.host}", sys.executable, "-m",
                               "tests.helpers.path_conformance", "ebpf", lab.out_addr, str(PORT), "--bpf-cgroup",
                               str(lab.root), "--send-cgroup", str(lab.root / "system.slice" / "conf.service")],
                              capture_output=True, text=True, timeout=120, cwd=str(REPO))
    finally:
        lab.teardown()


def _run_nfqueue() -> subprocess.CompletedProcess[str]:
    pair = make_pair()
    try:
        _sink(pair.popen, pair.b, pair.addr_b)
        return subprocess.run(["ip", "netns", "exec", pair.a, sys.executable, "-m", "tests.helpers.path_conformance",
                               "nfqueue", pair.addr_b, str(PORT)], capture_output=True, text=True, timeout=120,
                              cwd=str(REPO))
    finally:
        pair.teardown()


WHERE: dict[str, Callable[[], subprocess.CompletedProcess[str]]] = {"ebpf": _run_ebpf, "nfqueue": _run_nfqueue}


def test_every_registered_path_has_a_place_to_run_here() -> None:
    assert set(paths.names()) == set(WHERE)


def test_each_path_satisfies_the_interface_before_it_starts() -> None:
    ctx = PathContext(ProcessTable(), NameCache(), set, bpf_cgroup="/nonexistent")
    for name in paths.names():
        path = paths.create(name, ctx)
        try:
            assert isinstance(path, AttributionPath), name
        finally:
            path.close()
    with pytest.raises(ValueError, match="no attribution path 'carrier-pigeon'"):
        paths.create("carrier-pigeon", ctx)
    with pytest.raises(PathUnavailable, match="needs root"):
        paths.create("ebpf", PathContext(ProcessTable(), NameCache(), set, admin=False, bpf_cgroup="/x"))


@pytest.mark.privileged
@pytest.mark.parametrize("name", sorted(WHERE))
def test_each_path_keeps_the_promises(name: str) -> None:
    out = WHERE[name]()
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["ok"] and result["credited"] >= 1 << 20
