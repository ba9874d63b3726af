"""The eBPF loader process (weightwarden/agent/attribution/ebpf/bpf/loader.c) and the frames it sends.

One reader thread owns the loader's stdout: owner announcements and DNS
answers go to callbacks as they come (each must be quick: they hand work on),
drain replies are collected until their END frame and handed to ``drain()``.
If the loader dies, ``drain()`` raises ``BpfError`` and the sampler says so;
the kernel has already detached its programs.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from weightwarden.agent.attribution.ebpf import wire

ENV_LOADER = "WEIGHTWARDEN_BPF_LOADER"
BUILT = Path(__file__).resolve().parent / "bpf" / "build" / "weightwarden-bpf"
MAX_FRAME = 64 << 20


class BpfError(Exception):
    """The loader could not start, or stopped answering."""


def loader_path() -> Path:
    return Path(os.environ.get(ENV_LOADER) or BUILT)


@dataclass
class Drain:
    """What the kernel counted since the previous drain."""

    flows: list[wire.Flow] = field(default_factory=list)
    unix: list[wire.UnixSend] = field(default_factory=list)
    lost: wire.Lost = field(default_factory=wire.Lost)
    flip_ns: int = 0  # CLOCK_MONOTONIC of the generation flip: the interval's end


LOCAL_LINE_MAX = 65_000  # the loader's command line holds 65,536 bytes


def local_command(local: set[str]) -> bytes:
    """The loader's "local" line; "local -" (merge nothing) when the addresses do not fit."""
    line = ("local " + " ".join(sorted(local)) + "\n").encode("ascii", "replace")
    return line if len(line) <= LOCAL_LINE_MAX else b"local -\n"


def _read_exact(stream: IO[bytes], n: int) -> bytes | None:
    buf = b""
    while len(buf) < n:
        chunk = stream.read(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return buf


class BpfLoader:
    def __init__(self, cgroup: str, binary: Path | None = None,
                 on_owner: Callable[[wire.Owner], None] | None = None,
                 on_dns: Callable[[bytes], object] | None = None) -> None:
        self.cgroup = cgroup
        self.binary = binary or loader_path()
        self.on_owner = on_owner
        self.on_dns = on_dns
        self.info: dict[str, Any] = {}
        self._proc: subprocess.Popen[bytes] | None = None
        self._reader: threading.Thread | None = None
        self._drains: queue.Queue[Drain | None] = queue.Queue()
        self._pending = Drain()
        self._ready: queue.Queue[tuple[int, bytes]] = queue.Queue()
        self._lock = threading.Lock()  # one drain at a time
        self._local_sent: frozenset[str] | None = None

    # -- lifecycle ---------------------------------------------------------

    def start(self, timeout: float = 20.0) -> dict[str, Any]:
        if not self.binary.is_file() or not os.access(self.binary, os.X_OK):
            raise BpfError(f"the eBPF loader is not built ({self.binary}); scripts/bootstrap.sh builds it")
        try:
            self._proc = subprocess.Popen([str(self.binary), self.cgroup], stdin=subprocess.PIPE,
                                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={"LANG": "C"})
        except OSError as exc:
            raise BpfError(f"cannot run {self.binary}: {exc.strerror}") from None
        self._reader = threading.Thread(target=self._read, name="bpf-reader", daemon=True)
        self._reader.start()
        try:
            kind, payload = self._ready.get(timeout=timeout)
        except queue.Empty:
            self.close()
            raise BpfError(f"the eBPF loader did not answer within {timeout:.0f} s") from None
        text = payload.decode("utf-8", "replace").strip()
        if kind != wire.T_READY:
            self.close()
            raise BpfError(text or "the eBPF loader exited before it was ready")
        try:
            self.info = json.loads(text)
        except ValueError:
            self.info = {"raw": text}
        return self.info

    def close(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        try:
            if proc.stdin is not None:
                proc.stdin.close()  # EOF: the loader detaches and exits
        except OSError:
            pass
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
        if self._reader is not None:
            self._reader.join(timeout=2)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    # -- frames --------------------------------------------------------------

    def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        out = self._proc.stdout
        try:
            while True:
                head = _read_exact(out, wire.FRAME.size)
                if head is None:
                    break
                kind, length = wire.FRAME.unpack(head)
                if length > MAX_FRAME:
                    break  # not our loader talking: stop listening
                payload = _read_exact(out, length) if length else b""
                if payload is None:
                    break
                self._dispatch(kind, payload)
        finally:
            self._ready.put((wire.T_ERROR, b"the eBPF loader exited"))
            self._drains.put(None)

    def _dispatch(self, kind: int, payload: bytes) -> None:
        if kind == wire.T_OWNER:
            owner = wire.parse_owner(payload)
            if owner is not None and self.on_owner is not None:
                self.on_owner(owner)
        elif kind == wire.T_DNS:
            if self.on_dns is not None:
                self.on_dns(payload)
        elif kind == wire.T_FLOWS:
            self._pending.flows.extend(wire.parse_flows(payload))
        elif kind == wire.T_UNIX:
            self._pending.unix.extend(wire.parse_unix(payload))
        elif kind == wire.T_LOST:
            self._pending.lost = wire.parse_lost(payload)
        elif kind == wire.T_END:
            self._pending.flip_ns = int.from_bytes(payload[:8], "little")
            done, self._pending = self._pending, Drain()
            self._drains.put(done)
        elif kind in (wire.T_READY, wire.T_ERROR):
            self._ready.put((kind, payload))

    def drain(self, local: set[str] | None = None, timeout: float = 10.0) -> Drain:
        """What the kernel counted since the last drain. ``local``: this host's own addresses; given,
        each process's sockets to one remote destination arrive as one record (merged in the kernel
        and the loader), and sockets to this host stay one record each."""
        with self._lock:
            proc = self._proc
            if proc is None or proc.stdin is None or proc.poll() is not None:
                raise BpfError("the eBPF loader is not running")
            try:
                if local is not None and frozenset(local) != self._local_sent:
                    proc.stdin.write(local_command(local))
                    self._local_sent = frozenset(local)
                proc.stdin.write(b"drain\n")
                proc.stdin.flush()
            except OSError as exc:
                raise BpfError(f"the eBPF loader stopped listening ({exc.strerror})") from None
            try:
                got = self._drains.get(timeout=timeout)
            except queue.Empty:
                raise BpfError(f"the eBPF loader did not answer a drain within {timeout:.0f} s") from None
            if got is None:
                raise BpfError("the eBPF loader exited")
            return got


def probe(binary: Path | None = None, timeout: float = 20.0) -> str | None:
    """None if this kernel runs our programs; otherwise the reason it does not (load only, nothing attached)."""
    path = binary or loader_path()
    if not path.is_file():
        return f"the eBPF loader is not built ({path}); scripts/bootstrap.sh builds it"
    try:
        res = subprocess.run([str(path), "--probe"], capture_output=True, timeout=timeout, check=False,
                             env={"LANG": "C"})
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"cannot run the eBPF loader: {exc}"
    if res.returncode == 0:
        return None
    body = res.stdout[wire.FRAME.size:] if len(res.stdout) > wire.FRAME.size else res.stderr
    return body.decode("utf-8", "replace").strip() or f"the eBPF loader failed (exit {res.returncode})"
