"""The host-level rule, for when no link can be drawn: ``host_exfiltration`` and ``chunked_exfiltration``.

Weights were read on this host, and soon after (within ``host_window_s`` of a read) a volume
comparable to what was read left the host for places that are not allowlisted, whoever sent
it: processes with no link to the reader, many short-lived processes, bytes the agent could not
attribute to a process. Senders that read weights themselves, or that a linked alert already
explains, are left to that rule. Because nothing ties the sender to the reader, the rule says
so and stops at high; only many processes of one program moving, together, at least
everything that was read (the shape of an upload split to stay under per-process limits)
reach critical.

One alert per host and UTC day (the day the window starts in), so its key never depends on
which facts arrived first.
"""

from __future__ import annotations

from typing import TypedDict

from weightwarden.collector.detect.common import (
    Draft,
    Tuning,
    bucket,
    bytes_after,
    day_start,
    destinations,
    file_key,
    rank,
    read_volume,
    sources,
)
from weightwarden.collector.detect.keys import AlertKey
from weightwarden.collector.detect.sender import counted_windows
from weightwarden.collector.store.rows import EgressRow, ReadRow
from weightwarden.units import format_duration, format_size


class _Sender(TypedDict):
    pid: int
    name: str
    exe: str
    bytes: float


RULE = "host-level: weights were read on this host and soon after a comparable volume left it"


def _soon_after(row: EgressRow, reads: list[ReadRow], window: float) -> float | None:
    """The earliest start of a read that this row's bytes followed closely, if any."""
    first = float(row.get("first_ts") or row["ts"])
    starts = [float(r["first_ts"]) for r in reads
              if float(r["first_ts"]) <= float(row["ts"]) and first <= float(r["ts"]) + window]
    return min(starts) if starts else None


def _taken(reads: list[ReadRow], lo: float, hi: float, window: float) -> tuple[int, list[ReadRow]]:
    files: dict[str, int] = {}
    used = []
    for r in reads:
        if float(r["first_ts"]) < hi and float(r["ts"]) + window >= lo:
            files[file_key(r)] = max(files.get(file_key(r), 0), read_volume(r))
            used.append(r)
    return sum(files.values()), used


def _sensor_whole(inside: list[tuple[EgressRow, float]], blind: list[tuple[float, float]], lo: float,
                  hi: float) -> bool:
    """Did the sensor see everything in this window? Every row from a sample whose sensor was whole (the
    eBPF path, nothing degraded), and no span in which it may have been blind (tampered with) overlapping."""
    if any(b_lo < hi and b_hi >= lo for b_lo, b_hi in blind):
        return False
    return all(r.get("complete") == 1 for r, _n in inside)


def _level(ratio: float, tune: Tuning) -> str | None:
    return "high" if ratio >= tune.host_high_ratio else "medium" if ratio >= tune.host_medium_ratio else None


def host_exfiltration(host: str, day: str, reads: list[ReadRow], flows: list[EgressRow],
                      tune: Tuning, blind: list[tuple[float, float]] | None = None) -> Draft | None:
    """``reads``: reads (not holdings or copies) on the host around the day; ``flows``: outward rows
    of senders no linked rule covers; ``blind``: spans the sensor may have missed bytes in."""
    blind = blind or []
    width, window = tune.burst_s, tune.host_window_s
    day0 = day_start(day)
    first_k, last_k = bucket(day0, width), bucket(day0 + 86400, width)
    rows = []
    for row in flows:
        start = _soon_after(row, reads, window)
        if start is not None and (n := bytes_after(row, start)) > 0:
            rows.append((row, n))

    def taken_at(end: float) -> int:
        return _taken(reads, end - 2 * width, end, window)[0]

    windows = counted_windows(rows, taken_at, tune, 0)
    amount = {k: sent for k, sent, _taken, _loud in windows}
    best: tuple[int, float, int, str, str, int, list[str], bool] | None = None
    for k, sent, taken, loud in windows:
        if not first_k <= k < last_k or sent < tune.min_sent_bytes or taken < tune.min_read_bytes:
            continue
        # Only the window that holds the most of a burst (the first, if several hold all of it):
        # the same bytes seen again from the next window, perhaps the next day, are not a second incident.
        if not (sent > amount.get(k - 1, 0.0) and sent >= amount.get(k + 1, 0.0)):
            continue
        ratio = sent / max(taken, 1)
        inside = [(r, n) for r, n in rows if k <= bucket(float(r["ts"]), width) <= k + 1
                  and (r.get("accepted") != 1 or r["address"] in loud)]
        by_exe: dict[str, tuple[set[int], float]] = {}
        for r, n in inside:
            pids, total = by_exe.get(r["exe"] or "", (set(), 0.0))
            by_exe[r["exe"] or ""] = (pids | {int(r["pid"])}, total + n)
        _exe, (pids, top_bytes) = max(by_exe.items(), key=lambda kv: (kv[1][1], kv[0]))
        chunked = len(pids) >= tune.chunk_min_processes and top_bytes * 2 >= sent
        sev = "critical" if chunked and ratio >= tune.chunk_critical_ratio else _level(ratio, tune)
        if sev is None:
            continue
        whole = _sensor_whole(inside, blind, k * width, (k + 2) * width)
        if whole and rank(sev) > rank("medium"):
            # The sensor saw everything: bytes of named processes none of which is linked to the reader are
            # evidence of nothing, at most medium. High is for bytes nobody could be named for (unowned,
            # unexplained) reaching the weights' size by themselves.
            unnamed = sum(n for r, n in inside if int(r["pid"]) <= 0)
            sev = max(("medium", _level(unnamed / max(taken, 1), tune) or "medium"), key=rank)
        kind = "chunked_exfiltration" if chunked else "host_exfiltration"
        if best is None or (rank(sev), ratio) > (rank(best[3]), best[1]):
            best = (k, ratio, int(round(sent)), sev, kind, taken, loud, whole)
    if best is None:
        return None
    k, ratio, sent, severity, kind, taken, loud, whole = best
    lo, hi = k * width, (k + 2) * width
    inside = [(r, n) for r, n in rows if k <= bucket(float(r["ts"]), width) <= k + 1
              and (r.get("accepted") != 1 or r["address"] in loud)]
    _n, used = _taken(reads, lo, hi, window)
    dests = destinations(inside)
    senders: dict[tuple[int, str], _Sender] = {}
    for r, n in inside:
        s = senders.setdefault((int(r["pid"]), r["exe"] or ""), {"pid": int(r["pid"]), "name": r.get("name"),
                                                                 "exe": r["exe"], "bytes": 0.0})
        s["bytes"] += n
    ranked = sorted(senders.values(), key=lambda s: (-s["bytes"], s["pid"], s["exe"] or ""))
    top = ranked[0]
    files = sorted({s for r in used for s in (sources(r) if r["kind"] == "staged_read" else [r["path"]])})
    readers = sorted({(int(r["pid"]), r.get("name") or "?") for r in used})
    first = min(float(r.get("first_ts") or r["ts"]) for r, _ in inside)
    last = max(float(r["ts"]) for r, _ in inside)
    programs: dict[str, set[int]] = {}
    for s in ranked:
        programs.setdefault(s["exe"] or "?", set()).add(s["pid"])
    top_exe = max(programs.items(), key=lambda kv: (len(kv[1]), kv[0]))
    who = (f"{len(top_exe[1])} separate {top_exe[0].rsplit('/', 1)[-1]} processes" if kind == "chunked_exfiltration"
           else ", ".join(f"{s.get('name') or '?'} (pid {s['pid']})" if s["pid"] > 0 else "traffic no process could be named for"
                          for s in ranked[:3]))
    explanation = (
        f"{format_size(taken)} of model weights were read on {host} ({', '.join(files[:3])}"
        f"{' …' if len(files) > 3 else ''}; by {', '.join(f'{n} pid {p}' for p, n in readers[:3])}), and within "
        f"{format_duration(tune.host_window_s)} of that read {who} sent {format_size(sent)} to "
        f"{', '.join(d['address'] for d in dests[:3])}, which is not allowlisted: {ratio:.0%} of what was read. "
        f"No pipe, socket, copy or fork links these senders to the reader, so this is the host-level rule "
        f"({RULE})"
        + ("; splitting an upload into many short-lived processes is a way to stay under per-process limits."
           if kind == "chunked_exfiltration" else "; it cannot say the bytes were the weights, only that their "
           "volume matches. Look at who sent them.")
        + ((" The sensor saw everything in this window (the eBPF path, nothing degraded), and bytes of named "
            "processes that nothing links to the reader are evidence of nothing by their volume alone: "
            + ("those stay medium; what makes this high is the bytes no process could be named for."
               if rank(severity) > rank("medium") else "it stays medium.")) if whole else
           " The sensor may not have seen everything in this window (on its fallback path, degraded, tampered "
           "with, or an agent that does not say), so the volume may be the weights.")
    )
    evidence = {
        "rule": "host-level",
        "process": {"name": top.get("name"), "pid": top["pid"], "exe": top["exe"],
                    "pids": sorted(top_exe[1])[:50] if kind == "chunked_exfiltration" else [top["pid"]]},
        "senders": [{**s, "bytes": int(round(s["bytes"]))} for s in ranked[:20]],
        "processes": len({s["pid"] for s in ranked}),
        "readers": [p for p, _ in readers],
        "files": files,
        "bytes_read": taken,
        "bytes_sent": sent,
        "ratio": round(ratio, 4),
        "window": {"start": lo, "end": hi},
        "destinations": dests,
        "sensor_whole": whole,
        "events": sorted({str(r["event_id"]) for r in used if r.get("event_id")}
                         | {str(r["event_id"]) for r, _ in inside})[:50],
    }
    title = (f"{len(top_exe[1])} {top_exe[0].rsplit('/', 1)[-1]} processes uploaded {format_size(sent)} in chunks "
             f"from {host}" if kind == "chunked_exfiltration" else
             f"{format_size(sent)} left {host} soon after its weights were read")
    return Draft(day_key(host, day), host, kind, severity, title, explanation, evidence, first, last)


RULE_NAME = "host_exfiltration"


def day_key(host: str, day: str) -> AlertKey:
    """host_exfiltration:HOST:DAY: one alert per host and UTC day (the day the window starts in)."""
    return AlertKey(RULE_NAME, host, (day,))
