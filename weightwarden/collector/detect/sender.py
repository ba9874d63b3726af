"""A process that had the weights sends them off the host: ``exfiltration`` and ``staged_exfiltration``.

"Had the weights" is a link, each one a real flow of data into the sender:

- ``self``: it read them, holds them mapped, or (``staged``) read a copy a weights reader wrote;
- ``pipe``: it reads a pipe that a weights reader writes (``tar c weights | curl -T -``); holding
  the same end of a pipe (every process writing one log) is not a flow and links nothing;
- ``relay``: a weights reader handed it bytes over a unix socket or loopback (a proxy, an ssh
  ControlMaster, the local DNS resolver), possibly through further relays; what the sender
  is blamed for is bounded by what it was handed;
- ``fork``: it is a fork of a weights reader (same program, same command line, started after
  the read), so it has the reader's memory.

A common parent, a shared supervisor or an inherited descriptor links nothing.

Volumes are counted after the earliest link began (exactly: bytes that left before it do not
count), in windows of two ``burst_s`` buckets, so a server's trickle over days does not add
up to a theft while a burst does. Bytes on connections the peer opened (``accepted``) are
replies: serving. They count only where one client receives a weights-sized share.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from weightwarden.collector.detect.common import (
    OTHER,
    Draft,
    Proc,
    Tuning,
    bucket,
    bump,
    bytes_after,
    clock,
    destinations,
    file_key,
    pair_sums,
    proc_text,
    projected_seconds,
    rank,
    read_volume,
    sources,
)
from weightwarden.collector.detect.keys import AlertKey
from weightwarden.collector.store.rows import EgressRow, ReadRow
from weightwarden.units import format_duration, format_rate, format_size


@dataclass
class Link:
    kind: str  # self, staged, pipe, relay, fork
    reader: Proc  # the process that read the weights: pid, name, exe, start_time
    reads: list[ReadRow]
    t0: float  # from when the sender could have had the bytes
    via: str = ""  # the pipe inode, or the relay channel(s)
    # Relays only: per hop, (time, bytes) handed on; the sender is blamed for at most the least of them.
    hops: list[list[tuple[float, int]]] | None = None
    chain: list[Proc] = field(default_factory=list)  # relays between reader and sender

    def cap(self, t: float) -> float | None:
        if self.hops is None:
            return None
        return float(min(sum(n for ts, n in hop if ts < t) for hop in self.hops))


@dataclass
class Window:
    k: int
    sent: float
    taken: int
    ratio: float
    severity: str
    links: list[Link]
    rows: list[tuple[EgressRow, float]]  # counted rows in the window
    served: list[tuple[EgressRow, float]]  # accepted rows not counted (serving)


def taken_by(links: list[Link], t: float) -> tuple[int, dict[str, int]]:
    """What the sender had by time ``t``: per file, the most any active link gave it."""
    files: dict[str, int] = {}
    for link in links:
        if link.t0 >= t:
            continue
        for r in link.reads:
            if r["kind"] != "copy" and float(r["first_ts"]) < t:
                key = file_key(r)
                files[key] = max(files.get(key, 0), read_volume(r))
    return sum(files.values()), files


def severity_of(ratio: float, tune: Tuning) -> str | None:
    if ratio >= tune.critical_ratio:
        return "critical"
    if ratio >= tune.high_ratio:
        return "high"
    if ratio >= tune.medium_ratio:
        return "medium"
    return None


def counted_windows(rows: list[tuple[EgressRow, float]], taken_at: Callable[[float], int], tune: Tuning,
                    min_taken: int) -> list[tuple[int, float, int, list[str]]]:
    """(k, bytes that count, what was had, suspicious clients) for each window with any bytes.

    Outward bytes always count. Accepted bytes (replies on connections the peer opened) count
    only for a client that received ``serve_client_ratio`` of what was had within the window;
    the "(other)" bucket (clients beyond the agent's top destinations) is many clients, never one.
    """
    width = tune.burst_s
    outward = pair_sums((bucket(float(r["ts"]), width), n) for r, n in rows if r.get("accepted") != 1)
    clients: dict[str, list[tuple[int, float]]] = {}
    for r, n in rows:
        if r.get("accepted") == 1 and r["address"] != OTHER:
            clients.setdefault(r["address"], []).append((bucket(float(r["ts"]), width), n))
    per_client = {a: pair_sums(items) for a, items in clients.items()}
    ks = set(outward) | {k for p in per_client.values() for k in p}
    out = []
    for k in sorted(ks):
        taken = int(taken_at((k + 2) * width))
        if taken < min_taken:
            continue
        loud = sorted(a for a, p in per_client.items() if p.get(k, 0.0) >= tune.serve_client_ratio * taken)
        out.append((k, outward.get(k, 0.0) + sum(per_client[a][k] for a in loud), taken, loud))
    return out


def peak(rows: list[tuple[EgressRow, float]], links: list[Link], tune: Tuning) -> Window | None:
    """The window with the most severe verdict (then the highest ratio, then the earliest)."""
    width = tune.burst_s
    best: Window | None = None
    for k, sent, taken, loud in counted_windows(rows, lambda t: taken_by(links, t)[0], tune, tune.min_read_bytes):
        end = (k + 2) * width
        active = [link for link in links if link.t0 < end]
        caps = [link.cap(end) for link in active]
        if active and all(c is not None for c in caps):
            sent = min(sent, sum(c or 0.0 for c in caps))  # relays only: no more than was handed over
        if sent < tune.min_sent_bytes:
            continue
        ratio = sent / max(taken, 1)
        sev = severity_of(ratio, tune)
        if sev is None:
            continue
        if best is not None and (rank(sev), ratio) <= (rank(best.severity), best.ratio):
            continue
        inside = [(r, n) for r, n in rows if k <= bucket(float(r["ts"]), width) <= k + 1]
        counted = [(r, n) for r, n in inside if r.get("accepted") != 1 or r["address"] in loud]
        served = [(r, n) for r, n in inside if r.get("accepted") == 1 and r["address"] not in loud]
        best = Window(k, sent, taken, ratio, sev, active, counted, served)
    return best


def _own(links: list[Link], t0: float) -> bool:
    """Did the earliest link begin with the sender's own read?"""
    return any(link.kind in ("self", "staged") and link.t0 == t0 for link in links)


def worth_judging(rows: list[EgressRow], links: list[Link], tune: Tuning) -> bool:
    """A cheap look at some of a sender's rows (those around new facts): could they make any
    verdict? Outward bytes reaching the medium ratio in a window, or an accepted row whose rate,
    kept up for a whole window, would make one client's share too large to be serving (a
    client can only reach that share if some row of its runs at that rate)."""
    if not links:
        return False
    t0 = min(link.t0 for link in links)
    counted = [(r, n) for r in rows if (n := bytes_after(r, t0, _own(links, t0))) > 0]
    taken = taken_by(links, float("inf"))[0]
    if taken < tune.min_read_bytes:
        return False
    for r, n in counted:
        if r.get("accepted") == 1 and r["address"] != OTHER:
            seconds = max(float(r["ts"]) - float(r.get("first_ts") or r["ts"]), 1e-3)
            if n / seconds >= tune.serve_client_ratio * taken / (2 * tune.burst_s):
                return True
    outward = [(r, n) for r, n in counted if r.get("accepted") != 1]
    return any(sent >= tune.min_sent_bytes and sent / max(t, 1) >= tune.medium_ratio
               for _k, sent, t, _loud in counted_windows(outward, lambda end: taken_by(links, end)[0], tune, 1))


def _files(links: list[Link]) -> list[str]:
    out: set[str] = set()
    for link in links:
        for r in link.reads:
            if r["kind"] == "copy":
                continue
            out.update(sources(r) if r["kind"] == "staged_read" else [r["path"]])
    return sorted(out)


def link_text(link: Link) -> str:
    r = link.reader
    who = f"{r.get('name') or '?'} (pid {r.get('pid')})"
    if link.kind == "self":
        holds = any(x["kind"] == "holder" for x in link.reads)
        return "holds them mapped in memory" if holds and all(x["kind"] == "holder" for x in link.reads) else \
            "read them itself"
    if link.kind == "staged":
        copies = sorted({x["path"] for x in link.reads})
        by = "a process that had read them" if link.reader.get("pid") == link.reads[0].get("pid") else \
            f"{who}, which had read them"
        return f"read {', '.join(copies[:3])}, a staged copy of them written by {by}"
    if link.kind == "pipe" and link.chain:
        stages = " <- ".join(f"{h.get('name') or '?'} (pid {h.get('pid')})" for h in reversed(link.chain))
        return (f"reads {link.via}, fed through the pipeline stage{'s' if len(link.chain) > 1 else ''} {stages} "
                f"from what {who} wrote after reading them")
    if link.kind == "pipe":
        return f"reads {link.via}, which {who} writes after reading them"
    if link.kind == "fork":
        return f"is a fork of {who}, which had read them (same program and command line, started after the read)"
    hops = " -> ".join(f"{h.get('name') or '?'} (pid {h.get('pid')})" for h in link.chain)
    return f"was handed bytes over {link.via} by {hops or who}, and {who} had read them"


def exfiltration(host: str, sender: Proc, flows: list[EgressRow], links: list[Link],
                 contacts: Callable[[list[str]], dict[str, float]], weights_total: int,
                 tune: Tuning) -> Draft | None:
    """The verdict on one sender (one process: pid and start time) from every stored fact about it."""
    if not links or not flows:
        return None
    t0 = min(link.t0 for link in links)
    rows = [(r, n) for r in flows if (n := bytes_after(r, t0, _own(links, t0))) > 0]
    win = peak(rows, links, tune)
    if win is None:
        return None
    dests = destinations(win.rows)
    if not dests:
        return None
    severity = win.severity
    seen = contacts([d["address"] for d in dests])  # when this program first contacted each
    fresh = [d["address"] for d in dests if seen.get(d["address"], t0) >= t0 - 1]
    if severity == "high" and dests[0]["address"] in fresh:
        severity = bump(severity)  # most of it went somewhere this program never sent to before it had the weights
    staged = any(link.kind == "staged" for link in win.links)
    kind = "staged_exfiltration" if staged else "exfiltration"
    _taken, per_file = taken_by(win.links, (win.k + 2) * tune.burst_s)
    files = _files(win.links)
    first = min(float(r.get("first_ts") or r["ts"]) for r, _ in win.rows)
    last = max(float(r["ts"]) for r, _ in win.rows)
    rate = win.sent * 8 / max(last - first, 1.0)
    total = max(weights_total, win.taken)
    remaining = max(0.0, total - win.sent)
    eta = projected_seconds(remaining, rate)
    readers = sorted({int(link.reader["pid"]) for link in win.links})
    who = proc_text(sender)
    how = "; it ".join(link_text(link) for link in win.links)
    dest_text = ", ".join(f"{d['address']}:{d['port']}" for d in dests[:3])
    eta_text = ("all of it has left" if remaining == 0 else
                f"the remaining {format_size(int(remaining))} would take {format_duration(eta)}" if eta is not None
                else f"{format_size(int(remaining))} remain")
    served = destinations(win.served)
    serve_text = (f" It also answered {len(served)} client{'s' if len(served) != 1 else ''} on connections they "
                  f"opened ({format_size(sum(d['bytes'] for d in served))}); that is serving and is not counted."
                  if served else "")
    explanation = (
        f"{who} on {host} had {format_size(win.taken)} of model weights ({', '.join(files[:3])}"
        f"{' …' if len(files) > 3 else ''}) from {clock(t0)}: it {how}. It then sent {format_size(int(win.sent))} "
        f"to {dest_text}{' (never contacted by this program before)' if fresh else ''}, which is not allowlisted, "
        f"between {clock(first)} and {clock(last)}. That is {win.ratio:.0%} of what it had; at that rate "
        f"({format_rate(rate)}) {eta_text}.{serve_text}")
    timeline = sorted(
        [{"ts": float(r["first_ts"]), "what": f"{r['kind']} {r['path']} ({format_size(read_volume(r))}) "
                                               f"by {r.get('name') or '?'} pid {r['pid']}"}
         for link in win.links for r in link.reads if r["kind"] != "copy"]
        + [{"ts": float(r["ts"]), "what": f"sent {format_size(int(n))} to {r['address']}:{r['port']}"}
           for r, n in sorted(win.rows, key=lambda x: (x[0]["ts"], x[0]["address"], x[0]["port"]))[:20]],
        key=lambda x: (x["ts"], x["what"]))[:40]
    events = sorted({str(r["event_id"]) for link in win.links for r in link.reads if r.get("event_id")}
                    | {str(r["event_id"]) for r, _ in win.rows})[:50]
    evidence = {
        "rule": "linked",
        "process": {k: sender.get(k) for k in ("name", "pid", "exe", "uid", "ppid", "start_time", "container")},
        "readers": readers,
        "links": [{"kind": link.kind, "reader": {k: link.reader.get(k) for k in ("name", "pid", "exe")},
                   "via": link.via or None, "since": link.t0,
                   "relays": [{k: h.get(k) for k in ("name", "pid")} for h in link.chain]} for link in win.links],
        "files": files,
        "bytes_by_file": dict(sorted(per_file.items())),
        "staged_from": sorted({s for link in win.links for r in link.reads for s in sources(r)}),
        "bytes_read": win.taken,
        "bytes_sent": int(round(win.sent)),
        "ratio": round(win.ratio, 4),
        "window": {"start": win.k * tune.burst_s, "end": (win.k + 2) * tune.burst_s},
        "destinations": dests,
        "new_destinations": sorted(fresh),
        "serving": {"clients": len(served), "bytes": sum(d["bytes"] for d in served)},
        "weights_total_bytes": total,
        "rate_bps": round(rate, 1),
        "projected_seconds_for_rest": eta,
        "timeline": timeline,
        "events": events,
    }
    title = (f"{'Staged copy of weights' if staged else 'Weights'} uploaded by {sender.get('name') or '?'} "
             f"(pid {sender['pid']}) on {host} to {dests[0]['address']}")
    return Draft(sender_key(host, int(sender["pid"]), sender.get("start_time")), host, kind, severity, title,
                 explanation, evidence, t0, last)


RULE_NAME = "exfiltration"


def sender_key(host: str, pid: int, start: float | None) -> AlertKey:
    """exfiltration:HOST:PID[:START]: one sender process (a pid alone when its start is unknown)."""
    return AlertKey(RULE_NAME, host, (str(pid),) if start is None else (str(pid), f"{float(start):.2f}"))


def sender_of_key(key: AlertKey) -> tuple[int, float | None] | None:
    """The (pid, start) an exfiltration key names."""
    if key.rule != RULE_NAME or not key.parts or not key.parts[0].isdigit():
        return None
    try:
        return int(key.parts[0]), float(key.parts[1]) if len(key.parts) > 1 else None
    except ValueError:
        return None
