"""What every detection shares: its tuning, the alert draft it returns, and how bytes are counted.

Everything here is pure. Volumes are counted on a fixed time grid (``Tuning.burst_s``
buckets, compared two at a time), so a verdict is a function of the stored facts and
never of the moment, or the order, in which they arrived.
"""

from __future__ import annotations

import calendar
import hashlib
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import NotRequired, Required, TypedDict

from weightwarden.collector.detect.keys import AlertKey
from weightwarden.collector.store.rows import AlertDraftRow, EgressRow, Evidence, ReadRow
from weightwarden.jsontypes import JsonObject

LEVELS = ["low", "medium", "high", "critical"]
# How a read was measured when its byte count says nothing (io_uring, splice, an mmap made
# before the agent started): the process may have read the whole file.
UNMEASURED = {"io_uring", "splice", "estimate", "mmap"}
# Pseudo-destinations for bytes the agent could not attribute to one place.
OTHER, UNOWNED, UNEXPLAINED = "(other)", "(unowned)", "(unexplained)"
NOWHERE = (OTHER, UNOWNED, UNEXPLAINED)  # not one destination: never a slow trickle's, never a first contact


@dataclass
class Tuning:
    link_window_s: float = 7 * 86400.0  # a process (pid + start time) stays linked to what it read this long
    pid_only_s: float = 3600.0  # without a start time, a pid names the same process only this long
    min_read_bytes: int = 1 << 20  # reads smaller than this are not "took the weights"
    min_sent_bytes: int = 1 << 20  # uploads smaller than this are noise
    burst_s: float = 3600.0  # volumes are compared over two consecutive buckets of this length
    medium_ratio: float = 0.02  # sent / what the sender had, in one window
    high_ratio: float = 0.10
    critical_ratio: float = 0.50
    serve_client_ratio: float = 0.25  # one client of a server receiving this share is not being served
    host_window_s: float = 3600.0  # host-level rule: "soon after" a read ended
    host_medium_ratio: float = 0.10
    host_high_ratio: float = 0.50  # "a volume comparable to the weights"
    chunk_min_processes: int = 5
    chunk_critical_ratio: float = 1.0
    slow_window_s: float = 86400.0
    slow_min_span_s: float = 3600.0
    slow_min_bytes: int = 256 << 20
    slow_ratio: float = 0.05  # of the host's weights, sent to one place within slow_window_s: medium
    slow_high_ratio: float = 0.25  # ... high
    relay_depth: int = 3  # reader -> relay -> relay -> sender at most
    allowed_remote_prefixes: tuple[str, ...] = ()  # network storage that is meant to hold weights
    # An agent is silent after this long without a word (0: silent_intervals of its own heartbeat interval,
    # silent_default_s until the collector has seen two heartbeats).
    silent_after_s: float = 0.0
    silent_intervals: float = 3.0
    silent_default_s: float = 15.0
    gap_grace_s: float = 10.0
    unexplained_min_bytes: int = 64 << 20  # unexplained egress this large in a window is an alert of its own

    def looks_back_s(self) -> float:
        """How far back any rule reads stored egress, reads and relays: retention keeps at least this."""
        return max(self.link_window_s, self.slow_window_s + self.slow_min_span_s, 2 * self.burst_s,
                   self.host_window_s)


def load_tuning(path: str) -> Tuning:
    """A YAML (or JSON) mapping of Tuning fields; an unknown field or a wrong type is an error
    naming it. Durations are seconds, sizes bytes."""
    import yaml

    try:
        with Path(path).open() as fh:
            doc = yaml.safe_load(fh) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"{path}: {exc}") from None
    if not isinstance(doc, dict):
        raise ValueError(f"{path}: expected a mapping of detection settings")
    defaults = Tuning()
    out: dict[str, float | int | tuple[str, ...]] = {}
    for key, value in doc.items():
        if not isinstance(key, str) or not hasattr(defaults, key):
            raise ValueError(f"{path}: unknown setting {key!r} (known: {', '.join(sorted(vars(defaults)))})")
        want = type(getattr(defaults, key))
        if want is tuple:
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ValueError(f"{path}: {key} is a list of strings")
            value = tuple(value)
        elif want is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, want) or isinstance(value, bool) or (
                isinstance(value, (int, float)) and (value < 0 or value != value)):
            raise ValueError(f"{path}: {key} must be a non-negative {want.__name__}, not {value!r}")
        out[key] = value
    return Tuning(**out)  # type: ignore[arg-type]  # each value's type was checked against the field's above


@dataclass
class Draft:
    """An alert as a detection sees it. ``mode`` says how it is stored: "facts" drafts replace
    the alert (they were computed from every stored fact); "event" drafts come from one event
    and the latest event by its own time (``order``) wins."""

    key: AlertKey
    host: str
    kind: str
    severity: str
    title: str
    explanation: str
    evidence: Evidence
    first_ts: float
    last_ts: float
    reopen: bool = True
    mode: str = "facts"
    count: int | None = None  # how often the incident happened, when the facts say (else: each change counts)
    order: str = ""
    id: str = field(init=False)

    def __post_init__(self) -> None:
        if self.key.host != self.host:
            raise ValueError(f"alert key {self.key} is not for host {self.host!r}")
        self.id = hashlib.sha256(str(self.key).encode()).hexdigest()[:16]

    def to_row(self) -> AlertDraftRow:
        return {"key": str(self.key), "id": self.id, "host": self.host, "kind": self.kind, "severity": self.severity,
                "title": self.title, "explanation": self.explanation, "evidence": self.evidence,
                "first_ts": self.first_ts, "last_ts": self.last_ts, "reopen": self.reopen, "count": self.count}


def bump(severity: str, steps: int = 1) -> str:
    return LEVELS[min(len(LEVELS) - 1, LEVELS.index(severity) + steps)]


def rank(severity: str | None) -> int:
    return -1 if severity is None else LEVELS.index(severity)


def clock(ts: float) -> str:
    return time.strftime("%H:%M:%S", time.gmtime(ts)) + " UTC"


def day_of(ts: float) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(ts))


def day_start(day: str) -> float:
    return float(calendar.timegm(time.strptime(day, "%Y-%m-%d")))


class Proc(TypedDict, total=False):
    """A process as the rules describe it (a sender, a reader, a relay on the way): what its rows say."""

    pid: Required[int]
    start_time: float | None
    name: str | None
    exe: str | None
    uid: int | None
    ppid: int | None
    pipes: str | None
    cmd_hash: str | None
    container: JsonObject | None


class ProcessEvidence(TypedDict):
    """A process as an event names it (event_rule.who): the pid may be unknown."""

    name: str | None
    pid: int | None
    exe: str | None
    uid: int | None
    user: str | None
    cmdline: list[str]
    container: JsonObject | None


class Destination(TypedDict):
    """Bytes counted to one address and port, as evidence lists them."""

    address: str
    port: int
    bytes: int
    protocol: NotRequired[str]
    dns_name: NotRequired[str]
    accepted: NotRequired[bool]


def proc_text(p: Proc | ProcessEvidence) -> str:
    name = p.get("name") or (p.get("exe") or "?").rsplit("/", 1)[-1]
    container = p.get("container")
    where = f", container {container_text(container)}" if container else ""
    return f"{name} (pid {p.get('pid')}, uid {p.get('uid')}{where})"


def container_text(c: JsonObject) -> str:
    if c.get("pod_name"):
        return f"pod {c.get('pod_namespace') or '?'}/{c['pod_name']}"
    ident = str(c.get("id") or "")[:12]
    return f"{c.get('runtime') or 'container'} {ident}".strip() if ident else str(c.get("unit") or c.get("cgroup") or "?")


def projected_seconds(remaining: float, rate_bps: float) -> float | None:
    if remaining <= 0:
        return 0.0
    return remaining * 8 / rate_bps if rate_bps > 0 else None


def bytes_after(row: EgressRow, t: float, own: bool = False) -> float:
    """The part of a row's bytes that left at or after ``t``. A row says its bytes left within
    [first_ts, ts]; one that ended before ``t`` counts nothing, one that began after counts
    whole, and one that spans ``t`` counts in proportion, unless its times are only the
    sample's (the agent did not say when this destination's bytes left) and ``own`` says the
    sender itself began reading at ``t``: a process that read the weights and sent within the
    same second most likely sent after reading."""
    last = float(row["ts"])
    first = float(row["first_ts"] if row.get("first_ts") is not None else last)
    n = float(row["bytes"])
    if last < t:
        return 0.0
    if first >= t or last <= first or (own and not row.get("exact")):
        return n
    return n * (last - t) / (last - first)


def bucket(ts: float, width: float) -> int:
    return math.floor(ts / width)


def pair_sums(items: Iterable[tuple[int, float]]) -> dict[int, float]:
    """Per-bucket amounts -> the amount in each pair of buckets (k, k+1), keyed by k."""
    per: dict[int, float] = {}
    for k, n in items:
        per[k] = per.get(k, 0.0) + n
    out: dict[int, float] = {}
    for k, n in per.items():
        out[k] = out.get(k, 0.0) + n
        out[k - 1] = out.get(k - 1, 0.0) + n
    return out


def destinations(rows: Iterable[tuple[EgressRow, float]]) -> list[Destination]:
    """(row, bytes counted) -> one entry per address and port, biggest first."""
    by: dict[tuple[str, int], tuple[Destination, float]] = {}
    for row, n in rows:
        key = (row["address"], int(row["port"] or 0))
        d, total = by.get(key) or ({"address": key[0], "port": key[1], "bytes": 0}, 0.0)
        if protocol := row.get("protocol"):
            d["protocol"] = protocol
        if dns_name := row.get("dns_name"):
            d["dns_name"] = dns_name
        if row.get("accepted") == 1:
            d["accepted"] = True
        by[key] = (d, total + n)
    out: list[Destination] = [{**d, "bytes": int(round(total))} for d, total in by.values()]
    return sorted(out, key=lambda d: (-d["bytes"], d["address"], d["port"]))


def read_volume(r: ReadRow) -> int:
    """How much of the weights a read, holding or staged read gave its process."""
    if r["kind"] == "copy":
        return 0
    n, size = int(r["bytes"] or 0), int(r.get("size") or 0)
    if n == 0 and r.get("how") in UNMEASURED:
        n = size
    return min(n, size) if size else n


def file_key(r: ReadRow) -> str:
    return str(r["path"])


def sources(r: ReadRow) -> list[str]:
    return [s for s in (r.get("staged_of") or "").split("\n") if s]


def same_process(pid_a: int, start_a: float | None, pid_b: int, start_b: float | None) -> bool:
    """One process, not two that had the same pid: start times equal to the clock tick when
    both are known; otherwise the caller bounds the time apart (Tuning.pid_only_s)."""
    if pid_a != pid_b:
        return False
    return start_a is None or start_b is None or abs(start_a - start_b) < 0.02
