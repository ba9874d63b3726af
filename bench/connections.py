#!/usr/bin/env python3
"""Connection rate and connect latency with no agent and with the agent on each attribution path.

In one run, for each mode (no agent; eBPF attribution; NFQUEUE attribution), in fresh
namespaces (clients in the agent's namespace and in a cgroup of their own, the server
in an "outside" namespace):

- sequential: one process opens --seq connections one after another, each sending 1 KiB;
- burst: 8 processes open --burst connections in total, as fast as they can;
- flood: the sequential run again while 20,000 DNS answers a second arrive (UDP from
  port 53) at a socket in the watched cgroup, all different (answers seen before are not parsed
  again, so a repeated answer would cost nothing).

Printed per mode and run: connections/s, connect() latency p50/p99 (µs), the share of the
clients' bytes the agent credited to the right processes, the agent's CPU, and the
largest gap between two samples (a stalled agent shows here). Floors (issue 11): >= 90% of
the no-agent rate, < 20 µs added to p50, >= 99% of bytes attributed, no stall.

Run as root: python bench/connections.py [--seq 20000] [--burst 20000] [--rounds 5] [--kinds sequential,burst]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.helpers.containers import Lab, make_lab  # noqa: E402
from tests.helpers.netns import sh  # noqa: E402

PORT = 7000
PAYLOAD = 1024

SERVER = r"""
import os, selectors, socket, sys
port = int(sys.argv[2])
for _ in range(1):
    if os.fork() == 0:
        break
srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
srv.bind((sys.argv[1], port)); srv.listen(4096); srv.setblocking(False)
sel = selectors.DefaultSelector(); sel.register(srv, selectors.EVENT_READ)
print("ready", flush=True)
while True:
    for key, _ in sel.select():
        s = key.fileobj
        if s is srv:
            while True:
                try:
                    c, _ = srv.accept()
                except BlockingIOError:
                    break
                c.setblocking(False); sel.register(c, selectors.EVENT_READ)
        else:
            try:
                data = s.recv(65536)
            except OSError:
                data = b""
            if not data:
                sel.unregister(s); s.close()
"""

CLIENT = r"""
import json, os, socket, sys, time
addr, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
payload = b"c" * 1024
lat = []
t0 = time.perf_counter()
for _ in range(n):
    s = socket.socket()
    a = time.perf_counter()
    s.connect((addr, port))
    lat.append(time.perf_counter() - a)
    s.sendall(payload)
    s.close()
wall = time.perf_counter() - t0
print(json.dumps({"pid": os.getpid(), "n": n, "wall": wall, "lat": lat}), flush=True)
"""

FLOOD = r"""
import socket, struct, sys, time
import dns.message, dns.rrset
dst, port, rate, seconds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
# Distinct answers (more than the agent remembers), so every one that gets through is parsed: the worst case.
bodies = []
for i in range(6000):
    q = dns.message.make_query(f"f{i}.flood.example", "A"); r = dns.message.make_response(q)
    r.answer.append(dns.rrset.from_text(f"f{i}.flood.example.", 60, "IN", "A", f"198.19.{i // 250}.{i % 250 + 1}"))
    bodies.append(r.to_wire())
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind((sys.argv[5], 53))
print("ready", flush=True)
sent = 0; t0 = time.perf_counter()
while time.perf_counter() - t0 < seconds:
    target = int((time.perf_counter() - t0) * rate)
    while sent < target:
        s.sendto(bodies[sent % len(bodies)], (dst, port)); sent += 1
    time.sleep(0.001)
print(sent, flush=True)
"""

SINK = r"""
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
s.bind(("0.0.0.0", int(sys.argv[1]))); print("ready", flush=True)
while True:
    s.recv(2048)
"""


@dataclass
class Result:
    rate: float
    p50_us: float
    p99_us: float
    share: float | None
    cpu: float | None
    max_gap: float | None


def median(results: list[Result]) -> Result:
    def mid(values: list[float | None]) -> float | None:
        known = sorted(v for v in values if v is not None)
        return known[len(known) // 2] if known else None

    fields = {name: mid([getattr(r, name) for r in results]) for name in Result.__dataclass_fields__}
    return Result(**fields)  # type: ignore[arg-type]


def median_of(values: list[float]) -> float | None:
    ordered = sorted(values)
    return ordered[len(ordered) // 2] if ordered else None


def _cpu(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_cpu(pid: int) -> float:
    """CPU seconds of the agent and its children (the eBPF loader merges and drains)."""
    import psutil

    try:
        children = [c.pid for c in psutil.Process(pid).children(recursive=True)]
    except psutil.Error:
        children = []
    return _cpu(pid) + sum(_cpu(c) for c in children)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def host_cmd(lab: Lab, *argv: str) -> list[str]:
    """Run in the host namespace (where the agent is), inside the lab's watched cgroup."""
    return ["sh", "-c", f"echo $$ > {lab.pod_cgroup}/cgroup.procs && exec nsenter --net=/run/netns/{lab.host} "
            + " ".join(f"'{a}'" for a in argv)]


def start_agent(lab: Lab, mode: str) -> subprocess.Popen[bytes] | None:
    if mode == "none":
        return None
    extra = ["--bpf-cgroup", str(lab.root), "--attribution", "ebpf"] if mode == "ebpf" else ["--attribution", "nfqueue"]
    agent = subprocess.Popen(["nsenter", f"--net=/run/netns/{lab.host}", sys.executable, "-m", "weightwarden.agent",
                              "top", "--json", "--interval", "1", *extra],
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=str(REPO))
    lab.procs.append(agent)
    time.sleep(3.0)  # imports, program load, rule install: start-up is not what we measure
    assert agent.poll() is None, f"agent ({mode}) did not start"
    return agent


def stop_agent(agent: subprocess.Popen[bytes]) -> list[dict[str, Any]]:
    agent.send_signal(signal.SIGTERM)
    out, _ = agent.communicate(timeout=30)
    return [json.loads(line) for line in out.decode().splitlines() if line.strip()]


def run_clients(lab: Lab, procs: int, total: int) -> tuple[list[dict[str, Any]], float]:
    per = total // procs
    t0 = time.perf_counter()
    clients = [subprocess.Popen(host_cmd(lab, sys.executable, "-c", CLIENT, lab.out_addr, str(PORT), str(per)),
                                stdout=subprocess.PIPE, cwd=str(REPO)) for _ in range(procs)]
    results = []
    for c in clients:
        out, _ = c.communicate(timeout=600)
        assert c.returncode == 0, "client failed"
        results.append(json.loads(out))
    return results, time.perf_counter() - t0


def measure(mode: str, kind: str, n: int) -> Result:
    lab = make_lab()
    try:
        sh("sysctl", "-q", "-w", "net.ipv4.ip_local_port_range=1024 65000", netns=lab.host)
        sh("sysctl", "-q", "-w", "net.ipv4.tcp_tw_reuse=1", netns=lab.host)
        server = lab.popen(lab.out, sys.executable, "-c", SERVER, lab.out_addr, str(PORT), stdout=subprocess.PIPE)
        assert server.stdout is not None
        line = server.stdout.readline().strip()
        assert line.startswith(b"ready"), f"server did not start ({line!r}, exit {server.poll()})"
        agent = start_agent(lab, mode)
        flood = None
        if kind == "flood":
            sink = subprocess.Popen(host_cmd(lab, sys.executable, "-c", SINK, "5353"), stdout=subprocess.PIPE)
            lab.procs.append(sink)
            assert sink.stdout is not None and sink.stdout.readline().strip() == b"ready"
            gateway = lab.out_addr.rsplit(".", 1)[0] + ".1"  # the host's address towards "out"
            flood = lab.popen(lab.out, sys.executable, "-c", FLOOD, gateway, "5353", "20000", "60", lab.out_addr,
                              stdout=subprocess.PIPE)
            assert flood.stdout is not None and flood.stdout.readline().strip() == b"ready"
            time.sleep(1.0)
        cpu0 = proc_cpu(agent.pid) if agent else 0.0
        t0 = time.monotonic()
        results, wall = run_clients(lab, 8 if kind == "burst" else 1, n)
        cpu = (proc_cpu(agent.pid) - cpu0) / (time.monotonic() - t0) if agent else None
        if flood is not None:
            flood.kill()
        time.sleep(2.5)
        samples = stop_agent(agent) if agent else []
        lat = [x for r in results for x in r["lat"]]
        total = sum(r["n"] for r in results)
        share = None
        gap = None
        if agent:
            degraded = {str(s.get("sensor", {}).get("detail")) for s in samples if s.get("sensor", {}).get("degraded")}
            if degraded:  # a run on a sensor that lost a program is not the eBPF path measured
                print(f"  {mode}: the sensor was degraded: {'; '.join(sorted(degraded))}", file=sys.stderr)
            pids = {r["pid"] for r in results}
            credited = sum(p["tx_bytes"] for s in samples for p in s["processes"] if p["pid"] in pids)
            share = credited / (total * PAYLOAD)
            ts = [s["ts"] for s in samples]
            gap = max((b - a for a, b in zip(ts, ts[1:], strict=False)), default=None)
        return Result(total / wall, percentile(lat, 0.5) * 1e6, percentile(lat, 0.99) * 1e6, share, cpu, gap)
    finally:
        lab.teardown()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seq", type=int, default=20000, help="sequential connects per run (short runs are noise)")
    parser.add_argument("--burst", type=int, default=20000)
    parser.add_argument("--modes", default="none,ebpf,nfqueue")
    parser.add_argument("--kinds", default="sequential,burst,flood")
    parser.add_argument("--rounds", type=int, default=5, help="runs per cell, modes interleaved; medians are shown")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench: needs root (namespaces, cgroups, eBPF)", file=sys.stderr)
        return 2
    modes = args.modes.split(",")
    runs: dict[tuple[str, str], list[Result]] = {}
    kinds = args.kinds.split(",")
    for kind, n in (("sequential", args.seq), ("burst", args.burst), ("flood", args.seq)):
        if kind not in kinds:
            continue
        for rnd in range(args.rounds):
            for mode in modes:
                runs.setdefault((kind, mode), []).append(measure(mode, kind, n))
                print(f"  {kind:<10} {mode:<8} round {rnd + 1} done", file=sys.stderr, flush=True)
    rows = {key: median(results) for key, results in runs.items()}
    print(f"\nconnections from the agent's namespace to an outside one, {PAYLOAD} B each, median of {args.rounds} "
          "(\"vs none\" and \"+p50\": median over rounds of each run against the no-agent run of its round); "
          f"sequential {args.seq} (1 process), burst {args.burst} (8 processes), "
          "flood = sequential under 20,000 DNS answers/s\n")
    print(f"{'run':<11} {'agent':<8} {'conn/s':>9} {'vs none':>8} {'p50 µs':>8} {'+p50':>7} {'p99 µs':>8} "
          f"{'attributed':>10} {'agent CPU':>9} {'max gap':>8}")
    for (kind, mode), r in rows.items():
        base = rows.get((kind, "none"))
        # Against the no-agent run of the same round: this machine's speed drifts between rounds
        # more than the agent costs, so a ratio of medians would mostly measure the drift.
        pairs = list(zip(runs[(kind, mode)], runs.get((kind, "none"), []), strict=False))
        ratio = median_of([a.rate / b.rate for a, b in pairs])
        added = median_of([a.p50_us - b.p50_us for a, b in pairs])
        vs = f"{ratio * 100:.0f}%" if base and ratio is not None else "-"
        dp50 = f"{added:+.1f}" if base and added is not None else "-"
        share = f"{r.share * 100:.2f}%" if r.share is not None else "-"
        cpu = f"{r.cpu * 100:.1f}%" if r.cpu is not None else "-"
        gap = f"{r.max_gap:.2f}s" if r.max_gap is not None else "-"
        print(f"{kind:<11} {mode:<8} {r.rate:>9,.0f} {vs:>8} {r.p50_us:>8.1f} {dp50:>7} {r.p99_us:>8.1f} "
              f"{share:>10} {cpu:>9} {gap:>8}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
