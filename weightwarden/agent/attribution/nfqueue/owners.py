"""Owner resolution for the fallback path (no eBPF): which pid holds a socket, found in user space.

The queue thread gets the first packet of each new outbound flow from NFQUEUE
while the sender waits in connect(), maps its socket (sock_diag) to an inode
and the inode to a pid (/proc/PID/fd), and describes the process while it still
lives. Every sample also resolves live sockets it has not met yet. DNS answers
come on their own NFLOG group and thread, copied, never held.

Locks guard only the maps below; nothing reads another process's memory while
holding one (``ProcessTable.describe`` runs outside, its command-line read is
bounded).
"""

from __future__ import annotations

import errno
import select
import socket
import threading
from collections.abc import Iterable
from dataclasses import dataclass

from weightwarden import logs
from weightwarden.agent.attribution.dns import NameCache
from weightwarden.agent.kernel.interfaces import is_egress_destination
from weightwarden.agent.kernel.nflog import NfLog
from weightwarden.agent.kernel.nfqueue import FlowTuple, NfQueue
from weightwarden.agent.kernel.procmap import ProcessTable
from weightwarden.agent.kernel.sockdiag import SockDiag, SockRecord

DEAD_COOKIE_SAMPLES = 3


@dataclass(slots=True)
class UdpFlow:
    tuple: FlowTuple
    owner: int | None


class OwnerResolver:
    def __init__(self, procs: ProcessTable, names: NameCache, local: set[str]) -> None:
        self.procs = procs
        self.names = names
        self.local = local
        self.queue: NfQueue | None = None
        self.dns_log: NfLog | None = None
        self.cookie_owner: dict[int, int] = {}
        self.udp_flows: dict[FlowTuple, UdpFlow] = {}
        self._dead_strikes: dict[int, int] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.lost_events = 0
        self.resolve_errors = 0
        self._log = logs.get("agent.owners")

    # -- threads ------------------------------------------------------------

    def serve(self, queue: NfQueue, dns_log: NfLog | None) -> None:
        self.queue, self.dns_log = queue, dns_log
        self._threads.append(threading.Thread(target=self._serve_queue, name="nfqueue", daemon=True))
        if dns_log is not None:
            self._threads.append(threading.Thread(target=self._serve_dns, name="nflog-dns", daemon=True))
        for t in self._threads:
            t.start()

    def close(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=2)
        for res in (self.queue, self.dns_log):
            if res is not None:
                res.close()

    def _serve_dns(self) -> None:
        assert self.dns_log is not None
        while not self._stop.is_set():
            ready, _, _ = select.select([self.dns_log], [], [], 0.2)
            if ready:
                for packet in self.dns_log.packets():
                    self.names.feed(packet)

    def _serve_queue(self) -> None:
        assert self.queue is not None
        # This thread owns its own sock_diag socket: netlink sockets are not shared.
        qdiag = SockDiag()
        try:
            while not self._stop.is_set():
                ready, _, _ = select.select([self.queue], [], [], 0.2)
                if not ready:
                    continue
                try:
                    self.queue.serve_once(lambda flow, uid, pkt: self.on_new_flow(qdiag, flow), block=False)
                except BlockingIOError:
                    continue
                except OSError as exc:
                    if exc.errno != errno.ENOBUFS:
                        self.resolve_errors += 1
                        self._log.warning("nfqueue_error", error=str(exc))
                    else:
                        self.lost_events += 1
                except Exception as exc:  # noqa: BLE001 - one bad packet must not stop resolution
                    self.resolve_errors += 1
                    self._log.warning("resolve_error", error=repr(exc))
        finally:
            qdiag.close()

    # -- resolution ------------------------------------------------------------

    def on_new_flow(self, qdiag: SockDiag, flow: FlowTuple) -> None:
        if not is_egress_destination(flow.dst, self.local):
            return
        if flow.protocol == socket.IPPROTO_TCP:
            rec = qdiag.lookup(flow.family, flow.protocol, flow.src, flow.sport, flow.dst, flow.dport)
            if rec is None or not rec.inode:
                return
            pid = self.procs.owners({rec.inode}).get(rec.inode)
            if pid is not None:
                with self._lock:
                    self.cookie_owner[rec.cookie] = pid
                self.procs.describe(pid)  # while the sender is still held in connect()
        else:
            with self._lock:
                if flow in self.udp_flows:
                    return
            pid = self._udp_owner(qdiag, flow)
            with self._lock:
                self.udp_flows[flow] = UdpFlow(flow, pid)
            if pid is not None:
                self.procs.describe(pid)

    def _udp_owner(self, diag: SockDiag, flow: FlowTuple) -> int | None:
        wildcard = ("0.0.0.0", "::")
        for rec in diag.dump(socket.IPPROTO_UDP):
            if rec.sport == flow.sport and (rec.src == flow.src or rec.src in wildcard):
                if rec.dport and (rec.dst, rec.dport) != (flow.dst, flow.dport):
                    continue
                return self.procs.owners({rec.inode}).get(rec.inode)
        return None

    def resolve(self, recs: Iterable[SockRecord]) -> None:
        """Name the owners of live sockets not met before (sample time)."""
        recs = list(recs)
        with self._lock:
            unknown = {r.inode for r in recs if r.inode and r.cookie not in self.cookie_owner}
        if not unknown:
            return
        owners = self.procs.owners(unknown)
        found = []
        with self._lock:
            for rec in recs:
                pid = owners.get(rec.inode)
                if pid is not None and rec.cookie not in self.cookie_owner:
                    self.cookie_owner[rec.cookie] = pid
                    found.append(pid)
        for pid in set(found):
            self.procs.describe(pid)

    def owner(self, cookie: int) -> int | None:
        with self._lock:
            return self.cookie_owner.get(cookie)

    def udp_snapshot(self) -> dict[FlowTuple, UdpFlow]:
        with self._lock:
            return dict(self.udp_flows)

    def forget_udp(self, keys: Iterable[FlowTuple]) -> None:
        with self._lock:
            for key in keys:
                self.udp_flows.pop(key, None)

    def age(self, live_cookies: set[int]) -> set[int]:
        """Forget owners of sockets gone for a few samples (a socket may die between the destroy
        drain and the dump: its final counters still find it); returns the pids still in use."""
        with self._lock:
            for cookie in [c for c in self.cookie_owner if c not in live_cookies]:
                strikes = self._dead_strikes.get(cookie, 0) + 1
                if strikes >= DEAD_COOKIE_SAMPLES:
                    del self.cookie_owner[cookie]
                    self._dead_strikes.pop(cookie, None)
                else:
                    self._dead_strikes[cookie] = strikes
            return set(self.cookie_owner.values()) | {u.owner for u in self.udp_flows.values() if u.owner}
