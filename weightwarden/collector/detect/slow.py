"""``slow_exfiltration``: one destination receives, over hours, a large share of the host's weights.

Counted per hour; a window is ``slow_window_s`` of whole hours, and each UTC day has one alert
per destination (the day the window ends in): its key never depends on arrival order.
Replies on connections the peer opened are serving and do not count.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TypedDict

from weightwarden.collector.detect.common import Draft, Tuning, day_start, projected_seconds
from weightwarden.collector.detect.keys import AlertKey
from weightwarden.collector.store.rows import HourlyRow, SenderTotal
from weightwarden.units import format_duration, format_rate, format_size


@dataclass
class SlowWindow:
    lo: float
    hi: float
    sent: int
    first: float
    last: float


class _Sender(TypedDict):
    pid: int
    exe: str
    name: str
    bytes: int


def slow_peak(hourly: list[HourlyRow], day: str, weights_total: int, tune: Tuning) -> SlowWindow | None:
    """``hourly``: rows of (hour, bytes, first_ts, ts) to one destination. The heaviest window
    ending in ``day`` that spans at least ``slow_min_span_s`` and carries at least the floor."""
    hours = {int(h["hour"]): h for h in hourly}
    span_h = max(1, int(tune.slow_window_s // 3600))
    first_h = int(day_start(day) // 3600)
    floor = max(tune.slow_min_bytes, tune.slow_ratio * weights_total)
    best: SlowWindow | None = None
    for end_h in range(first_h, first_h + 24):
        if end_h not in hours:
            continue  # a window ends where the trickle is: one that only carries yesterday's bytes is yesterday's
        inside = [hours[h] for h in range(end_h - span_h + 1, end_h + 1) if h in hours]
        if not inside:
            continue
        sent = sum(int(h["bytes"]) for h in inside)
        first = min(float(h["first_ts"]) for h in inside)
        last = max(float(h["ts"]) for h in inside)
        if sent < floor or last - first < tune.slow_min_span_s:
            continue
        if best is None or sent > best.sent:
            best = SlowWindow((end_h - span_h + 1) * 3600.0, (end_h + 1) * 3600.0, sent, first, last)
    return best


def _who(p: _Sender) -> str:
    return f"{p['name']} (pid {p['pid']})"


def slow(host: str, address: str, day: str, win: SlowWindow, senders: list[SenderTotal], weights_total: int,
         tune: Tuning) -> Draft:
    span = win.last - win.first
    rate = win.sent * 8 / max(span, 1.0)
    remaining = max(0, weights_total - win.sent)
    eta = projected_seconds(remaining, rate)
    procs: list[_Sender] = [{"pid": int(s["pid"]), "exe": s["exe"], "name": s.get("name") or (s["exe"] or "?").rsplit("/", 1)[-1],
              "bytes": int(s["bytes"])} for s in senders]
    top: Mapping[str, object] = procs[0] if procs else {"pid": None, "exe": None, "name": None}
    explanation = (
        f"{host} has sent {format_size(win.sent)} to {address} over {format_duration(span)} (average "
        f"{format_rate(rate)}), slowly enough to stay under rate caps. That is "
        f"{win.sent / max(weights_total, 1):.0%} of the {format_size(weights_total)} of weights on this host; at this "
        f"pace the rest would take {format_duration(eta) if eta is not None else 'unknown'}. Senders: "
        f"{', '.join(_who(p) for p in procs[:5]) or 'unknown'}.")
    evidence = {"rule": "slow", "process": {k: top.get(k) for k in ("pid", "exe", "name")}, "processes": procs,
                "destinations": [{"address": address, "port": None, "bytes": win.sent}],
                "bytes_sent": win.sent, "span_seconds": span, "rate_bps": round(rate, 1),
                "window": {"start": win.lo, "end": win.hi}, "weights_total_bytes": weights_total,
                "projected_seconds_for_rest": eta, "files": [],
                "events": sorted({str(s["event_id"]) for s in senders if s.get("event_id")})}
    severity = "high" if win.sent >= tune.slow_high_ratio * weights_total else "medium"
    return Draft(slow_key(host, address, day), host, "slow_exfiltration", severity,
                 f"Slow upload of {format_size(win.sent)} from {host} to {address} over {format_duration(span)}",
                 explanation, evidence, win.first, win.last)


RULE_NAME = "slow"


def slow_key(host: str, address: str, day: str) -> AlertKey:
    """slow:HOST:ADDRESS:DAY (an IPv6 address holds ':' itself: the day is the last part)."""
    return AlertKey(RULE_NAME, host, (*address.split(":"), day))


def slow_of_key(key: AlertKey) -> tuple[str, str, str] | None:
    if key.rule != RULE_NAME or len(key.parts) < 2:
        return None
    return key.host, ":".join(key.parts[:-1]), key.parts[-1]
