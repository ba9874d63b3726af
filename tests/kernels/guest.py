"""One kernel's verdict on the sensor, measured from inside it (a VM of tests/kernels/run.py, or this host).

Standard library and the project's own wire decoder only: it runs in a VM whose root is a small initramfs.
Steps, each timed and each reported even when an earlier one failed:

1. ``ww-probe OBJECT``: every program loaded alone, accepted or refused with the verifier's own words;
2. ``weightwarden-bpf --probe``: the loader's own all-at-once check;
3. a real attach to a fresh cgroup (``weightwarden-bpf CGROUP``) and a smoke test from forked processes
   in that cgroup: a TCP upload, a DNS query answered by a resolver on 127.0.0.1:53, and a unix-socket
   relay. After one drain, each byte must be credited to the process that sent it (pid and name), the
   DNS answer must reach user space, and the relay must name its reader.

Prints one JSON object (``Verdict``) on stdout, or on ``--out``. Needs root, cgroup v2 and a network
namespace whose loopback is up (the VM's own; on a host, a fresh one: ``unshare --net``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import queue
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO

from weightwarden.agent.attribution.ebpf import wire

TCP_BYTES = 300_000
UNIX_FIRST, UNIX_SECOND = 1_000, 3_000
DNS_NAME = "smoke.ww.test"
DNS_ANSWER = bytes([198, 18, 0, 7])  # TEST-NET (RFC 2544): never routed, never contacted
LOG_KEEP = 8000  # characters of a refusal's log kept: the verifier says why at the end
STEP_SECONDS = 180.0  # per step; a VM without KVM is slow, a hung step still ends
WAIT_SECONDS = 30.0  # for a peer's bytes: a sender that died costs this, not a step


@dataclass
class Program:
    program: str
    section: str
    loaded: bool
    error: str
    log: str


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    expected: bool = True  # False: this kernel lacks what the check needs (said in detail); it cannot fail


@dataclass
class Verdict:
    kernel: str
    programs: list[Program] = field(default_factory=list)
    probe_tool: str = ""  # what went wrong running ww-probe itself, if anything
    file_programs: list[Program] = field(default_factory=list)  # the file-read sensor's object, each alone
    loader_probe_ok: bool = False
    loader_probe: str = ""  # the READY or ERROR text of `weightwarden-bpf --probe`
    attach_ok: bool = False
    attach: str = ""  # READY or ERROR text of the real attach
    checks: list[Check] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def smoke_ok(self) -> bool:
        return self.attach_ok and bool(self.checks) and all(c.ok or not c.expected for c in self.checks)


def run_probe_tool(tool: str, obj: str, v: Verdict, into: list[Program] | None = None) -> None:
    """Every program of ``obj`` loaded alone, into ``into`` (the attribution sensor's list by default)."""
    programs = v.programs if into is None else into
    try:
        done = subprocess.run([tool, obj], capture_output=True, text=True, timeout=STEP_SECONDS)
    except (OSError, subprocess.TimeoutExpired) as exc:
        v.probe_tool += f"{tool} {obj}: {exc}; "
        return
    for line in done.stdout.splitlines():
        raw = json.loads(line)
        programs.append(Program(str(raw["program"]), str(raw["section"]), bool(raw["loaded"]), str(raw["error"]),
                                str(raw["log"])[-LOG_KEEP:]))
    if done.returncode not in (0, 3) or not programs:
        v.probe_tool += f"{obj}: exit {done.returncode}: {done.stderr.strip()[-2000:]}; "


class Frames:
    """The loader's stdout, read by a thread into a queue so the loader never blocks on a full pipe."""

    def __init__(self, stream: IO[bytes]) -> None:
        self.q: queue.Queue[tuple[int, bytes] | None] = queue.Queue()
        self._stream = stream
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        while True:
            head = self._stream.read(wire.FRAME.size)
            if len(head) < wire.FRAME.size:
                self.q.put(None)
                return
            kind, length = wire.FRAME.unpack(head)
            body = self._stream.read(length)
            self.q.put((kind, body))

    def until(self, kinds: set[int], seconds: float) -> tuple[list[tuple[int, bytes]], tuple[int, bytes] | None]:
        """Frames up to and including the first of ``kinds`` (None: the loader ended or went quiet)."""
        seen: list[tuple[int, bytes]] = []
        deadline = time.monotonic() + seconds
        while True:
            try:
                item = self.q.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                return seen, None
            if item is None:
                return seen, None
            if item[0] in kinds:
                return seen, item
            seen.append(item)


def loader_probe(loader: str, v: Verdict) -> None:
    try:
        done = subprocess.run([loader, "--probe"], capture_output=True, timeout=STEP_SECONDS)
    except (OSError, subprocess.TimeoutExpired) as exc:
        v.loader_probe = str(exc)
        return
    texts = []
    out = done.stdout
    while len(out) >= wire.FRAME.size:
        _kind, length = wire.FRAME.unpack_from(out, 0)
        texts.append(out[wire.FRAME.size:wire.FRAME.size + length].decode("utf-8", "replace"))
        out = out[wire.FRAME.size + length:]
    v.loader_probe_ok = done.returncode == 0
    v.loader_probe = " ".join(texts) or f"exit {done.returncode}: {done.stderr.decode('utf-8', 'replace')[-2000:]}"


def find_cgroup2() -> Path:
    for line in Path("/proc/self/mounts").read_text().splitlines():
        parts = line.split()
        if len(parts) > 2 and parts[2] == "cgroup2":
            return Path(parts[1])
    raise RuntimeError("no cgroup v2 mount in /proc/self/mounts")


def own_cgroup() -> str:
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        if line.startswith("0::"):
            return line[3:]
    raise RuntimeError("not on cgroup v2 (no 0:: line in /proc/self/cgroup)")


def say(what: str) -> None:
    """Progress on stderr (a VM's console): where a guest that hangs stopped."""
    os.write(2, f"ww-guest: {what}\n".encode())


def set_comm(name: str) -> None:
    Path("/proc/self/comm").write_text(name)


def dns_query(qid: int) -> bytes:
    labels = b"".join(bytes([len(p)]) + p.encode() for p in DNS_NAME.split(".")) + b"\0"
    return struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0) + labels + struct.pack(">HH", 1, 1)


def dns_answer(query: bytes) -> bytes:
    qid = struct.unpack_from(">H", query, 0)[0]
    question = query[12:]
    record = struct.pack(">HHHIH", 0xC00C, 1, 1, 60, 4) + DNS_ANSWER
    return struct.pack(">HHHHHH", qid, 0x8180, 1, 1, 0, 0) + question + record


CHILDREN: list[int] = []


def child(work: Callable[[], None]) -> int:
    """Fork a process that runs ``work()`` and exits with its status (0: done)."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            work()
            code = 0
        except BaseException as exc:  # noqa: BLE001 - a forked sender reports any end, then exits
            say(f"pid {os.getpid()}: {type(exc).__name__}: {exc}")
        finally:
            os._exit(code)
    CHILDREN.append(pid)
    return pid


def reap() -> None:
    """Children still running after a failed step: killed, so their cgroup can go."""
    for pid in CHILDREN:
        try:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass
    CHILDREN.clear()


def smoke(loader: str, cgroup_root: Path, v: Verdict) -> None:
    scope = cgroup_root / f"ww-matrix-{os.getpid()}"
    scope.mkdir()
    home = own_cgroup()
    proc = subprocess.Popen([loader, str(scope)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL)
    assert proc.stdin is not None and proc.stdout is not None
    frames = Frames(proc.stdout)
    try:
        _, first = frames.until({wire.T_READY, wire.T_ERROR}, STEP_SECONDS)
        if first is None:
            v.attach = "the loader ended or said nothing"
            return
        v.attach = first[1].decode("utf-8", "replace")
        v.attach_ok = first[0] == wire.T_READY
        if not v.attach_ok:
            return
        (scope / "cgroup.procs").write_text(str(os.getpid()))
        say("attached; traffic")
        try:
            pids = exercise(v)
        finally:
            (cgroup_root / home.lstrip("/") / "cgroup.procs").write_text(str(os.getpid()))
        say("drain")
        proc.stdin.write(b"drain\n")
        proc.stdin.flush()
        seen, end = frames.until({wire.T_END}, STEP_SECONDS)
        if end is None:
            v.checks.append(Check("drain", False, "no END frame after drain"))
            return
        judge(v, pids, seen)
    finally:
        try:
            proc.stdin.write(b"quit\n")
            proc.stdin.close()
        except OSError:
            pass
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        reap()
        try:
            scope.rmdir()
        except OSError as exc:
            v.checks.append(Check("scope cgroup removed", False, str(exc)))


@dataclass
class Pids:
    tcp: int
    tcp_port: int
    dns: int
    unix: int
    me: int


def exercise(v: Verdict) -> Pids:
    """Three forked senders in the scope cgroup; this process serves them."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(WAIT_SECONDS)
    port = listener.getsockname()[1]
    resolver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    resolver.bind(("127.0.0.1", 53))
    resolver.settimeout(WAIT_SECONDS)
    mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)

    def upload() -> None:
        set_comm("ww-tcp")
        with socket.create_connection(("127.0.0.1", port), timeout=WAIT_SECONDS) as s:
            s.sendall(b"w" * TCP_BYTES)

    def lookup() -> None:
        set_comm("ww-dns")
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(WAIT_SECONDS)
            s.sendto(dns_query(0x5757), ("127.0.0.1", 53))
            if DNS_ANSWER not in s.recv(512):
                raise RuntimeError("no answer")

    def relay() -> None:
        set_comm("ww-unix")
        theirs.sendall(b"u" * UNIX_FIRST)
        theirs.recv(1)  # the reader has read: the kernel knows who reads this socket
        theirs.sendall(b"u" * UNIX_SECOND)

    pids = Pids(child(upload), port, child(lookup), child(relay), os.getpid())
    theirs.close()
    say(f"senders {pids}")
    conn, _ = listener.accept()
    conn.settimeout(WAIT_SECONDS)
    got = 0
    while chunk := conn.recv(65536):
        got += len(chunk)
    conn.close()
    say(f"tcp: {got} bytes")
    query, client = resolver.recvfrom(512)
    resolver.sendto(dns_answer(query), client)
    say("dns answered")
    mine.settimeout(WAIT_SECONDS)
    read = len(mine.recv(UNIX_FIRST, socket.MSG_WAITALL))
    mine.sendall(b"k")
    read += len(mine.recv(UNIX_SECOND, socket.MSG_WAITALL))
    for name, pid in (("tcp", pids.tcp), ("dns", pids.dns), ("unix", pids.unix)):
        _, status = os.waitpid(pid, 0)
        CHILDREN.remove(pid)
        v.checks.append(Check(f"{name} sender ran", os.waitstatus_to_exitcode(status) == 0, f"pid {pid}"))
    v.checks.append(Check("tcp server got it all", got == TCP_BYTES, f"{got} of {TCP_BYTES} bytes"))
    v.checks.append(Check("unix reader got it all", read == UNIX_FIRST + UNIX_SECOND, f"{read} bytes"))
    for s in (listener, resolver, mine):
        s.close()
    return pids


def judge(v: Verdict, pids: Pids, frames: list[tuple[int, bytes]]) -> None:
    flows = [f for kind, body in frames if kind == wire.T_FLOWS for f in wire.parse_flows(body)]
    relays = [u for kind, body in frames if kind == wire.T_UNIX for u in wire.parse_unix(body)]
    dns = [body for kind, body in frames if kind == wire.T_DNS]

    upload = [f for f in flows if f.proto == socket.IPPROTO_TCP and f.dport == pids.tcp_port]
    by = {(f.owner.tgid, f.owner.comm) for f in upload}
    total = sum(f.bytes for f in upload)
    v.checks.append(Check("tcp upload credited to its sender", by == {(pids.tcp, "ww-tcp")} and total == TCP_BYTES,
                          f"{total} bytes to port {pids.tcp_port} credited to {sorted(by)}; "
                          f"sent {TCP_BYTES} by pid {pids.tcp} (ww-tcp)"))

    query_len = len(dns_query(0))
    lookup = [f for f in flows if f.proto == socket.IPPROTO_UDP and f.dport == 53]
    by = {(f.owner.tgid, f.owner.comm) for f in lookup}
    total = sum(f.bytes for f in lookup)
    v.checks.append(Check("dns query credited to its sender", by == {(pids.dns, "ww-dns")} and total == query_len,
                          f"{total} bytes to port 53 credited to {sorted(by)}; sent {query_len} by pid {pids.dns} (ww-dns)"))
    qname = b"".join(bytes([len(p)]) + p.encode() for p in DNS_NAME.split("."))
    answered = [d for d in dns if qname in d and DNS_ANSWER in d]
    v.checks.append(Check("dns answer seen by the kernel", bool(answered), f"{len(dns)} DNS frames, {len(answered)} ours"))

    mine = [u for u in relays if u.owner.tgid == pids.unix]
    total = sum(u.bytes for u in mine)
    readers = {u.peer.tgid for u in mine}
    # Unix writes are seen by the sock_send_length tracepoint, their readers by sock_recv_length (6.x):
    # a kernel without them loses relays, as the loader says, and this check cannot hold there.
    loaded = {p.section for p in v.programs if p.loaded}
    need = {"tp_btf/sock_send_length", "tp_btf/sock_recv_length"}
    missing = sorted(need - loaded)
    v.checks.append(Check("unix relay credited and its reader named",
                          total == UNIX_FIRST + UNIX_SECOND and pids.me in readers,
                          f"{total} bytes from pid {pids.unix}, readers {sorted(readers)} (expected {pids.me})"
                          + (f"; not expected here: {', '.join(missing)} not loaded" if missing else ""),
                          expected=not missing))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--loader", required=True, help="weightwarden-bpf")
    ap.add_argument("--probe-tool", required=True, help="ww-probe (tests/kernels/probe.c)")
    ap.add_argument("--object", required=True, help="weightwarden.bpf.o")
    ap.add_argument("--files-object", help="files.bpf.o (the file-read sensor): each program loaded alone")
    ap.add_argument("--cgroup-root", type=Path, help="the cgroup v2 mount (default: found in /proc/self/mounts)")
    ap.add_argument("--out", help="write the verdict here instead of stdout (a VM's second serial port)")
    args = ap.parse_args()
    v = Verdict(kernel=platform.release())
    steps: list[tuple[str, Callable[[], None]]] = [
        ("programs", lambda: run_probe_tool(args.probe_tool, args.object, v)),
        ("file_programs", lambda: run_probe_tool(args.probe_tool, args.files_object, v, v.file_programs)
         if args.files_object else None),
        ("loader_probe", lambda: loader_probe(args.loader, v)),
        ("attach_and_smoke", lambda: smoke(args.loader, args.cgroup_root or find_cgroup2(), v)),
    ]
    for name, step in steps:
        say(name)
        began = time.monotonic()
        try:
            step()
        except Exception as exc:  # noqa: BLE001 - reported, and the next step still runs
            v.checks.append(Check(name, False, f"{type(exc).__name__}: {exc}"))
        v.seconds[name] = round(time.monotonic() - began, 2)
    text = json.dumps(asdict(v) | {"smoke_ok": v.smoke_ok}) + "\n"
    if args.out:
        with open(args.out, "w") as out:
            out.write(text)
    else:
        os.write(1, text.encode())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
