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

from weightwarden.agent.attribution.ebpf import wire
from weightwarden.agent.ebpf.process import LoaderProcess

ENV_LOADER = "WEIGHTWARDEN_BPF_LOADER"
ENV_REFUSE = "WEIGHTWARDEN_BPF_REFUSE"  # test hook: programs the verifier is made to refuse (comma-separated)
BUILT = Path(__file__).resolve().parent / "bpf" / "build" / "weightwarden-bpf"


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


class BpfLoader(LoaderProcess):
    what = "the eBPF loader"
    error = BpfError
    thread_name = "bpf-reader"

    def __init__(self, cgroup: str, binary: Path | None = None,
                 on_owner: Callable[[wire.Owner], None] | None = None,
                 on_dns: Callable[[bytes], object] | None = None,
                 on_tamper: Callable[[Tamper], None] | None = None,
                 pin_dir: str | None = None) -> None:
        super().__init__()
        self.cgroup = cgroup
        self.binary = binary or loader_path()
        self.on_owner = on_owner
        self.on_dns = on_dns
        self.on_tamper = on_tamper
        self.pin_dir = pin_dir
        self.ready: Ready = Ready({})
        self._drains: queue.Queue[Drain | None] = queue.Queue()
        self._pending = Drain()
        self._lock = threading.Lock()  # one command (a drain and its answer) at a time
        self._local_sent: frozenset[str] | None = None
        self._raw_sent: bytes | None = None

    def start(self, timeout: float = 20.0) -> Ready:
        argv = [str(self.binary)] + (["--pin", self.pin_dir] if self.pin_dir else []) + [self.cgroup]
        self.ready = Ready.parse(self._spawn(argv, _env(), timeout))
        return self.ready

    def _on_exit(self) -> None:
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
