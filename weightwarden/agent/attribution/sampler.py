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
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from weightwarden import logs
from weightwarden.agent.attribution import containers
from weightwarden.agent.kernel.cgroupfs import find_cgroup2, pod_names
from weightwarden.agent.attribution.dns import NameCache
from weightwarden.agent.attribution.ebpf.loader import BpfError
from weightwarden.agent.kernel.features import Feature, cgroup_layout, has_net_admin
from weightwarden.agent.kernel.interfaces import IfCounters, counter_delta, local_addresses, read_interfaces
from weightwarden.agent.kernel.procmap import ProcessInfo, ProcessTable
from weightwarden.agent.attribution.report import LOCAL_ONLY_MIN_BYTES, PathInterval, bound_processes, process_entry
from weightwarden.agent.attribution.stages import MAX_STAGES, Stages
from weightwarden.events import MAX_PROCESSES, EgressSample

# Re-exported: the daemon and tests build sample entries with these.
__all__ = ["DEFAULT_QUEUE", "Sample", "Sampler", "SamplerConfig", "bound_processes", "process_entry"]

DEFAULT_QUEUE = 4242
LOOPBACK_PREFIXES = ("lo",)
POD_NAMES_REFRESH_S = 30.0


class Path_(Protocol):
    name: str

    def collect(self) -> PathInterval: ...

    def close(self) -> None: ...


@dataclass
class SamplerConfig:
    resolve_with_nfqueue: bool = True
    queue_num: int = DEFAULT_QUEUE
    proc_root: str = "/proc"
    sys_root: str = "/sys"
    clock: Callable[[], float] = time.time
    manage_rules: bool = True
    attribution: str = "auto"  # auto (ebpf, else nfqueue), ebpf, nfqueue
    bpf_cgroup: str | None = None  # the cgroup the eBPF programs attach to (default: the v2 root)


@dataclass
class Sample:
    ts: float
    interval_s: float
    interfaces: list[dict[str, Any]]
    processes: list[dict[str, Any]]
    attributed_tx_bytes: int
    unattributed_tx_bytes: int
    unowned_flow_tx_bytes: int
    lost_events: int
    extra: dict[str, Any] = field(default_factory=dict)

    def to_payload(self) -> EgressSample:
        return EgressSample.model_validate(self.to_json())

    def to_json(self) -> dict[str, Any]:
        return {
            "ts": self.ts,
            "interval_s": round(self.interval_s, 6),
            "layer": "transport-payload",
            "interfaces": self.interfaces,
            "processes": self.processes,
            "attributed_tx_bytes": self.attributed_tx_bytes,
            "unattributed_tx_bytes": self.unattributed_tx_bytes,
            "unowned_flow_tx_bytes": self.unowned_flow_tx_bytes,
            "lost_events": self.lost_events,
            **self.extra,
        }


class Sampler:
    def __init__(self, config: SamplerConfig | None = None) -> None:
        self.cfg = config or SamplerConfig()
        self.features: list[Feature] = []
        self.procs = ProcessTable(self.cfg.proc_root)
        self.stages = Stages(self.procs)
        self.names = NameCache()
        self.path: Path_ | None = None
        self.attribution = "none"
        self.lost_events = 0
        self._last_if: dict[str, IfCounters] = {}
        self._last_ts = 0.0
        self._local = local_addresses()
        self._samples = 0
        self._pods: dict[str, tuple[str, str]] = {}
        self._pods_at = -1e9
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
        if self.cfg.attribution in ("auto", "ebpf") and admin:
            self._start_ebpf()
        if self.path is None:
            if self.cfg.attribution == "ebpf":
                raise OSError(f"eBPF attribution unavailable: {self.features[-1].detail}")
            self._start_nfqueue(admin)
        self._last_if = read_interfaces()
        self._last_ts = self.cfg.clock()

    def _start_ebpf(self) -> None:
        from weightwarden.agent.attribution.ebpf.path import EbpfPath

        root = find_cgroup2(self.cfg.proc_root)
        target = self.cfg.bpf_cgroup or root
        if target is None:
            self.features.append(Feature("ebpf", False, "no cgroup v2 hierarchy is mounted: eBPF attribution off, "
                                         "measuring this network namespace only"))
            return
        path = EbpfPath(target, root, self.procs, self.names, lambda: self._local)
        try:
            info = path.start()
        except BpfError as exc:
            path.close()
            self.features.append(Feature("ebpf", False, f"eBPF attribution unavailable ({exc}); falling back to "
                                         "NFQUEUE owner lookup in this network namespace only"))
            return
        raw_notes = info.get("notes")
        notes = "; ".join(str(n) for n in raw_notes if n) if isinstance(raw_notes, list) else ""
        self.features.append(Feature("ebpf", True, f"eBPF attribution on cgroup {target}: every process in every "
                                     "network namespace, owners resolved in the kernel" + (f" ({notes})" if notes else "")))
        self.path, self.attribution = path, "ebpf"

    def _start_nfqueue(self, admin: bool) -> None:
        from weightwarden.agent.attribution.nfqueue.path import NfqueuePath

        path = NfqueuePath(self.procs, self.names, self.cfg.queue_num, self.cfg.manage_rules,
                           self.cfg.resolve_with_nfqueue)
        path.start(admin)
        self.features.extend(path.features)
        self.path, self.attribution = path, path.name

    def close(self) -> None:
        if self.path is not None:
            self.path.close()

    def __enter__(self) -> Sampler:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- sampling --------------------------------------------------------

    def sample(self) -> Sample:
        if self._samples % 10 == 0:
            self._local.clear()
            self._local.update(local_addresses())
        self._samples += 1
        assert self.path is not None, "start() first"
        try:
            interval = self.path.collect()
        except BpfError as exc:
            # The loader died: the kernel detached its programs. Say so in every sample from now on.
            self._log.error("attribution_lost", error=str(exc))
            self.lost_events += 1
            interval = PathInterval()
        return self._report(interval)

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

    def _stages(self, processes: list[dict[str, Any]], pods: dict[str, tuple[str, str]]) -> list[dict[str, Any]]:
        """Pipeline stages feeding the senders' pipes (attribution/stages.py): listed with tx_bytes 0."""
        def entry(pid: int, info: ProcessInfo) -> dict[str, Any]:
            return process_entry(pid, info, {}, [], containers.with_pod_names(containers.parse(info.cgroup), pods))

        return self.stages.find(processes, entry, min(MAX_STAGES, MAX_PROCESSES - len(processes)))

    def _report(self, interval: PathInterval) -> Sample:
        now = self.cfg.clock()
        counters = read_interfaces()
        ifaces: list[dict[str, Any]] = []
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
        for entry in ifaces:
            entry["tx_rate_bps"] = round(entry["tx_bytes"] * 8 / elapsed, 1)
        self._last_if = counters
        self._last_ts = now

        processes = []
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
        extra: dict[str, Any] = {"start_ts": start_ts, "attribution": self.attribution}
        if other:
            extra["other_processes"] = other
        return Sample(
            ts=now,
            interval_s=elapsed,
            interfaces=ifaces,
            processes=processes,
            attributed_tx_bytes=attributed,
            unattributed_tx_bytes=max(0, total_tx - attributed),
            unowned_flow_tx_bytes=interval.unowned,
            lost_events=self.lost_events + interval.lost,
            extra=extra,
        )
