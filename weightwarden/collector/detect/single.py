"""Detections one event decides (canary, caps, budgets, drift, thresholds, agent loss, drops,
a copy of the weights onto network storage), and the host-health ones the sweep makes.

Each returns a Draft in "event" mode: repeats of one incident update one alert, and its
content is that of the latest event by the event's own time, not by arrival.
"""

from __future__ import annotations

from typing import Any

from weightwarden.collector.detect.common import Draft, Tuning, clock, proc_text
from weightwarden.events import (
    AgentLost, BudgetExhausted, CanaryRead, CapHit, EnforcementDrift, EnforcementError, Event, EventsDropped,
    Payload, ProcessFields, ThresholdCrossed, WeightsCopy, WeightsRelinked,
)
from weightwarden.units import format_duration, format_rate, format_size

# Network filesystems a site shares on purpose; a copy there is high, a copy through FUSE (sshfs,
# rclone, s3fs: the usual tools for carrying files off) or of a packed derivative is critical.
SHARED_FS = ("nfs", "nfs4", "cifs", "smb3", "smbfs", "9p", "ceph", "glusterfs", "lustre", "beegfs", "gpfs")


def _host_evidence(data: Payload, ref: dict[str, Any]) -> dict[str, Any]:
    """Evidence of a host-level alert: the event's own data, and no process, file or destination."""
    return {**data.model_dump(mode="json", exclude_none=True), "process": None, "files": [], "destinations": [],
            **ref}


def _who(p: ProcessFields) -> dict[str, Any]:
    return {"name": p.name, "pid": p.pid, "exe": p.exe, "uid": p.uid, "user": p.user,
            "cmdline": list(p.cmdline), "container": p.container.model_dump() if p.container else None}


def _from_event(ev: Event) -> Draft | None:
    """Detections a single event decides: canaries, caps, budgets, drift, thresholds, agent loss, drops."""
    host, data, ts = ev.host, ev.data, ev.ts
    ref = {"events": [ev.id]}
    if isinstance(data, CanaryRead):
        who = proc_text(_who(data))
        return Draft(f"canary:{host}:{data.path}:{data.pid}", host, "canary_read", "critical",
                     f"Canary file opened on {host} by {data.name or '?'} (pid {data.pid})",
                     f"{who} opened {data.path} on {host} at {clock(ts)}. Nothing legitimate reads this file: "
                     f"it is a honey file placed among the weights to catch whoever is looking through them.",
                     {"process": _who(data), "files": [data.path], "destinations": [], **ref}, ts, ts)
    if isinstance(data, WeightsRelinked):
        # Medium by itself (issue 20); the new name stays watched by inode, so a read through it and an
        # upload raise the exfiltration alerts (high, critical) that name the weights path.
        who = proc_text(_who(data))
        made = "hard-linked" if data.how == "hardlink" else "moved" if data.how == "rename" else "relinked"
        where = "outside the weights tree" if data.outside_tree else "inside the weights tree"
        return Draft(f"relinked:{host}:{data.to_path}", host, "weights_relinked", "medium",
                     f"Weight file {made} to {data.to_path} on {host}",
                     f"{who} gave {data.from_path} ({format_size(data.size)}) a new name, {data.to_path}, "
                     f"{where}, on {host} at {clock(ts)}. A weight file under another name is a way to read it "
                     f"where nobody looks; the agent keeps watching it by inode, and a read of it followed by "
                     f"an upload raises an exfiltration alert.",
                     {"process": _who(data), "files": [data.from_path, data.to_path], "destinations": [],
                      "how": data.how, "outside_tree": data.outside_tree, "inode": data.inode, "dev": data.dev,
                      **ref}, ts, ts)
    if isinstance(data, CapHit):
        return Draft(f"cap:{host}:{data.cap}", host, "cap_hit", "low" if data.action == "shape" else "medium",
                     f"Cap {data.cap!r} reached on {host}",
                     f"Egress matched by cap {data.cap!r} on {host} ran at {format_rate(data.observed_bps)} "
                     f"against a cap of {format_rate(data.rate_bps)} ({data.action}). The cap is doing "
                     f"its job; look at which process is pushing against it.",
                     _host_evidence(data, ref), ts, ts)
    if isinstance(data, BudgetExhausted):
        return Draft(f"budget:{host}:{data.budget}", host, "budget_exhausted", "high",
                     f"Egress budget {data.budget!r} exhausted on {host}",
                     f"{host} sent {format_size(data.used_bytes)} of non-allowlisted egress within "
                     f"{format_duration(data.window_s)}, over its budget of "
                     f"{format_size(data.limit_bytes)}; action: {data.action}.",
                     _host_evidence(data, ref), ts, ts)
    if isinstance(data, EnforcementDrift):
        return Draft(f"drift:{host}", host, "enforcement_drift", "high", f"Upload caps tampered with on {host}",
                     f"The kernel rules enforcing {host}'s upload caps changed behind the agent's back "
                     f"({'; '.join(data.drift)}). The agent "
                     f"{'restored them' if data.restored else 'could not restore them'}. "
                     f"Someone with root on the host removed or altered them.",
                     _host_evidence(data, ref), ts, ts)
    if isinstance(data, EnforcementError):
        return Draft(f"enforce-error:{host}", host, "enforcement_error", "medium", f"Caps not enforced on {host}",
                     f"The agent on {host} could not apply its policy: {data.error}.",
                     _host_evidence(data, ref), ts, ts)
    if isinstance(data, ThresholdCrossed):
        proc = data.process
        return Draft(f"threshold:{host}:{data.threshold}:{proc.pid}", host, "threshold_crossed", data.severity,
                     f"{proc.name or '?'} (pid {proc.pid}) crossed threshold {data.threshold!r} on {host}",
                     f"{proc_text(_who(proc))} sent {format_size(data.bytes_in_window)} within "
                     f"{format_duration(data.window_s)} on {host}, over the policy's threshold of "
                     f"{format_size(data.limit_bytes)}.",
                     {"process": _who(proc), "files": [],
                      "destinations": [d.model_dump(mode="json", exclude_none=True) for d in proc.destinations],
                      **ref}, ts, ts)
    if isinstance(data, AgentLost):
        return Draft(f"silent:{host}", host, "agent_silent", "high", f"Agent on {host} went silent",
                     f"The agent on {host} lost its broker connection without saying goodbye (its Last-Will "
                     f"arrived at {clock(ts)}): it crashed, was killed, or the host is cut off. Caps stay in force, "
                     f"but nothing on {host} is being watched until it is back.",
                     _host_evidence(data, ref), ts, ts)
    if isinstance(data, EventsDropped):
        ranges = [list(r) for r in data.seq_ranges[:10]]
        return Draft(f"dropped:{host}", host, "events_dropped", "low", f"Agent on {host} dropped events",
                     f"The agent on {host} dropped {data.dropped if data.dropped is not None else 'an unknown number of'}"
                     f" events ({data.reason}); sequence ranges {ranges}"
                     f"{' …' if len(data.seq_ranges) > 10 else ''}. Their summary: "
                     f"{data.egress_summary.model_dump() if data.egress_summary else 'none'}.",
                     _host_evidence(data, ref), ts, ts)
    return None


def silent(host: str, last_seen: float, now: float) -> Draft:
    return Draft(f"silent:{host}", host, "agent_silent", "high", f"Agent on {host} went silent",
                 f"Nothing has arrived from {host} for {format_duration(now - last_seen)} (last at {clock(last_seen)}); "
                 f"heartbeats are missing. The agent may be dead or the host cut off.",
                 {"last_seen": last_seen, "process": None, "files": [], "destinations": [], "events": []},
                 last_seen, now, reopen=False, mode="event", order=f"{now:017.6f}:silent")


def gap(host: str, missing: list[tuple[int, int]], count: int, now: float) -> Draft:
    """``missing``: [first, last] runs of sequence numbers, never expanded (a jump of millions is one run)."""
    ranges = [[lo, hi] for lo, hi in missing]
    return Draft(f"gap:{host}", host, "sequence_gap", "medium", f"Events missing from {host}",
                 f"{count} events from {host} never arrived and the agent did not report dropping them "
                 f"(sequence numbers {ranges[:10]}{' …' if len(ranges) > 10 else ''}). Events can be lost in transit "
                 f"or suppressed; look at what the host was doing then.",
                 {"missing_seq_ranges": ranges[:100], "missing": count, "process": None, "files": [],
                  "destinations": [], "events": []}, now, now, mode="event", order=f"{now:017.6f}:gap")


def remote_copy(ev: Event, data: WeightsCopy, tune: Tuning) -> Draft | None:
    """Weights (or a compressed, encrypted or split derivative of them) written to network storage:
    the bytes leave the host through the kernel's filesystem client, not through a process's socket."""
    if not data.remote or any(data.destination.startswith(p) for p in tune.allowed_remote_prefixes):
        return None
    shared = data.remote.lower() in SHARED_FS
    severity = "high" if shared and not data.derivative else "critical"
    what = "a compressed, encrypted or split derivative of model weights" if data.derivative else "a copy of model weights"
    who = _who(data)
    return Draft(
        f"remote_copy:{ev.host}:{data.pid}:{data.destination}", ev.host, "remote_copy", severity,
        f"Weights copied to {data.remote} storage by {data.name or '?'} (pid {data.pid}) on {ev.host}",
        f"{proc_text(who)} on {ev.host} wrote {what} ({format_size(data.destination_size)}, from "
        f"{', '.join(data.sources[:3])}) to {data.destination}, which is on a {data.remote} filesystem: network "
        f"storage, not this host's disks, so the bytes have left the host. "
        + ("A shared filesystem may be where your site keeps weights on purpose: list it in the collector's "
           "allowed remote paths if so." if shared else "FUSE filesystems (sshfs, rclone, s3fs) are a common way "
           "to carry files off a host."),
        {"process": who, "files": sorted(data.sources), "bytes_sent": data.destination_size,
         "destinations": [{"address": f"{data.remote}:{data.destination}", "port": 0,
                           "bytes": data.destination_size, "filesystem": data.remote}],
         "derivative": data.derivative, "rule": "remote-copy", "events": [ev.id]},
        ev.ts, ev.ts, mode="event")


def from_event(ev: Event, tune: Tuning | None = None) -> Draft | None:
    data = ev.data
    draft = remote_copy(ev, data, tune or Tuning()) if isinstance(data, WeightsCopy) else _from_event(ev)
    if draft is not None:
        draft.mode = "event"
        draft.order = f"{ev.ts:017.6f}:{ev.id}"
    return draft
