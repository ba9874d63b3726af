"""Event streams for correlation tests, each annotated with the alerts it must produce.

Events are made with the shared models (weightwarden.events), as an agent would publish
them; times are explicit so hour-long stories run in milliseconds. Processes carry a start
time by default (the agent reports one), so a reused pid is another process.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from weightwarden.events import PAYLOAD_OF, EventFactory

T0 = 1_795_000_000.0
MB = 10**6
WEIGHTS = "/srv/models/llama/model-00001.safetensors"
DEFAULTS: dict[str, dict[str, Any]] = {
    "heartbeat": {"uptime_s": 1.0, "policy": "p", "policy_digest": "d"},
    "agent_started": {"pid": 1, "policy": "p", "policy_digest": "d", "policy_path": "/etc/weightwarden/p.yaml"},
}


class _Seq:
    def __init__(self, start: int = 0) -> None:
        self.last = start

    def next(self) -> int:
        self.last += 1
        return self.last


def started_at(pid: int) -> float:
    """A start time per pid that the tests can predict (the agent reads it from /proc)."""
    return T0 - 1000.0 + pid / 100.0


def proc_fields(pid: int, exe: str, ppid: int = 1, start: float | None = None, ends: dict[int, str] | None = None,
                container: dict[str, Any] | None = None, cmdline: list[str] | None = None,
                pipes: list[int] | None = None, uid: int = 1000) -> dict[str, Any]:
    """``ends``: pipe inode -> the end held (r, w, rw); ``pipes``: inodes with no end known (an older agent)."""
    out: dict[str, Any] = {"pid": pid, "ppid": ppid, "name": exe.rsplit("/", 1)[-1], "exe": exe, "uid": uid,
                           "start_time": started_at(pid) if start is None else start,
                           "pipes": sorted({*(ends or {}), *(pipes or [])}),
                           "pipe_ends": {str(k): v for k, v in (ends or {}).items()},
                           "cmdline": cmdline or [exe]}
    if container:
        out["container"] = container
    return out


KERNEL = "6.1.0-18-amd64"
# What an agent's sensor says about itself (events.SensorState): whole on the eBPF path...
FEATURES: dict[str, dict[str, Any]] = {"cgroup_skb": {"on": True}, "unix_peers": {"on": True},
                                       "packet_sockets": {"on": True}}
EBPF: dict[str, Any] = {"path": "ebpf", "kernel": KERNEL, "degraded": False, "features": FEATURES}
# ...a feature of it off (the kernel's reason), and the fallback path.
EBPF_NO_UNIX: dict[str, Any] = {**EBPF, "degraded": True, "features": {
    **FEATURES, "unix_peers": {"on": False, "reason": "the verifier refused unix_stream_sendmsg: -EACCES"}}}
# ...an optional capability off (this kernel has no bpf LSM): reported, not degraded (the agent's verdict).
EBPF_NO_LSM: dict[str, Any] = {**EBPF, "features": {
    **FEATURES, "packet_kill_before_send": {"on": False, "reason": "ww_lsm: Operation not permitted"}}}
# The agent names the path it could not start as a feature "<path>_path" off (Sampler.sensor).
NFQUEUE = {"path": "nfqueue", "kernel": KERNEL, "degraded": True, "detail": "no BTF: the eBPF sensor cannot load",
           "features": {"ebpf_path": {"on": False, "reason": "no BTF at /sys/kernel/btf/vmlinux"}}}
# ...and the fallback an operator chose (--attribution nfqueue): nothing was refused.
NFQUEUE_CHOSEN = {"path": "nfqueue", "kernel": KERNEL, "degraded": True, "features": {}}


@dataclass
class Stream:
    host: str = "gpu-1"
    events: list[dict[str, Any]] = field(default_factory=list)
    seq_start: int = 0
    sensor: dict[str, Any] | None = None  # the sensor state every sample carries (None: an agent that does not say)

    def __post_init__(self) -> None:
        self.factory = EventFactory(self.host, _Seq(self.seq_start))

    def add(self, type_: str, at: float, **data: Any) -> dict[str, Any]:
        # What every agent sends with these, so a test names only what it is about.
        data = {**DEFAULTS.get(type_, {}), **data}
        ev = self.factory.make(PAYLOAD_OF[type_].model_validate(data), ts=at).to_json()
        self.events.append(ev)
        return ev

    def messages(self) -> list[tuple[str, bytes]]:
        return [(f"weightwarden/v1/{e['host']}/{e['type']}", json.dumps(e).encode()) for e in self.events]

    # helpers that look like the agent's own events
    def started(self, ts: float, weights: int = 256 * MB) -> None:
        self.add("agent_started", ts, pid=1, policy="p", policy_digest="d", features={},
                 weights={"paths": ["/srv/models"], "files": 1, "total_bytes": weights})

    def read(self, ts: float, pid: int, nbytes: int, path: str = WEIGHTS, exe: str = "/usr/bin/python3.11",
             ppid: int = 1, staged: list[str] | None = None, pipes: list[int] | None = None, *,
             size: int | None = None, ends: dict[int, str] | None = None, start: float | None = None,
             how: str | None = None, took: float = 1.0, container: dict[str, Any] | None = None,
             cmdline: list[str] | None = None, report_at: float | None = None, host_path: str | None = None) -> None:
        """``pid`` read ``nbytes`` of ``path`` from ``ts`` for ``took`` seconds: reported every 5 s while
        open (as the agent does) and at close."""
        data = {**proc_fields(pid, exe, ppid, start, ends, container, cmdline, pipes), "path": path,
                "size": nbytes if size is None else size, "bytes_read": nbytes, "opens": 1, "reads": 1, "closes": 1,
                "close_write": 0, "first_ts": ts, "last_ts": ts + took, "still_open": False, "final": True}
        if staged:
            data["staged_copy_of"] = staged
        if how:
            data["how"] = how
        if host_path:
            data["host_path"] = host_path
        for t in range(5, int(took), 5):
            self.add("file_access", ts + t, **{**data, "bytes_read": nbytes * t // int(took), "last_ts": ts + t,
                                               "still_open": True, "final": False, "closes": 0})
        self.add("file_access", report_at if report_at is not None else ts + took + 1, **data)

    def holder(self, ts: float, pid: int, nbytes: int, path: str = WEIGHTS, exe: str = "/usr/bin/python3.11",
               start: float | None = None, container: dict[str, Any] | None = None) -> None:
        self.add("weight_holder", ts, **proc_fields(pid, exe, 1, start, None, container), path=path,
                 files=[{"path": path, "mapped_bytes": nbytes, "resident_bytes": nbytes}], mapped_bytes=nbytes,
                 resident_bytes=nbytes, bytes_read=0)

    def copy(self, ts: float, pid: int, nbytes: int, destination: str, exe: str = "/usr/bin/cp",
             sources: list[str] | None = None, derivative: bool = False, remote: str | None = None,
             start: float | None = None) -> None:
        self.add("weights_copy", ts, **proc_fields(pid, exe, 1, start), sources=sources or [WEIGHTS],
                 source_bytes_read=nbytes, destination=destination, destination_size=nbytes, path=destination,
                 derivative=derivative, **({"remote": remote} if remote else {}))

    def send(self, ts: float, pid: int, nbytes: int, address: str = "203.0.113.9", port: int = 443,
             exe: str = "/usr/bin/python3.11", ppid: int = 1, allowed: bool = False,
             pipes: list[int] | None = None, *, start: float | None = None, ends: dict[int, str] | None = None,
             accepted: bool | None = None, protocol: str | None = None, interval: float = 1.0,
             dests: list[dict[str, Any]] | None = None, peers: list[dict[str, Any]] | None = None,
             container: dict[str, Any] | None = None, cmdline: list[str] | None = None,
             other: dict[str, int] | None = None, span: tuple[float, float] | None = None,
             stages: list[dict[str, Any]] | None = None) -> None:
        """One sample ending at ``ts``: ``pid`` sent ``nbytes`` to ``address`` (or to ``dests``), and
        handed bytes to local ``peers``. ``span``: the destination's own first and last send."""
        proc = proc_fields(pid, exe, ppid, start, ends, container, cmdline, pipes)
        if dests is None:
            dest: dict[str, Any] = {"address": address, "port": port, "tx_bytes": nbytes, "allowed": allowed}
            if accepted is not None:
                dest["accepted"] = accepted
            if protocol:
                dest["protocol"] = protocol
            if span:
                dest["first_ts"], dest["last_ts"] = span
            dests = [dest] if nbytes else []
        total = sum(d["tx_bytes"] for d in dests) + (other or {}).get("tx_bytes", 0)
        proc.update(tx_bytes=total, destinations=dests, local_peers=peers or [])
        if other:
            proc["other_destinations"] = other
        self.sample(ts, [proc], interval=interval, stages=stages)

    def sample(self, ts: float, processes: list[dict[str, Any]], interval: float = 1.0, unowned: int = 0,
               stages: list[dict[str, Any]] | None = None) -> None:
        """One egress sample of these processes (and pipeline ``stages``: processes that send nothing
        themselves, named by the agent because they feed a sender's pipe)."""
        procs = [*processes, *({**st, "tx_bytes": 0, "destinations": []} for st in stages or [])]
        total = sum(p["tx_bytes"] for p in processes) + unowned
        extra = {"sensor": self.sensor} if self.sensor is not None else {}
        self.add("egress_sample", ts, ts=ts, start_ts=ts - interval, interval_s=interval, layer="transport-payload",
                 interfaces=[{"name": "eth0", "tx_bytes": total, "rx_bytes": 0, "tx_packets": 1, "tx_rate_bps": 0}],
                 processes=procs, attributed_tx_bytes=total - unowned, unattributed_tx_bytes=unowned,
                 unowned_flow_tx_bytes=unowned, lost_events=0, **extra)

    def hand(self, ts: float, pid: int, to_pid: int, nbytes: int, exe: str = "/usr/bin/python3.11",
             to_exe: str = "/usr/bin/socat", via: str = "unix", interval: float = 1.0,
             to_start: float | None = None) -> None:
        """``pid`` sent ``nbytes`` only locally, to ``to_pid`` (it appears with tx_bytes 0 and its peer)."""
        self.send(ts, pid, 0, exe=exe, interval=interval,
                  peers=[{"pid": to_pid, "start_time": started_at(to_pid) if to_start is None else to_start,
                          "name": to_exe.rsplit("/", 1)[-1],
                          "exe": to_exe, "via": via, "tx_bytes": nbytes}])

    def upload(self, t: float, pid: int, nbytes: int, seconds: int, **kw: Any) -> None:
        """``nbytes`` sent evenly over ``seconds`` one-second samples ending at t+1 .. t+seconds."""
        for i in range(seconds):
            self.send(t + i + 1, pid, nbytes // seconds, **kw)
