#!/usr/bin/env python3
"""Sampler cost and accuracy vs nethogs, on the same traffic, in namespaces.

A full-speed iperf3 upload plus 2,000 idle open TCP sockets run from namespace
A to B, with --namespaces (50) more network namespaces present, each holding open
sockets (a listener and established loopback connections), three times: watched by
`weightwarden-agent top --json --interval 1` on the eBPF path (programs on a cgroup
made for the run, which holds the senders), on the NFQUEUE path, and by
`nethogs -t`. For each: CPU seconds per second (the agent with its eBPF loader), peak RSS,
and bytes credited to iperf3 vs what iperf3 reports it sent.

Run as root: python bench/egress_sampler.py [--seconds 15] [--idle 2000] [--namespaces 50]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.helpers.netns import NetnsPair, make_pair, wait_for  # noqa: E402

IDLE_HOLDER = """
import resource, socket, sys, time
resource.setrlimit(resource.RLIMIT_NOFILE, (8192, 8192))
socks = [socket.create_connection((sys.argv[1], int(sys.argv[2]))) for _ in range(int(sys.argv[3]))]
print("ready", flush=True)
time.sleep(3600)
"""


def _cpu(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_cost(pid: int) -> tuple[float, int]:
    """(cpu seconds, peak RSS bytes) of a process and its children (the eBPF loader is one), from /proc."""
    import psutil

    try:
        children = [c.pid for c in psutil.Process(pid).children(recursive=True)]
    except psutil.Error:
        children = []
    cpu = _cpu(pid) + sum(_cpu(c) for c in children)
    hwm = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            hwm = int(line.split()[1]) * 1024
    return cpu, hwm


NS_HOLDER = """
import ctypes, os, socket, sys, time
libc = ctypes.CDLL(None, use_errno=True)
held = []
for name in sys.argv[2:]:
    fd = os.open(f"/run/netns/{name}", os.O_RDONLY)
    if libc.setns(fd, 0x40000000) != 0:
        raise OSError(ctypes.get_errno(), "setns")
    os.close(fd)
    srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen(64)
    for _ in range(int(sys.argv[1])):
        c = socket.create_connection(srv.getsockname()); a, _ = srv.accept(); held += [c, a]
    held.append(srv)
print("ready", flush=True)
time.sleep(3600)
"""


def make_namespaces(n: int, tag: str) -> list[str]:
    names = [f"wwb-{tag}-{i}" for i in range(n)]
    for name in names:
        subprocess.run(["ip", "netns", "add", name], check=True)
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
    return names


def make_cgroup(tag: str) -> Path:
    from weightwarden.agent.kernel.cgroupfs import find_cgroup2

    root = find_cgroup2()
    assert root is not None, "no cgroup v2 hierarchy"
    path = Path(root) / f"ww-bench-{tag}"
    path.mkdir()
    return path


def in_cgroup(cgroup: Path | None, argv: list[str]) -> list[str]:
    if cgroup is None:
        return argv
    return ["sh", "-c", f"echo $$ > {cgroup}/cgroup.procs && exec " + shlex.join(argv)]


def run_iperf(pair: NetnsPair, seconds: int, cgroup: Path | None = None) -> tuple[int, int]:
    argv = ["ip", "netns", "exec", pair.a, "iperf3", "-c", pair.addr_b, "-p", "5201", "-t", str(seconds), "-J"]
    client = subprocess.Popen(in_cgroup(cgroup, argv), stdout=subprocess.PIPE)
    pair.procs.append(client)
    out, _ = client.communicate(timeout=seconds + 60)
    report = json.loads(out)
    return client.pid, int(report["end"]["sum_sent"]["bytes"])


def bench_weightwarden(pair: NetnsPair, seconds: int, cgroup: Path | None) -> dict[str, float]:
    path = ["--attribution", "ebpf", "--bpf-cgroup", str(cgroup)] if cgroup else ["--attribution", "nfqueue"]
    # nsenter, not `ip netns exec`: the latter remounts /sys, hiding the cgroup the programs attach to.
    agent = subprocess.Popen(["nsenter", f"--net=/run/netns/{pair.a}", sys.executable, "-m", "weightwarden.agent",
                              "top", "--json", "--interval", "1", *path],
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=str(REPO))
    pair.procs.append(agent)
    time.sleep(3.0)  # start-up (imports, program load or rule install, baseline) is not steady-state cost
    cpu0, _ = proc_cost(agent.pid)
    t0 = time.monotonic()
    iperf_pid, sent = run_iperf(pair, seconds, cgroup)
    time.sleep(1.5)
    cpu1, rss = proc_cost(agent.pid)
    wall = time.monotonic() - t0
    agent.send_signal(signal.SIGTERM)
    out, _ = agent.communicate(timeout=20)
    credited = 0
    for line in out.decode().splitlines():
        for proc in json.loads(line)["processes"]:
            if proc["pid"] == iperf_pid:
                credited += proc["tx_bytes"]
    return {"cpu_per_s": (cpu1 - cpu0) / wall, "rss": rss, "credited": credited, "sent": sent}


def bench_nethogs(pair: NetnsPair, seconds: int) -> dict[str, float]:
    hogs = pair.popen(pair.a, "nethogs", "-t", "-v", "2", "-d", "1", pair.veth_a,
                      stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    time.sleep(2.0)
    cpu0, _ = proc_cost(hogs.pid)
    t0 = time.monotonic()
    iperf_pid, sent = run_iperf(pair, seconds)
    time.sleep(2.5)
    cpu1, rss = proc_cost(hogs.pid)
    wall = time.monotonic() - t0
    hogs.send_signal(signal.SIGINT)
    try:
        out, _ = hogs.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        hogs.kill()
        out, _ = hogs.communicate()
    # Trace lines: "program/pid/uid<TAB>sent<TAB>received"; -v 2 gives cumulative bytes.
    credited = 0.0
    pattern = re.compile(rf"^\S*iperf3/{iperf_pid}/\d+\t([\d.e+]+)\t")
    for line in out.decode(errors="replace").splitlines():
        m = pattern.match(line)
        if m:
            credited = float(m.group(1))
    return {"cpu_per_s": (cpu1 - cpu0) / wall, "rss": rss, "credited": credited, "sent": sent}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=15)
    parser.add_argument("--idle", type=int, default=2000)
    parser.add_argument("--namespaces", type=int, default=50, help="extra network namespaces with open sockets")
    parser.add_argument("--sockets", type=int, default=20, help="loopback connections held in each")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench: needs root (network namespaces)", file=sys.stderr)
        return 2
    resource.setrlimit(resource.RLIMIT_NOFILE, (8192, 8192))
    pair = make_pair()
    tag = str(os.getpid())
    extra: list[str] = []
    cgroup: Path | None = None
    try:
        extra = make_namespaces(args.namespaces, tag)
        cgroup = make_cgroup(tag)
        if extra:
            holder_ns = subprocess.Popen([sys.executable, "-c", NS_HOLDER, str(args.sockets), *extra],
                                         stdout=subprocess.PIPE)
            pair.procs.append(holder_ns)
            assert holder_ns.stdout is not None and holder_ns.stdout.readline().strip() == b"ready"
        sink = pair.popen(pair.b, sys.executable, "-m", "tests.helpers.sink", pair.addr_b, "8080", "9000",
                          stdout=subprocess.PIPE, cwd=str(REPO))
        assert sink.stdout is not None and sink.stdout.readline().strip() == b"ready"
        pair.popen(pair.b, "iperf3", "-s", "-p", "5201", "-B", pair.addr_b, stdout=subprocess.DEVNULL)
        assert wait_for(lambda: ":5201" in pair.run(pair.b, "ss", "-ltn").stdout)
        holder = subprocess.Popen(in_cgroup(cgroup, ["ip", "netns", "exec", pair.a, sys.executable, "-c",
                                                     IDLE_HOLDER, pair.addr_b, "8080", str(args.idle)]),
                                  stdout=subprocess.PIPE)
        pair.procs.append(holder)
        assert holder.stdout is not None and holder.stdout.readline().strip() == b"ready"

        rows = {"weightwarden eBPF": bench_weightwarden(pair, args.seconds, cgroup),
                "weightwarden NFQUEUE": bench_weightwarden(pair, args.seconds, None),
                "nethogs -t (1 s)": bench_nethogs(pair, args.seconds)}
    finally:
        pair.teardown()
        for name in extra:
            subprocess.run(["ip", "netns", "del", name], check=False)
        if cgroup is not None:
            try:
                (cgroup / "cgroup.kill").write_text("1")
                time.sleep(0.2)
                cgroup.rmdir()
            except OSError:
                pass
    print(f"\niperf3 upload for {args.seconds}s at full speed + {args.idle} idle TCP sockets, namespaces A->B, "
          f"{args.namespaces} more namespaces with {args.sockets * 2 + 1} open sockets each\n")
    print(f"{'tool':<22} {'CPU s/s':>9} {'% core':>7} {'peak RSS':>10} {'sent (iperf3)':>15} "
          f"{'credited':>15} {'error':>8}")
    for name, r in rows.items():
        err = (r["credited"] - r["sent"]) / r["sent"] * 100
        print(f"{name:<22} {r['cpu_per_s']:>9.4f} {r['cpu_per_s'] * 100:>6.2f}% {r['rss'] / 2**20:>8.1f}Mi "
              f"{r['sent']:>15,.0f} {r['credited']:>15,.0f} {err:>7.2f}%")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
