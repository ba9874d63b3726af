"""The eBPF loader process (weightwarden/agent/attribution/ebpf/bpf/loader.c) and the frames it sends.

One reader thread owns the loader's stdout: owner announcements, DNS answers
and tamper reports go to callbacks as they come (each must be quick: they hand
work on), drain replies are collected until their END frame and handed to
``drain()``. If the loader dies, ``drain()`` raises ``BpfError`` and the path
starts another; without pins the kernel has already detached its programs,
with pins (``pin_dir``) they kept counting and the new loader takes them over.
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
from typing import IO

from weightwarden.agent.attribution.ebpf import wire

ENV_LOADER = "WEIGHTWARDEN_BPF_LOADER"
ENV_REFUSE = "WEIGHTWARDEN_BPF_REFUSE"  # test hook: programs the verifier is made to refuse (comma-separated)
BUILT = Path(__file__).resolve().parent / "bpf" / "build" / "weightwarden-bpf"
MAX_FRAME = 64 << 20


class BpfError(Exception):
    """The loader could not start, or stopped answering."""


def loader_path() -> Path:
    return Path(os.environ.get(ENV_LOADER) or BUILT)


def _env() -> dict[str, str]:
    env = {"LANG": "C"}
    if os.environ.get(ENV_REFUSE):
        env[ENV_REFUSE] = os.environ[ENV_REFUSE]
    return env


@dataclass(frozen=True)
class ProgramState:
    on: bool
    reason: str | None = None


@dataclass(frozen=True)
class PinState:
    on: bool
    dir: str | None = None
    reused: bool = False  # a previous loader's maps and links were taken over
    reason: str | None = None  # why pinning is off although it was asked for


@dataclass(frozen=True)
class Ready:
    """What the loader loaded and attached (its READY frame)."""

    programs: dict[str, ProgramState]
    pin: PinState = PinState(False)
    notes: tuple[str, ...] = ()
    cgroup: str | None = None
    epoch: int = 0

    @staticmethod
    def parse(text: str) -> Ready:
        try:
            doc = json.loads(text)
        except ValueError:
            return Ready({}, notes=(text[:500],))
        if not isinstance(doc, dict):
            return Ready({}, notes=(text[:500],))
        progs = {str(k): ProgramState(bool(v.get("on")), v.get("reason")) for k, v in (doc.get("programs") or {}).items()
                 if isinstance(v, dict)}
        raw_pin = doc.get("pin")
        pin: dict[str, object] = raw_pin if isinstance(raw_pin, dict) else {}
        notes = tuple(str(n) for n in doc.get("notes") or [] if n)
        pin_dir, pin_reason = pin.get("dir"), pin.get("reason")
        return Ready(progs, PinState(bool(pin.get("on")), pin_dir if isinstance(pin_dir, str) else None,
                                     bool(pin.get("reused")), pin_reason if isinstance(pin_reason, str) else None),
                     notes, doc.get("cgroup"), int(doc.get("epoch") or 0))


@dataclass(frozen=True)
class Change:
    kind: str
    name: str
    detail: str


@dataclass(frozen=True)
class Tamper:
    """A TAMPER frame: what someone changed, whether everything was put back, and when (monotonic ns)."""

    changes: tuple[Change, ...]
    reattached: bool
    detected_ns: int
    ok_ns: int  # the last check that found nothing (0: unknown)

    @staticmethod
    def parse(text: str) -> Tamper | None:
        try:
            doc = json.loads(text)
            changes = tuple(Change(str(c["kind"]), str(c["name"]), str(c.get("detail") or ""))
                            for c in doc.get("changes") or [])
            return Tamper(changes, bool(doc.get("reattached")), int(doc.get("detected_ns") or 0),
                          int(doc.get("ok_ns") or 0))
        except (ValueError, KeyError, TypeError, AttributeError):
            return None


@dataclass
class Drain:
    """What the kernel counted since the previous drain."""

    flows: list[wire.Flow] = field(default_factory=list)
    unix: list[wire.UnixSend] = field(default_factory=list)
    raw: list[wire.RawSend] = field(default_factory=list)
    lost: wire.Lost = field(default_factory=wire.Lost)
    totals: wire.Totals = field(default_factory=wire.Totals)
    flip_ns: int = 0  # CLOCK_MONOTONIC of the generation flip: the interval's end


LOCAL_LINE_MAX = 65_000  # the loader's command line holds 65,536 bytes


def local_command(local: set[str]) -> bytes:
    """The loader's "local" line; "local -" (merge nothing) when the addresses do not fit."""
    line = ("local " + " ".join(sorted(local)) + "\n").encode("ascii", "replace")
    return line if len(line) <= LOCAL_LINE_MAX else b"local -\n"


def raw_command(kill: bool, allowed: list[tuple[int, int]]) -> bytes:
    """The loader's "raw" line: the raw_sockets action and the allowlisted executables (kernel dev, inode)."""
    keys = " ".join(f"{dev}:{ino}" for dev, ino in sorted(set(allowed))[:1000])
    return f"raw {'kill' if kill else 'alert'} {keys}".rstrip().encode() + b"\n"


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
                 on_dns: Callable[[bytes], object] | None = None,
                 on_tamper: Callable[[Tamper], None] | None = None,
                 pin_dir: str | None = None) -> None:
        self.cgroup = cgroup
        self.binary = binary or loader_path()
        self.on_owner = on_owner
        self.on_dns = on_dns
        self.on_tamper = on_tamper
        self.pin_dir = pin_dir
        self.ready: Ready = Ready({})
        self._proc: subprocess.Popen[bytes] | None = None
        self._reader: threading.Thread | None = None
        self._drains: queue.Queue[Drain | None] = queue.Queue()
        self._pending = Drain()
        self._ready: queue.Queue[tuple[int, bytes]] = queue.Queue()
        self._lock = threading.Lock()  # one command (a drain and its answer) at a time
        self._local_sent: frozenset[str] | None = None
        self._raw_sent: bytes | None = None

    # -- lifecycle ---------------------------------------------------------

    def start(self, timeout: float = 20.0) -> Ready:
        if not self.binary.is_file() or not os.access(self.binary, os.X_OK):
            raise BpfError(f"the eBPF loader is not built ({self.binary}); scripts/bootstrap.sh builds it")
        argv = [str(self.binary)] + (["--pin", self.pin_dir] if self.pin_dir else []) + [self.cgroup]
        try:
            self._proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                          env=_env())
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
        self.ready = Ready.parse(text)
        return self.ready

    def close(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        try:
            if proc.stdin is not None:
                proc.stdin.close()  # EOF: the loader lets go of its links (pinned ones stay) and exits
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

    @property
    def returncode(self) -> int | None:
        """The loader's exit status once it has ended (negative: killed by that signal)."""
        return self._proc.poll() if self._proc is not None else None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

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
        elif kind == wire.T_RAW:
            self._pending.raw.extend(wire.parse_raw(payload))
        elif kind == wire.T_LOST:
            self._pending.lost = wire.parse_lost(payload)
        elif kind == wire.T_TOTALS:
            self._pending.totals = wire.parse_totals(payload)
        elif kind == wire.T_END:
            self._pending.flip_ns = int.from_bytes(payload[:8], "little")
            done, self._pending = self._pending, Drain()
            self._drains.put(done)
        elif kind == wire.T_TAMPER:
            tamper = Tamper.parse(payload.decode("utf-8", "replace"))
            if tamper is not None and self.on_tamper is not None:
                self.on_tamper(tamper)
        elif kind in (wire.T_READY, wire.T_ERROR):
            self._ready.put((kind, payload))

    def _send(self, line: bytes) -> None:
        proc = self._proc
        if proc is None or proc.stdin is None or proc.poll() is not None:
            raise BpfError("the eBPF loader is not running")
        try:
            proc.stdin.write(line)
            proc.stdin.flush()
        except OSError as exc:
            raise BpfError(f"the eBPF loader stopped listening ({exc.strerror})") from None

    def set_raw_policy(self, kill: bool, allowed: list[tuple[int, int]]) -> None:
        """What happens to packet-socket senders whose executable (kernel dev, inode) is not allowed."""
        line = raw_command(kill, allowed)
        with self._lock:
            if line != self._raw_sent:
                self._send(line)
                self._raw_sent = line

    def drain(self, local: set[str] | None = None, timeout: float = 10.0) -> Drain:
        """What the kernel counted since the last drain. ``local``: this host's own addresses; given,
        each process's sockets to one remote destination arrive as one record (merged in the kernel
        and the loader), and sockets to this host stay one record each."""
        with self._lock:
            if local is not None and frozenset(local) != self._local_sent:
                self._send(local_command(local))
                self._local_sent = frozenset(local)
            self._send(b"drain\n")
            try:
                got = self._drains.get(timeout=timeout)
            except queue.Empty:
                raise BpfError(f"the eBPF loader did not answer a drain within {timeout:.0f} s") from None
            if got is None:
                raise BpfError("the eBPF loader exited")
            return got


@dataclass(frozen=True)
class Probe:
    """Which programs this kernel accepts (loaded only, nothing attached); ``error``: the essential ones
    cannot load, with the kernel's reason."""

    programs: dict[str, ProgramState]
    error: str | None = None


def probe_programs(binary: Path | None = None, timeout: float = 20.0) -> Probe:
    path = binary or loader_path()
    if not path.is_file():
        return Probe({}, f"the eBPF loader is not built ({path}); scripts/bootstrap.sh builds it")
    try:
        res = subprocess.run([str(path), "--probe"], capture_output=True, timeout=timeout, check=False, env=_env())
    except (OSError, subprocess.TimeoutExpired) as exc:
        return Probe({}, f"cannot run the eBPF loader: {exc}")
    body = res.stdout[wire.FRAME.size:] if len(res.stdout) > wire.FRAME.size else res.stderr
    text = body.decode("utf-8", "replace").strip()
    if res.returncode != 0:
        return Probe({}, text or f"the eBPF loader failed (exit {res.returncode})")
    return Probe(Ready.parse(text).programs)


def probe(binary: Path | None = None, timeout: float = 20.0) -> str | None:
    """None if this kernel runs our programs; otherwise the reason it does not (load only, nothing attached)."""
    return probe_programs(binary, timeout).error


def unpin(pin_dir: str, binary: Path | None = None, timeout: float = 30.0) -> tuple[bool, str]:
    """Remove what a loader pinned in ``pin_dir`` (its programs detach): (done, what happened)."""
    path = binary or loader_path()
    if not path.is_file():
        return False, f"the eBPF loader is not built ({path})"
    try:
        res = subprocess.run([str(path), "--unpin", pin_dir], capture_output=True, timeout=timeout, check=False,
                             env={"LANG": "C"})
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, f"cannot run the eBPF loader: {exc}"
    text = (res.stdout if res.returncode == 0 else res.stderr).decode("utf-8", "replace").strip()
    return res.returncode == 0, text
