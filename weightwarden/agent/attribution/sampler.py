"""The egress sampler: exact bytes sent per interface, per process, per destination.

Unit of account: transport payload bytes, as the kernel counts them (TCP:
payload handed to IP, retransmissions included; UDP/ICMP/raw: payload above the
transport header). Interfaces count whole frames, so
``unattributed_tx_bytes = interface bytes - attributed bytes`` holds headers,
non-IP traffic and flows whose owner could not be named; nothing is dropped.

Two attribution paths, chosen once at start (``attribution`` in every sample):
- ``ebpf`` (weightwarden/agent/attribution/ebpf/path.py): kernel programs on a cgroup (the whole cgroup v2
  hierarchy by default) see every socket of every network namespace, with its
  owner, and count bytes per socket and destination with no per-packet trip to
  user space; also local transfers to other processes (relays).
- ``nfqueue`` / ``sample-time`` (weightwarden/agent/attribution/nfqueue/path.py): sock_diag, conntrack and an
  NFQUEUE owner lookup, for this network namespace only, where eBPF cannot run.

This module owns the lifecycle and turns a path's accounts into a sample:
interfaces, process descriptions and containers, DNS names, bounds.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from weightwarden import logs
from weightwarden.agent.attribution import containers, paths
from weightwarden.agent.attribution.dns import NameCache
from weightwarden.agent.attribution.ebpf.loader import BpfError
from weightwarden.agent.attribution.egress import EgressExplainer, Explained, IfaceInterval, unexplained_events
from weightwarden.agent.attribution.paths import AttributionPath, PathContext, PathUnavailable, RawPolicy
from weightwarden.agent.attribution.rawsockets import RawSockets
from weightwarden.agent.attribution.report import (
    LOCAL_ONLY_MIN_BYTES,
    PathInterval,
    ProcessEntry,
    bound_processes,
    process_entry,
)
from weightwarden.agent.attribution.sample import InterfaceEntry, Sample, SampleJson
from weightwarden.agent.attribution.stages import MAX_STAGES, Stages
from weightwarden.agent.kernel.cgroupfs import pod_names
from weightwarden.agent.kernel.features import Feature, cgroup_layout, has_net_admin
from weightwarden.agent.kernel.interfaces import (
    IfCounters,
    counter_delta,
    local_addresses,
    read_interfaces,
    read_packet_sockets,
)
from weightwarden.agent.kernel.procmap import ProcessInfo, ProcessTable
from weightwarden.events import MAX_PROCESSES, Payload, SensorFeature, SensorState

# Re-exported: the daemon and tests build sample entries with these.
__all__ = ["DEFAULT_QUEUE", "InterfaceEntry", "Sample", "SampleJson", "Sampler", "SamplerConfig", "bound_processes",
           "process_entry"]

DEFAULT_QUEUE = 4242
LOOPBACK_PREFIXES = ("lo",)
POD_NAMES_REFRESH_S = 30.0
RAW_POLICY_REFRESH = 10  # samples between two looks at the allowlisted executables (upgrades replace them)
MAX_PENDING_EVENTS = 10_000  # sensor events nobody took (top does not publish them): the oldest go first


@dataclass
class SamplerConfig:
    resolve_with_nfqueue: bool = True
    queue_num: int = DEFAULT_QUEUE
    proc_root: str = "/proc"
    sys_root: str = "/sys"
    clock: Callable[[], float] = time.time
    manage_rules: bool = True
    attribution: str = "auto"  # auto (ebpf, else nfqueue), or a registered path's name
    bpf_cgroup: str | None = None  # the cgroup the eBPF programs attach to (default: the v2 root)
    bpf_pin_dir: str | None = None  # pin the eBPF programs there, so they outlive the agent (None: do not)


def kernel_dev(st_dev: int) -> int:
    """A file's device as the kernel's programs see it (MKDEV: major << 20 | minor), from stat's st_dev."""
    return os.major(st_dev) << 20 | os.minor(st_dev)


def resolve_raw_policy(kill: bool, allow: list[str]) -> RawPolicy:
    """raw_sockets as the kernel needs it: each allowlisted executable by (dev, inode); a path that does
    not exist here allows nothing (and policy check says so)."""
    files = []
    for path in allow:
        try:
            st = Path(path).stat()
        except OSError:
            continue
        files.append((kernel_dev(st.st_dev), st.st_ino))
    return RawPolicy(kill, tuple(allow), tuple(files))


class Sampler:
    def __init__(self, config: SamplerConfig | None = None) -> None:
        self.cfg = config or SamplerConfig()
        self.features: list[Feature] = []
        self.procs = ProcessTable(self.cfg.proc_root)
        self.stages = Stages(self.procs)
        self.names = NameCache()
        self.path: AttributionPath | None = None
        self.attribution = "none"
        self.lost_events = 0
        self.explainer = EgressExplainer(self.cfg.proc_root)
        self.raw = RawSockets()
        self._raw_allow: tuple[bool, tuple[str, ...]] = (False, ())
        self._last_if: dict[str, IfCounters] = {}
        self._last_ts = 0.0
        self._local = local_addresses()
        self._samples = 0
        self._pods: dict[str, tuple[str, str]] = {}
        self._pods_at = -1e9
        self._declined: dict[str, str] = {}  # path name -> why it could not start (a fallback was used)
        self._events: list[Payload] = []
        self._events_lock = threading.Lock()  # sample() runs on a worker thread, take_events() on the loop
        self._log = logs.get("agent.sampler")

    # -- lifecycle -------------------------------------------------------

    def start(self) -> None:
        admin = has_net_admin(self.cfg.proc_root)
        if not admin:
            self.features.append(
                Feature("privileges", False, "not root (no CAP_NET_ADMIN): measuring live TCP sockets only; "
                        "connections that open and close between samples and UDP are not attributed")
            )
        self.features.append(cgroup_layout(self.cfg.proc_root))
        ctx = PathContext(self.procs, self.names, lambda: self._local, admin=admin, proc_root=self.cfg.proc_root,
                          queue_num=self.cfg.queue_num, manage_rules=self.cfg.manage_rules,
                          resolve_with_nfqueue=self.cfg.resolve_with_nfqueue, bpf_cgroup=self.cfg.bpf_cgroup,
                          bpf_pin_dir=self.cfg.bpf_pin_dir)
        order = ["ebpf", "nfqueue"] if self.cfg.attribution == "auto" else [self.cfg.attribution]
        for name in order:
            path: AttributionPath | None = None
            try:
                path = paths.create(name, ctx)
                self.features.extend(path.start())
            except PathUnavailable as exc:
                if path is not None:
                    path.close()
                self._declined[name] = str(exc)
                fallback = " falling back to NFQUEUE owner lookup in this network namespace only" \
                    if name == "ebpf" and "nfqueue" in order else ""
                self.features.append(Feature(name, False, f"{name} attribution unavailable ({exc});{fallback}"))
                continue
            self.path, self.attribution = path, path.name
            break
        if self.path is None:
            raise OSError(f"{self.cfg.attribution} attribution unavailable: {self.features[-1].detail}")
        self._last_if = read_interfaces()
        self._last_ts = self.cfg.clock()

    def close(self) -> None:
        if self.path is not None:
            self.path.close()
        self.explainer.close()

    def __enter__(self) -> Sampler:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the sensor, its events, the raw_sockets policy -------------------------

    def sensor(self) -> SensorState:
        if self.path is None:
            return SensorState(path="none", kernel=os.uname().release, degraded=True,
                               detail="attribution could not start")
        state = self.path.sensor()
        if not self._declined:
            return state
        # On a fallback: the path that could not start, and the kernel's reason, are part of what was lost.
        feats = {f"{name}_path": SensorFeature(on=False, reason=paths.short_reason(why))
                 for name, why in self._declined.items()}
        return state.model_copy(update={"features": {**feats, **state.features}, "degraded": True})

    def _queue(self, events: Sequence[Payload]) -> None:
        with self._events_lock:
            self._events.extend(events)
            if len(self._events) > MAX_PENDING_EVENTS:
                del self._events[:len(self._events) - MAX_PENDING_EVENTS]

    def take_events(self) -> list[Payload]:
        """Events since the last call: the path's (tampering) and the sampler's (raw sockets, unexplained egress)."""
        with self._events_lock:
            out, self._events = self._events, []
        if self.path is not None:
            out = self.path.events() + out
        return out

    def set_raw_policy(self, kill: bool, allow: list[str]) -> None:
        """raw_sockets of the policy in force: the kill action and the allowlisted executables."""
        self._raw_allow = (kill, tuple(allow))
        self._apply_raw_policy()

    def _apply_raw_policy(self) -> None:
        policy = resolve_raw_policy(self._raw_allow[0], list(self._raw_allow[1]))
        self.raw.policy = policy
        if self.path is not None:
            self.path.set_raw_policy(policy)

    # -- sampling --------------------------------------------------------

    def sample(self) -> Sample:
        if self._samples % 10 == 0:
            self._local.clear()
            self._local.update(local_addresses())
        if self._samples % RAW_POLICY_REFRESH == 0 and self._samples:
            self._apply_raw_policy()
        self._samples += 1
        assert self.path is not None, "start() first"
        try:
            interval = self.path.collect()
        except BpfError as exc:
            # The loader died and another could not be started: say so in every sample from now on.
            self._log.error("attribution_lost", error=str(exc))
            self.lost_events += 1
            interval = PathInterval()
        return self._report(interval)

    def _raw_events(self, interval: PathInterval) -> None:
        def ifname(index: int) -> str | None:
            try:
                return socket.if_indextoname(index)
            except OSError:
                return None

        hints = interval.hints
        found = self.raw.update(interval.raw, read_packet_sockets(self.cfg.proc_root), ifname, self.procs.owners,
                                lambda pid: self._info(pid, hints.get(pid)))
        if found:
            self._queue(found)

    def _pod_names(self) -> dict[str, tuple[str, str]]:
        now = time.monotonic()
        if now - self._pods_at > POD_NAMES_REFRESH_S:
            self._pods, self._pods_at = pod_names(), now
        return self._pods

    def _info(self, pid: int, hint: ProcessInfo | None) -> ProcessInfo | None:
        """/proc's description if it is the process the kernel saw (not a reuse of its pid), else the kernel's."""
        info = self.procs.describe(pid)
        if hint is None or (info is not None and abs(info.create_time - hint.create_time) < 0.05):
            if info is not None and hint is not None and info.cgroup is None:
                info = dataclasses.replace(info, cgroup=hint.cgroup)  # it exited while /proc was read
            return info
        return hint

    def _stages(self, processes: list[ProcessEntry], pods: dict[str, tuple[str, str]]) -> list[ProcessEntry]:
        """Pipeline stages feeding the senders' pipes (attribution/stages.py): listed with tx_bytes 0."""
        def entry(pid: int, info: ProcessInfo) -> ProcessEntry:
            return process_entry(pid, info, {}, [], containers.with_pod_names(containers.parse(info.cgroup), pods))

        return self.stages.find(processes, entry, min(MAX_STAGES, MAX_PROCESSES - len(processes)))

    def _report(self, interval: PathInterval) -> Sample:
        now = self.cfg.clock()
        counters = read_interfaces()
        ifaces: list[InterfaceEntry] = []
        total_tx = 0
        for name, c in sorted(counters.items()):
            if name.startswith(LOOPBACK_PREFIXES):
                continue
            old = self._last_if.get(name)
            tx = counter_delta(c.tx_bytes, old.tx_bytes if old else None)
            rx = counter_delta(c.rx_bytes, old.rx_bytes if old else None)
            pk = counter_delta(c.tx_packets, old.tx_packets if old else None)
            total_tx += tx
            ifaces.append({"name": name, "tx_bytes": tx, "rx_bytes": rx, "tx_packets": pk, "tx_rate_bps": 0.0})
        elapsed = max(now - self._last_ts, 1e-9)
        start_ts = self._last_ts
        for iface in ifaces:
            iface["tx_rate_bps"] = round(iface["tx_bytes"] * 8 / elapsed, 1)
        self._last_if = counters
        self._last_ts = now
        sensor = self.sensor()
        self._explain(interval, ifaces, start_ts, now, sensor)
        self._raw_events(interval)

        processes: list[ProcessEntry] = []
        attributed = 0
        pods = self._pod_names()
        for pid, acct in interval.accounts.items():
            tx = acct.tx_bytes
            if tx == 0 and acct.local_bytes < LOCAL_ONLY_MIN_BYTES:
                continue
            info = self._info(pid, interval.hints.get(pid))
            container = containers.with_pod_names(containers.parse(info.cgroup if info else None), pods)
            entry = process_entry(pid, info, acct.dests, list(acct.peers.values()), container)
            for d in entry["destinations"]:
                dns_name = self.names.name(d["address"])
                if dns_name:
                    d["name"] = dns_name
            attributed += tx
            processes.append(entry)
        processes, other = bound_processes(processes)
        processes += self._stages(processes, pods)
        return Sample(
            ts=now,
            interval_s=elapsed,
            interfaces=ifaces,
            processes=processes,
            attributed_tx_bytes=attributed,
            unattributed_tx_bytes=max(0, total_tx - attributed),
            unowned_flow_tx_bytes=interval.unowned,
            lost_events=self.lost_events + interval.lost,
            start_ts=start_ts,
            attribution=self.attribution,
            sensor=sensor.model_dump(mode="json", exclude_none=True),
            other_processes=other or None,
        )

    def _explain(self, interval: PathInterval, ifaces: list[InterfaceEntry], start_ts: float, now: float,
                 sensor: SensorState) -> None:
        """Each interface's bytes as attributed, overhead and unexplained; an event for a large unexplained part."""
        measured = [IfaceInterval(i["name"], i["tx_bytes"], i["tx_packets"]) for i in ifaces]
        try:
            explained: dict[str, Explained] = self.explainer.explain(interval, measured)
        except OSError as exc:
            self._log.warning("egress_unexplained_unknown", error=str(exc))
            return
        for entry in ifaces:
            e = explained.get(entry["name"])
            if e is None:
                continue
            entry["attributed_tx_bytes"] = e.attributed
            entry["overhead_tx_bytes"] = e.overhead
            if e.unexplained is not None:
                entry["unexplained_tx_bytes"] = e.unexplained
        found = unexplained_events(explained, measured, start_ts, now, sensor)
        if found:
            self._queue(found)
