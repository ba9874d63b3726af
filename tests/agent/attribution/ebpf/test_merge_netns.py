"""A process's sockets to one remote destination are merged (TCP in the kernel, the rest in the
loader), and nothing else is.

Real programs, real connections from a "container": many short connections to an outside
server arrive as one record per (process, destination) with the socket count and exact bytes;
connections to one of the host's own addresses (a relay on the host) stay one record per
socket, because their ports are what names the process at the other end.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import pytest

from tests.helpers.containers import Lab, lab_fixture
from tests.helpers.netns import wait_for
from weightwarden.agent.attribution.ebpf.loader import BpfLoader, Drain
from weightwarden.agent.attribution.ebpf.wire import Flow

pytestmark = pytest.mark.privileged

OUT_PORT, HOST_PORT, OUT_UDP, HOST_UDP = 8090, 8091, 9090, 9091
SOCKETS, PAYLOAD = 120, 3000
MERGED_IN_KERNEL = 1 << 63  # WW_MERGED in weightwarden/agent/attribution/ebpf/bpf/ww.h
EXPECTED = SOCKETS * PAYLOAD + SOCKETS * (SOCKETS - 1) // 2  # bytes to each server (every socket sends its own size)

CONNECT = r"""
import os, socket, sys
for addr, port in ((sys.argv[1], int(sys.argv[3])), (sys.argv[2], int(sys.argv[4]))):
    for i in range(int(sys.argv[5])):
        s = socket.create_connection((addr, port))
        s.sendall(b"m" * (int(sys.argv[6]) + i))
        s.close()
# A UDP socket per datagram (as a client that opens one per request does)
for addr, port in ((sys.argv[1], int(sys.argv[7])), (sys.argv[2], int(sys.argv[8]))):
    for i in range(int(sys.argv[5])):
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        u.sendto(b"u" * (100 + i), (addr, port))
        u.close()
print(os.getpid(), flush=True)
"""
UDP_EXPECTED = SOCKETS * 100 + SOCKETS * (SOCKETS - 1) // 2


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    yield from lab_fixture()


def _connect_and_drain(lab: Lab, loader: BpfLoader, local: set[str] | None) -> tuple[int, Drain]:
    loader.drain(local)  # as the agent does every interval: the loader learns the host's addresses
    res = lab.run_ctr(sys.executable, "-c", CONNECT, lab.out_addr, lab.host_addr, str(OUT_PORT), str(HOST_PORT),
                      str(SOCKETS), str(PAYLOAD), str(OUT_UDP), str(HOST_UDP))
    pid = int(res.stdout.split()[0])
    got = Drain()
    assert wait_for(lambda: _add(got, loader.drain(local)) >= 2 * EXPECTED + 2 * UDP_EXPECTED, timeout=10), \
        got.flows[:3]
    return pid, got


def _add(total: Drain, more: Drain) -> int:
    total.flows += more.flows
    return sum(f.bytes for f in total.flows if f.dport in (OUT_PORT, HOST_PORT, OUT_UDP, HOST_UDP))


@pytest.fixture(scope="module", autouse=True)
def sinks(lab: Lab) -> None:
    for ns, addr, port, udp in ((lab.out, lab.out_addr, OUT_PORT, OUT_UDP), (lab.host, lab.host_addr, HOST_PORT, HOST_UDP)):
        sink = lab.popen(ns, sys.executable, "-m", "tests.helpers.sink", addr, str(port), str(udp), stdout=subprocess.PIPE)
        assert sink.stdout is not None and sink.stdout.readline().strip() == b"ready"


def test_remote_sockets_merge_and_on_host_ones_do_not(lab: Lab) -> None:
    loader = BpfLoader(str(lab.root))
    loader.start()
    try:
        local = {lab.host_addr, f"198.19.{lab.out_addr.split('.')[2]}.1", "127.0.0.1", "::1"}
        pid, got = _connect_and_drain(lab, loader, local)
        mine = [f for f in got.flows if f.owner.tgid == pid]

        out = [f for f in mine if f.dport == OUT_PORT]
        assert sum(f.sockets for f in out) == SOCKETS
        assert sum(f.bytes for f in out) == EXPECTED
        assert len(out) <= 3, f"{len(out)} records for one destination: not merged"  # one per drain it spanned
        assert all(f.dst == lab.out_addr and f.owner.known and f.first_ns <= f.last_ns for f in out)
        assert all(f.cookie & MERGED_IN_KERNEL for f in out), "TCP sockets to a remote host share a kernel entry"

        on_host = [f for f in mine if f.dport == HOST_PORT]
        assert len(on_host) == SOCKETS and {f.sockets for f in on_host} == {1}
        assert len({f.sport for f in on_host}) == SOCKETS, "each socket keeps the port that names its peer"
        assert sum(f.bytes for f in on_host) == EXPECTED

        # UDP sockets are merged by the loader, from the kernel's decision of where each one went.
        udp_out = [f for f in mine if f.dport == OUT_UDP]
        assert sum(f.sockets for f in udp_out) == SOCKETS and sum(f.bytes for f in udp_out) == UDP_EXPECTED
        assert len(udp_out) <= 3, f"{len(udp_out)} records for one destination: not merged"
        udp_host = [f for f in mine if f.dport == HOST_UDP]
        assert len(udp_host) == SOCKETS and {f.sockets for f in udp_host} == {1}
        assert sum(f.bytes for f in udp_host) == UDP_EXPECTED
    finally:
        loader.close()


def test_nothing_is_merged_until_the_agent_names_its_addresses(lab: Lab) -> None:
    with_unknown = BpfLoader(str(lab.root))
    with_unknown.start()
    try:
        pid2, got2 = _connect_and_drain(lab, with_unknown, None)
        out2 = [f for f in got2.flows if f.owner.tgid == pid2 and f.dport == OUT_PORT]
        assert len(out2) == SOCKETS and {f.sockets for f in out2} == {1}
        assert not any(f.cookie & MERGED_IN_KERNEL for f in out2)
        udp2 = [f for f in got2.flows if f.owner.tgid == pid2 and f.dport == OUT_UDP]
        assert len(udp2) == SOCKETS and sum(f.bytes for f in udp2) == UDP_EXPECTED
        assert sum(f.bytes for f in out2) == EXPECTED
    finally:
        with_unknown.close()



HOLD = r"""
import os, socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])))
print(os.getpid(), flush=True)
for line in sys.stdin:
    s.sendall(b"h" * int(line))
    print("sent", flush=True)
"""


def test_a_socket_decides_again_when_the_hosts_addresses_change(lab: Lab) -> None:
    loader = BpfLoader(str(lab.root))
    loader.start()
    try:
        with_host = {lab.host_addr, "127.0.0.1", "::1"}
        loader.drain(with_host)
        holder = lab.popen_ctr(sys.executable, "-c", HOLD, lab.host_addr, str(HOST_PORT),
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert holder.stdin is not None and holder.stdout is not None
        pid = int(holder.stdout.readline())

        def send(n: int, local: set[str]) -> list[Flow]:
            assert holder.stdin is not None and holder.stdout is not None
            holder.stdin.write(f"{n}\n".encode())
            holder.stdin.flush()
            assert holder.stdout.readline().strip() == b"sent"
            got = Drain()
            assert wait_for(lambda: sum(f.bytes for f in _mine(got, loader.drain(local), pid)) >= n, timeout=10)
            return [f for f in got.flows if f.owner.tgid == pid]

        first = send(5000, with_host)
        assert sum(f.bytes for f in first) == 5000 and not any(f.cookie & MERGED_IN_KERNEL for f in first)
        send(1, set(with_host) - {lab.host_addr})  # the address is no longer the host's: told with this drain
        later = send(7000, set(with_host) - {lab.host_addr})
        assert sum(f.bytes for f in later) == 7000 and all(f.cookie & MERGED_IN_KERNEL for f in later)
        holder.stdin.close()
        holder.wait(timeout=10)
    finally:
        loader.close()


def _mine(total: Drain, more: Drain, pid: int) -> list[Flow]:
    total.flows += more.flows
    return [f for f in total.flows if f.owner.tgid == pid]
