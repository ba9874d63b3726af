"""Network namespace pairs for privileged tests.

Every pair lives in its own namespaces with a veth between them and addresses
from 198.18.0.0/15; everything made here is removed on teardown, even after a
failure. The root namespace's firewall, qdiscs and routes are never touched.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field

_counter = itertools.count(1)


def sh(*argv: str, check: bool = True, netns: str | None = None) -> subprocess.CompletedProcess[str]:
    if netns is not None:
        argv = ("ip", "netns", "exec", netns, *argv)
    return subprocess.run(list(argv), capture_output=True, text=True, check=check, env={**os.environ, "LANG": "C"})


@dataclass
class NetnsPair:
    """Namespace ``a`` (the host under test) and ``b`` (the outside world)."""

    a: str
    b: str
    addr_a: str
    addr_b: str
    veth_a: str
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def run(self, ns: str, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return sh(*argv, check=check, netns=ns)

    def popen(self, ns: str, *argv: str, **kw: object) -> subprocess.Popen[bytes]:
        proc: subprocess.Popen[bytes] = subprocess.Popen(["ip", "netns", "exec", ns, *argv], **kw)  # type: ignore[call-overload]
        self.procs.append(proc)
        return proc

    def teardown(self) -> None:
        stop_all(self.procs)
        for ns in (self.a, self.b):
            # Anything still running inside (servers, children) goes with the namespace.
            pids = sh("ip", "netns", "pids", ns, check=False).stdout.split()
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)
            sh("ip", "netns", "del", ns, check=False)


def make_pair() -> NetnsPair:
    n = next(_counter)
    tag = f"{os.getpid() % 100000}{n}"
    a, b = f"wwt-{tag}-a", f"wwt-{tag}-b"
    va, vb = f"wwa{tag}"[:15], f"wwb{tag}"[:15]
    # 198.18.9.0/24 is the caps tests' allowlisted subnet, added to a pair: never hand it out as a pair's own.
    subnet = n % 249 + 1
    if subnet >= 9:
        subnet += 1
    pair = NetnsPair(a, b, f"198.18.{subnet}.1", f"198.18.{subnet}.2", va)
    try:
        sh("ip", "netns", "add", a)
        sh("ip", "netns", "add", b)
        sh("ip", "link", "add", va, "netns", a, "type", "veth", "peer", "name", vb, "netns", b)
        for ns, dev, addr in ((a, va, pair.addr_a), (b, vb, pair.addr_b)):
            sh("ip", "addr", "add", f"{addr}/24", "dev", dev, netns=ns)
            sh("ip", "link", "set", dev, "up", netns=ns)
            sh("ip", "link", "set", "lo", "up", netns=ns)
    except Exception:
        pair.teardown()
        raise
    return pair


def wait_for(predicate: object, timeout: float = 10.0, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(interval)
    return False


def stop_all(procs: list[subprocess.Popen[bytes]]) -> None:
    """Kill what a test started and close its pipes (teardown: never raises for a process that hangs)."""
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
    for proc in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)
        for pipe in (proc.stdin, proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()
