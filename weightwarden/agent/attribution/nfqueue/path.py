"""The fallback attribution path, for kernels where the eBPF programs cannot run.

It measures the agent's own network namespace only, from kernel counters:

- sock_diag dump each interval: live TCP sockets with their counters and inode;
- sock_diag destroy broadcast: the final counters of every TCP socket as it is
  freed (a 5 ms connection is never missed);
- NFQUEUE on the first packet of each new flow (owner resolution in
  ``weightwarden/agent/attribution/nfqueue/owners.py``): the sender is held in connect() while we map the socket
  to its pid; packets are always accepted and the queue bypasses when we are gone;
- conntrack (accounting on): UDP byte totals, and destroy events for flows that
  end between two samples.

Its iptables rules are read back every interval: rules flushed behind the
agent's back are put back, and said so (``sensor_tampered``).
"""

from __future__ import annotations

import errno
import os
import socket
import time
from collections.abc import Callable, Hashable, Iterable
from typing import TypeVar

from weightwarden.agent.attribution import paths
from weightwarden.agent.attribution.dns import NameCache
from weightwarden.agent.attribution.nfqueue import rules as resolve_rules
from weightwarden.agent.attribution.nfqueue.ledger import Ledger
from weightwarden.agent.attribution.nfqueue.owners import OwnerResolver
from weightwarden.agent.attribution.report import Account, PathInterval
from weightwarden.agent.kernel import conntrack as ct_mod
from weightwarden.agent.kernel.features import Feature
from weightwarden.agent.kernel.interfaces import is_egress_destination, local_addresses
from weightwarden.agent.kernel.nflog import NfLog
from weightwarden.agent.kernel.nfqueue import FlowTuple, NfQueue
from weightwarden.agent.kernel.procmap import ProcessTable
from weightwarden.agent.kernel.sockdiag import TCP_LISTEN, DestroyListener, SockDiag, SockRecord
from weightwarden.events import Payload, SensorFeature, SensorState, SensorTampered, TamperChange

T = TypeVar("T")
RULES_CHECK_EVERY = 1  # intervals between two reads of the NFQUEUE rules (iptables-save: ~3 ms of CPU)


class NfqueuePath:
    def __init__(self, procs: ProcessTable, names: NameCache, queue_num: int, manage_rules: bool,
                 use_queue: bool, admin: bool = True) -> None:
        self.admin = admin
        self.procs = procs
        self.queue_num = queue_num
        self.manage_rules = manage_rules
        self.use_queue = use_queue
        self.features: list[Feature] = []
        self.ledger = Ledger()
        self.diag = SockDiag()
        self.destroy: DestroyListener | None = None
        self.conntrack: ct_mod.Conntrack | None = None
        self.rule_plan: resolve_rules.RulePlan | None = None
        self.local = local_addresses()
        self.owners = OwnerResolver(procs, names, self.local)
        self.lost_events = 0
        self._samples = 0
        self._events: list[Payload] = []
        self._rules_ok_at = time.time()
        self.name = "sample-time"

    # -- lifecycle ----------------------------------------------------------

    def start(self) -> list[Feature]:
        admin = self.admin
        try:
            self.destroy = DestroyListener()
            self.features.append(Feature("sock_destroy", True, "final TCP counters from sock_diag destroy events"))
        except OSError as exc:
            self.features.append(Feature("sock_destroy", False, f"sock_diag destroy events unavailable ({exc.strerror}): "
                                         "bytes of TCP connections that close between samples are unattributed"))
        self._start_conntrack(admin)
        if self.use_queue and admin:
            self._start_queue()
        elif self.use_queue:
            self.features.append(Feature("nfqueue", False, "owner resolution at connect time needs CAP_NET_ADMIN: "
                                         "owners are resolved at each sample instead"))
        self._baseline()
        return list(self.features)

    def _start_conntrack(self, admin: bool) -> None:
        acct = ct_mod.acct_enabled()
        if acct is None:
            self.features.append(Feature("conntrack", False, "conntrack is not loaded: UDP bytes are not attributed "
                                         "(load nf_conntrack)"))
            return
        if not acct and not (admin and ct_mod.enable_acct()):
            self.features.append(Feature("conntrack", False, "conntrack accounting is off and we may not enable it: "
                                         "UDP bytes are not attributed (sysctl net.netfilter.nf_conntrack_acct=1)"))
            return
        try:
            self.conntrack = ct_mod.Conntrack(events=admin)
        except OSError as exc:
            self.features.append(Feature("conntrack", False, f"ctnetlink unavailable ({exc.strerror})"))
            return
        self.features.append(Feature("conntrack", True, "conntrack accounting on: UDP flows measured"))

    def _start_queue(self) -> None:
        tools = resolve_rules.available_tools()
        if not tools:
            self.features.append(Feature("nfqueue", False, "iptables not found: owners of short-lived "
                                         "connections are resolved at sample time and may be missed"))
            return
        try:
            queue = NfQueue(self.queue_num)
        except OSError as exc:
            self.features.append(Feature("nfqueue", False, f"cannot bind NFQUEUE {self.queue_num} "
                                         f"({exc.strerror}); is another agent running? Owners resolved at sample time"))
            return
        try:
            dns_log: NfLog | None = NfLog(self.queue_num + 1)
        except OSError as exc:
            dns_log = None
            self.features.append(Feature("dns_names", False, f"cannot bind NFLOG group {self.queue_num + 1} "
                                         f"({exc.strerror}): destinations are reported without names"))
        self.rule_plan = resolve_rules.plan(self.queue_num, tools)
        if self.manage_rules:
            errors = resolve_rules.apply(self.rule_plan)
            if errors and len(errors) == len(self.rule_plan.install):
                self.features.append(Feature("nfqueue", False, "could not install the NFQUEUE rules: " + errors[0]))
                queue.close()
                if dns_log is not None:
                    dns_log.close()
                return
            if errors:
                self.features.append(Feature("nfqueue", False, "some NFQUEUE rules failed (IPv6?): " + errors[0]))
        self.owners.serve(queue, dns_log)
        self.name = "nfqueue"
        self.features.append(Feature("nfqueue", True, f"new flows held on NFQUEUE {self.queue_num} (bypass) "
                                     "until their owner is named"))

    def close(self) -> None:
        self.owners.close()
        if self.rule_plan is not None and self.manage_rules:
            resolve_rules.remove(self.rule_plan)
            self.rule_plan = None
        for res in (self.destroy, self.conntrack, self.diag):
            if res is not None:
                res.close()
        self.destroy = self.conntrack = None

    # -- what it sees, and what was done to it ----------------------------------

    def sensor(self) -> SensorState:
        """Always degraded: one network namespace, and owners looked up while the sender waits."""
        feats = {f.name: SensorFeature(on=f.ok, reason=None if f.ok else paths.short_reason(f.detail))
                 for f in self.features}
        return SensorState(path=self.name, kernel=os.uname().release, features=feats, degraded=True,
                           detail=f"attribution on the {self.name} fallback: this network namespace only")

    def events(self) -> list[Payload]:
        out, self._events = self._events, []
        return out

    def set_raw_policy(self, policy: paths.RawPolicy) -> None:
        """Packet sockets cannot be acted on from here: raw_socket events still come from /proc/net/packet."""

    def _check_rules(self) -> None:
        """The rules that queue new flows, read back: flushed ones are put back, and said so."""
        if self.rule_plan is None or not self.manage_rules or self._samples % RULES_CHECK_EVERY:
            return
        now = time.time()
        missing = resolve_rules.missing(self.rule_plan)
        if not missing:
            self._rules_ok_at = now
            return
        errors = resolve_rules.apply(self.rule_plan)
        self._events.append(SensorTampered(
            changes=[TamperChange(kind="rules_flushed", name=f"{resolve_rules.TABLE} {m}", detail=(
                "the NFQUEUE rules that name each new flow's owner were removed: put back" if not errors
                else f"removed, and putting them back failed: {errors[0]}")[:4000]) for m in missing][:200],
            reattached=not errors, detected_ts=now, blind_from_ts=self._rules_ok_at))
        self._rules_ok_at = now

    # -- sampling --------------------------------------------------------------

    def _read_tcp(self) -> tuple[dict[int, SockRecord], dict[int, int]]:
        live: dict[int, SockRecord] = {}
        listeners: dict[int, int] = {}  # local port -> inode of the listening socket
        for rec in self.diag.dump(socket.IPPROTO_TCP):
            if rec.state == TCP_LISTEN:
                listeners[rec.sport] = rec.inode
            else:
                live[rec.cookie] = rec
        return live, listeners

    def _baseline(self) -> None:
        live, _ = self._read_tcp()
        self.owners.resolve(live.values())
        for rec in live.values():
            if rec.bytes_sent is not None:
                self.ledger.baseline(("tcp", rec.cookie), rec.bytes_sent, (rec.dst, rec.dport),
                                     self.owners.owner(rec.cookie))

    def _drain(self, read: Callable[[], Iterable[T]] | None) -> list[T]:
        if read is None:
            return []
        out: list[T] = []
        try:
            out.extend(read())
        except OSError as exc:
            if exc.errno != errno.ENOBUFS:
                raise
            # The kernel dropped events: say so in every sample until read.
            self.lost_events += 1
        return out

    def collect(self) -> PathInterval:
        destroyed = self._drain(self.destroy.drain if self.destroy is not None else None)
        ct_ended = self._drain(self.conntrack.drain_destroyed if self.conntrack is not None else None)
        self._check_rules()
        live, listeners = self._read_tcp()
        if self._samples % 10 == 0:
            self.local.clear()
            self.local.update(local_addresses())
        self._samples += 1
        self.owners.resolve(live.values())
        listener_owner = self.procs.owners(set(listeners.values()))

        def owner_of(rec: SockRecord) -> tuple[int | None, bool]:
            pid = self.owners.owner(rec.cookie)
            if pid is None and rec.sport in listeners:
                # An accepted connection belongs to whoever listens on its port.
                return listener_owner.get(listeners[rec.sport]), True
            return pid, rec.sport in listeners

        for rec in destroyed:
            if rec.bytes_sent is None or not is_egress_destination(rec.dst, self.local):
                continue
            pid, accepted = owner_of(rec)
            self.ledger.finish(("tcp", rec.cookie), rec.bytes_sent, (rec.dst, rec.dport), pid, "tcp", accepted)
        for rec in live.values():
            if rec.bytes_sent is None or not is_egress_destination(rec.dst, self.local):
                continue
            pid, accepted = owner_of(rec)
            self.ledger.update(("tcp", rec.cookie), rec.bytes_sent, (rec.dst, rec.dport), pid, "tcp", accepted)
        self._sample_udp(ct_ended)

        keep: set[Hashable] = {("tcp", c) for c in live}
        keep |= {k for k in self.ledger.flows if isinstance(k, tuple) and k[0] == "udp"}
        self.ledger.forget(keep)
        in_use = self.owners.age(set(live))
        self.procs.forget_inodes({r.inode for r in live.values()} | set(listeners.values()))
        interval = self.ledger.take_interval()
        out = PathInterval(unowned=interval.unowned, lost=self.lost_events + self.owners.lost_events)
        for pid, dests in interval.by_owner.items():
            acct = out.accounts[pid] = Account()
            for dest, nbytes in dests.items():
                meta = interval.meta.get((pid, dest))
                d = acct.dest(dest[0], dest[1], meta[0] if meta else None)
                d.tx_bytes = nbytes
                if meta is not None:
                    d.accepted, d.connections = meta[1], meta[2] or None
        self.procs.prune(in_use | set(interval.by_owner))
        return out

    def _sample_udp(self, ended: list[ct_mod.CtFlow]) -> None:
        if self.conntrack is None:
            return
        flows = self.owners.udp_snapshot()
        finished: set[FlowTuple] = set()
        for flow in ended:
            if flow.protocol != socket.IPPROTO_UDP or not is_egress_destination(flow.dst, self.local):
                continue
            key = FlowTuple(flow.family, flow.protocol, flow.src, flow.sport, flow.dst, flow.dport)
            known = flows.get(key)
            self.ledger.finish(("udp", key), flow.orig_payload, (flow.dst, flow.dport),
                               known.owner if known else None, "udp")
            finished.add(key)
        for key, udp in flows.items():
            if key in finished:
                continue
            got = self.conntrack.get(key.family, key.protocol, key.src, key.sport, key.dst, key.dport)
            if got is None:
                finished.add(key)  # expired with no destroy event seen: credited up to last sample
                continue
            self.ledger.update(("udp", key), got.orig_payload, (key.dst, key.dport), udp.owner, "udp")
        self.owners.forget_udp(finished)
        for key in finished:
            self.ledger.flows.pop(("udp", key), None)



@paths.register("nfqueue")
def _create(ctx: paths.PathContext) -> NfqueuePath:
    return NfqueuePath(ctx.procs, ctx.names, ctx.queue_num, ctx.manage_rules, ctx.resolve_with_nfqueue, ctx.admin)
