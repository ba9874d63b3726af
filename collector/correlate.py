"""Detections, as pure functions of facts the store has gathered. No I/O.

Each returns an alert draft (or None): a stable ``key`` that groups one
incident, a severity, a plain-words explanation, and the evidence (process,
files, bytes, destinations, timeline). The same facts give the same draft,
whichever collector computes it.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from typing import Any

from weightwarden.events import (
    AgentLost, BudgetExhausted, CanaryRead, CapHit, EnforcementDrift, EnforcementError, Event, EventsDropped,
    Payload, ProcessFields, ThresholdCrossed, seq_ranges,
)
from weightwarden.units import format_duration, format_rate, format_size

LEVELS = ["low", "medium", "high", "critical"]


@dataclass
class Tuning:
    window_s: float = 86400.0  # how far back a weight read counts
    min_read_bytes: int = 1 << 20  # reads smaller than this are not "took the weights"
    min_sent_bytes: int = 1 << 20  # uploads smaller than this are noise
    high_ratio: float = 0.10  # sent / read for a high alert
    critical_ratio: float = 0.50
    chunk_window_s: float = 3600.0
    chunk_min_processes: int = 5
    chunk_ratio: float = 0.5
    slow_window_s: float = 86400.0
    slow_min_span_s: float = 3600.0
    slow_min_bytes: int = 256 << 20
    slow_ratio: float = 0.05  # of the host's weights, sent to one place
    silent_after_s: float = 90.0
    gap_grace_s: float = 10.0


@dataclass
class Draft:
    key: str
    host: str
    kind: str
    severity: str
    title: str
    explanation: str
    evidence: dict[str, Any]
    first_ts: float
    last_ts: float
    reopen: bool = True
    id: str = field(init=False)

    def __post_init__(self) -> None:
        self.id = hashlib.sha256(self.key.encode()).hexdigest()[:16]

    def to_row(self) -> dict[str, Any]:
        return dict(self.__dict__)


def bump(severity: str, steps: int = 1) -> str:
    return LEVELS[min(len(LEVELS) - 1, LEVELS.index(severity) + steps)]


def clock(ts: float) -> str:
    return time.strftime("%H:%M:%S", time.gmtime(ts)) + " UTC"


def _proc(p: dict[str, Any]) -> str:
    name = p.get("name") or (p.get("exe") or "?").rsplit("/", 1)[-1]
    return f"{name} (pid {p.get('pid')}, uid {p.get('uid')})"


def projected_seconds(remaining: float, rate_bps: float) -> float | None:
    if remaining <= 0:
        return 0.0
    return remaining * 8 / rate_bps if rate_bps > 0 else None


def _destinations(egress: list[dict[str, Any]]) -> list[dict[str, Any]]:
    by: dict[tuple[str, int], int] = {}
    for e in egress:
        by[(e["address"], e["port"])] = by.get((e["address"], e["port"]), 0) + int(e["bytes"])
    return [{"address": a, "port": p, "bytes": b} for (a, p), b in sorted(by.items(), key=lambda kv: -kv[1])]


def exfiltration(host: str, sender: dict[str, Any], reads: list[dict[str, Any]], egress: list[dict[str, Any]],
                 weights_total: int, new_destinations: set[str], rate_bps: float, tune: Tuning) -> Draft | None:
    """A process that read (or holds, or copied) weights and sends to non-allowlisted places."""
    read_bytes = sum(int(r["bytes"]) for r in reads if r["kind"] != "copy")
    sent = sum(int(e["bytes"]) for e in egress)
    if read_bytes < tune.min_read_bytes or sent < tune.min_sent_bytes:
        return None
    first_read = min(r["first_ts"] for r in reads)
    # Only what left after the weights were touched counts.
    after = [e for e in egress if e["ts"] >= first_read - 1]
    sent = sum(int(e["bytes"]) for e in after)
    if sent < tune.min_sent_bytes:
        return None
    ratio = sent / max(read_bytes, 1)
    severity = "critical" if ratio >= tune.critical_ratio else "high" if ratio >= tune.high_ratio else "medium"
    dests = _destinations(after)
    fresh = [d["address"] for d in dests if d["address"] in new_destinations]
    if fresh and severity != "critical":
        severity = bump(severity)
    staged = sorted({s for r in reads for s in (r.get("staged_of") or "").split("\n") if s})
    readers = {r["pid"] for r in reads}
    kind = "staged_exfiltration" if staged else "exfiltration"
    files = sorted({r["path"] for r in reads})
    total = max(weights_total, read_bytes)
    remaining = max(0, total - sent)
    eta = projected_seconds(remaining, rate_bps)
    who = _proc(sender)
    reader_text = "" if readers == {sender["pid"]} else (
        f" Its relative{'s' if len(readers) > 1 else ''} (pid {', '.join(str(p) for p in sorted(readers))}) read them.")
    staged_text = f" The file it read is a staged copy of {', '.join(staged)}." if staged else ""
    dest_text = ", ".join(f"{d['address']}:{d['port']}" for d in dests[:3])
    eta_text = ("all of it has left" if remaining == 0 else
                f"the remaining {format_size(remaining)} would take {format_duration(eta)}" if eta is not None else
                f"{format_size(remaining)} remain")
    explanation = (
        f"{who} on {host} read {format_size(read_bytes)} of model weights ({', '.join(files[:3])}"
        f"{' …' if len(files) > 3 else ''}) from {clock(first_read)}, and has since sent {format_size(sent)} to "
        f"{dest_text}{' (never contacted by this program before)' if fresh else ''}, which is not allowlisted."
        f"{reader_text}{staged_text} That is {ratio:.0%} of what it read; at the current rate "
        f"({format_rate(rate_bps)}) {eta_text}."
    )
    timeline = sorted(
        [{"ts": r["first_ts"], "what": f"{r['kind']} {r['path']} ({format_size(int(r['bytes']))}) by pid {r['pid']}"}
         for r in reads]
        + [{"ts": e["ts"], "what": f"sent {format_size(int(e['bytes']))} to {e['address']}:{e['port']}"} for e in after[-20:]],
        key=lambda x: x["ts"])
    evidence = {
        "process": {k: sender.get(k) for k in ("name", "pid", "exe", "uid", "ppid")},
        "readers": sorted(readers),
        "files": files,
        "staged_from": staged,
        "bytes_read": read_bytes,
        "bytes_sent": sent,
        "destinations": dests,
        "new_destinations": fresh,
        "weights_total_bytes": total,
        "rate_bps": rate_bps,
        "projected_seconds_for_rest": eta,
        "timeline": timeline,
        "events": sorted({str(r["event_id"]) for r in reads if r.get("event_id")}
                         | {str(e["event_id"]) for e in after[-20:]}),
    }
    title = f"{'Staged copy of weights' if staged else 'Weights'} uploaded by {sender.get('name') or '?'} " \
            f"(pid {sender['pid']}) on {host} to {dests[0]['address']}"
    return Draft(f"{kind}:{host}:{sender['pid']}", host, kind, severity, title, explanation, evidence,
                 first_read, max(e["ts"] for e in after))


def chunked(host: str, exe: str, egress: list[dict[str, Any]], reads: list[dict[str, Any]],
            tune: Tuning) -> Draft | None:
    """Many short-lived uploads by one program that add up to a large share of the weights read."""
    pids = {e["pid"] for e in egress}
    sent = sum(int(e["bytes"]) for e in egress)
    read_bytes = sum(int(r["bytes"]) for r in reads if r["kind"] != "copy")
    if len(pids) < tune.chunk_min_processes or read_bytes < tune.min_read_bytes:
        return None
    if sent < tune.chunk_ratio * read_bytes:
        return None
    dests = _destinations(egress)
    name = exe.rsplit("/", 1)[-1]
    explanation = (
        f"{len(pids)} separate {name} processes on {host} sent {format_size(sent)} in total to "
        f"{', '.join(d['address'] for d in dests[:3])} (not allowlisted) within {format_duration(tune.chunk_window_s)}, "
        f"each small on its own; {format_size(read_bytes)} of weights were read on this host in that time "
        f"({', '.join(sorted({r['path'] for r in reads})[:3])}). Splitting an upload into many short "
        f"connections is a way to stay under per-process thresholds."
    )
    evidence = {"process": {"name": name, "exe": exe, "pids": sorted(pids)[:50], "pid": min(pids)},
                "files": sorted({r["path"] for r in reads}), "bytes_read": read_bytes, "bytes_sent": sent,
                "destinations": dests, "processes": len(pids),
                "events": sorted({e["event_id"] for e in egress})[:50]}
    return Draft(f"chunked:{host}:{exe}", host, "chunked_exfiltration", "high" if sent < read_bytes else "critical",
                 f"{len(pids)} {name} processes uploaded {format_size(sent)} in chunks from {host}", explanation,
                 evidence, min(e["ts"] for e in egress), max(e["ts"] for e in egress))


def slow(host: str, address: str, egress: list[dict[str, Any]], weights_total: int, tune: Tuning) -> Draft | None:
    """A trickle to one destination, under any cap, that adds up over hours."""
    if not egress:
        return None
    sent = sum(int(e["bytes"]) for e in egress)
    span = max(e["ts"] for e in egress) - min(e["ts"] for e in egress)
    floor = max(tune.slow_min_bytes, tune.slow_ratio * weights_total)
    if span < tune.slow_min_span_s or sent < floor:
        return None
    rate = sent * 8 / max(span, 1)
    dests = _destinations(egress)
    procs = sorted({(e["pid"], e.get("exe") or "?") for e in egress})
    remaining = max(0, weights_total - sent)
    eta = projected_seconds(remaining, rate)
    explanation = (
        f"{host} has sent {format_size(sent)} to {address} over {format_duration(span)} (average "
        f"{format_rate(rate)}), slowly enough to stay under rate caps. That is "
        f"{sent / max(weights_total, 1):.0%} of the {format_size(weights_total)} of weights on this host; at this pace "
        f"the rest would take {format_duration(eta) if eta is not None else 'unknown'}. Senders: "
        f"{', '.join(f'{exe.rsplit(chr(47), 1)[-1]} (pid {pid})' for pid, exe in procs[:5])}."
    )
    evidence = {"process": {"pid": procs[0][0], "exe": procs[0][1], "name": procs[0][1].rsplit("/", 1)[-1]},
                "processes": [{"pid": p, "exe": x} for p, x in procs[:20]], "destinations": dests,
                "bytes_sent": sent, "span_seconds": span, "rate_bps": rate, "weights_total_bytes": weights_total,
                "projected_seconds_for_rest": eta, "files": [],
                "events": sorted({e["event_id"] for e in egress})[-50:]}
    return Draft(f"slow:{host}:{address}", host, "slow_exfiltration", "high", f"Slow upload of "
                 f"{format_size(sent)} from {host} to {address} over {format_duration(span)}", explanation, evidence,
                 min(e["ts"] for e in egress), max(e["ts"] for e in egress))


def _host_evidence(data: Payload, ref: dict[str, Any]) -> dict[str, Any]:
    """Evidence of a host-level alert: the event's own data, and no process, file or destination."""
    return {**data.model_dump(mode="json", exclude_none=True), "process": None, "files": [], "destinations": [],
            **ref}


def _who(p: ProcessFields) -> dict[str, Any]:
    return {"name": p.name, "pid": p.pid, "exe": p.exe, "uid": p.uid, "user": p.user,
            "cmdline": list(p.cmdline), "container": p.container.model_dump() if p.container else None}


def from_event(ev: Event) -> Draft | None:
    """Detections a single event decides: canaries, caps, budgets, drift, thresholds, agent loss, drops."""
    host, data, ts = ev.host, ev.data, ev.ts
    ref = {"events": [ev.id]}
    if isinstance(data, CanaryRead):
        who = _proc(_who(data))
        return Draft(f"canary:{host}:{data.path}:{data.pid}", host, "canary_read", "critical",
                     f"Canary file opened on {host} by {data.name or '?'} (pid {data.pid})",
                     f"{who} opened {data.path} on {host} at {clock(ts)}. Nothing legitimate reads this file: "
                     f"it is a honey file placed among the weights to catch whoever is looking through them.",
                     {"process": _who(data), "files": [data.path], "destinations": [], **ref}, ts, ts)
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
                     f"{_proc(_who(proc))} sent {format_size(data.bytes_in_window)} within "
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
                 last_seen, now, reopen=False)


def gap(host: str, missing: list[int], now: float) -> Draft:
    ranges = seq_ranges(missing)
    return Draft(f"gap:{host}", host, "sequence_gap", "medium", f"Events missing from {host}",
                 f"{len(missing)} events from {host} never arrived and the agent did not report dropping them "
                 f"(sequence numbers {ranges[:10]}). Events can be lost in transit or suppressed; look at what the "
                 f"host was doing then.", {"missing_seq_ranges": ranges[:100], "process": None, "files": [],
                                            "destinations": [], "events": []}, now, now)
