"""Run ``weightwarden-agent top --json`` inside a namespace and collect its samples."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections import defaultdict
from pathlib import Path
from typing import Any

from tests.helpers.netns import NetnsPair, wait_for

REPO = Path(__file__).resolve().parents[2]


class TopRun:
    def __init__(self, pair: NetnsPair, *args: str) -> None:
        self.proc = pair.popen(
            # The fallback path: it measures namespace ``a`` alone. eBPF attribution would watch the whole
            # cgroup hierarchy of this machine; its tests (test_containers_netns.py) give it a cgroup of their own.
            pair.a, sys.executable, "-m", "weightwarden.agent", "top", "--json", "--attribution", "nfqueue", *args,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=str(REPO),
        )
        self.stderr: list[str] = []
        self._reader = threading.Thread(target=self._read_stderr, daemon=True)
        self._reader.start()

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr.append(line.decode(errors="replace"))

    def wait_ready(self, timeout: float = 15) -> None:
        # The nfqueue notice is the last thing said at start.
        ok = wait_for(lambda: any('"nfqueue"' in line for line in self.stderr) or self.proc.poll() is not None,
                      timeout)
        assert ok and self.proc.poll() is None, "agent did not start: " + "".join(self.stderr)

    def stop(self, timeout: float = 15) -> list[dict[str, Any]]:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        out, _ = self.proc.communicate(timeout=timeout)
        self._reader.join(timeout=2)
        assert self.proc.returncode == 0, "".join(self.stderr)
        return [json.loads(line) for line in out.decode().splitlines() if line.strip()]


def per_pid(samples: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    """Total tx_bytes per pid over all samples, with the last seen identity."""
    out: dict[int, dict[str, Any]] = defaultdict(lambda: {"tx_bytes": 0})
    for sample in samples:
        for proc in sample["processes"]:
            entry = out[proc["pid"]]
            entry["tx_bytes"] += proc["tx_bytes"]
            entry.update({k: proc[k] for k in ("name", "exe", "uid")})
    return dict(out)


def interface_total(samples: list[dict[str, Any]]) -> int:
    return sum(i["tx_bytes"] for s in samples for i in s["interfaces"])


def collect(proc: subprocess.Popen[bytes], events: list[dict[str, Any]], stderr: list[str]) -> list[threading.Thread]:
    """Gather an agent's events (JSON lines on stdout) and its stderr as they come, on two threads."""

    def read(stream: Any, into_events: bool) -> None:
        for line in stream:
            text = line.decode(errors="replace")
            if into_events:
                events.append(json.loads(text))
            else:
                stderr.append(text)

    threads = [threading.Thread(target=read, args=(proc.stdout, True), daemon=True),
               threading.Thread(target=read, args=(proc.stderr, False), daemon=True)]
    for t in threads:
        t.start()
    return threads


class DaemonRun:
    """``weightwarden-agent run --sink stdout`` in namespace ``a``, its events collected live."""

    def __init__(self, pair: NetnsPair, policy: Path, state_dir: Path, *args: str,
                 wrapper: tuple[str, ...] = (), env: dict[str, str] | None = None,
                 allow_degraded: bool = False) -> None:
        """``wrapper``: argv the agent runs under (e.g. tests.helpers.sandbox for a unit's sandbox);
        ``env``: extra environment (NOTIFY_SOCKET, WATCHDOG_USEC...). An agent asked for eBPF must run on a
        whole eBPF sensor (a test fails if it fell back, or a program was left out), unless ``allow_degraded``."""
        self.pair = pair
        self.expect_ebpf = any(a == "--attribution" and b == "ebpf" for a, b in zip(args, args[1:], strict=False))
        self.allow_degraded = allow_degraded
        self.proc = pair.popen(
            pair.a, *wrapper, sys.executable, "-m", "weightwarden.agent", "run", "--policy", str(policy),
            "--state-dir", str(state_dir), "--sink", "stdout", "--host-id", "test-host", "--attribution", "nfqueue", *args,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=str(REPO), env={**os.environ, **(env or {})},
        )
        self.events: list[dict[str, Any]] = []
        self.stderr: list[str] = []
        self._threads = collect(self.proc, self.events, self.stderr)

    def wait_event(self, type_: str, timeout: float = 20, after: int = 0, **match: Any) -> dict[str, Any]:
        def find() -> dict[str, Any] | None:
            for ev in self.events[after:]:
                if ev["type"] == type_ and all(ev["data"].get(k) == v for k, v in match.items()):
                    return ev
            return None

        ok = wait_for(lambda: find() is not None or self.proc.poll() is not None, timeout)
        found = find()
        assert ok and found is not None, f"no {type_} event; stderr: {''.join(self.stderr[-20:])}"
        self.check_sensor()
        return found

    def check_sensor(self) -> None:
        """An agent asked for eBPF that runs on the fallback, or without one of its programs, fails the test
        (never a silent pass on a kernel that refused part of the object)."""
        if not self.expect_ebpf or self.allow_degraded:
            return
        for ev in self.events:
            if ev["type"] == "agent_started":
                sensor = ev["data"].get("sensor") or {}
                assert sensor.get("path") == "ebpf" and not sensor.get("degraded"), \
                    f"the eBPF sensor is not whole: {sensor}"

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=10)

    def stop(self, timeout: float = 20) -> int:
        self.check_sensor()
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=timeout)
        for t in self._threads:
            t.join(timeout=2)
        return code
