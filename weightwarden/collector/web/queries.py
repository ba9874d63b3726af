"""What the console and the API read: alert queue, one alert's story, hosts and their egress over time.

Read-only SQL, the same on SQLite and PostgreSQL. Every list is bounded
(``limit``), and each query is served by an index (see the migration that adds
them), so a page stays fast at 100,000 alerts and 10 M egress rows
(``bench/console.py``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TypedDict, cast

from sqlalchemy import Connection, RowMapping, text

from weightwarden.collector.jsonread import as_list, as_object, json_int
from weightwarden.collector.store.database import SEVERITY_RANK, backdated_by
from weightwarden.collector.store.host_rows import HostRow
from weightwarden.collector.store.rows import AlertRow, SqlParams
from weightwarden.collector.web.triage import TrailEntry, audit
from weightwarden.jsontypes import JsonObject, JsonValue

STATES = ("open", "acknowledged", "resolved")
MAX_LIMIT = 1000
STORY_EVENTS = 40  # the alert's most recent events are enough to name people and places


class QueryError(ValueError):
    """A filter that makes no sense (bad state, severity, time); the message says which."""


@dataclass(frozen=True)
class AlertFilter:
    states: tuple[str, ...] = ()
    min_severity: str | None = None
    host: str | None = None
    kind: str | None = None
    since: float | None = None
    until: float | None = None
    q: str | None = None
    assignee: str | None = None
    limit: int = 100
    offset: int = 0

    def __post_init__(self) -> None:
        for s in self.states:
            if s not in STATES:
                raise QueryError(f"state {s!r}: one of {', '.join(STATES)}")
        if self.min_severity and self.min_severity not in SEVERITY_RANK:
            raise QueryError(f"severity {self.min_severity!r}: one of {', '.join(SEVERITY_RANK)}")
        if not 1 <= self.limit <= MAX_LIMIT:
            raise QueryError(f"limit must be 1..{MAX_LIMIT}")
        if self.offset < 0:
            raise QueryError("offset must be >= 0")


class StoryRead(TypedDict):
    ts: float
    type: str
    pid: JsonValue
    user: JsonValue
    name: JsonValue
    path: JsonValue
    bytes: JsonValue
    first_ts: JsonValue
    last_ts: JsonValue


class Story(TypedDict):
    """Who read which weight file, when, how much; where the bytes went: the events' and the evidence's words."""

    processes: list[JsonObject]
    destinations: list[JsonObject]
    reads: list[StoryRead]
    timeline: JsonValue
    bytes_read: JsonValue
    bytes_sent: JsonValue
    rate_bps: JsonValue
    projected_seconds_for_rest: JsonValue
    weights_total_bytes: JsonValue


class AlertDetail(AlertRow, total=False):
    audit: list[TrailEntry]
    story: Story


class ListedHost(HostRow):
    open_alerts: int


class SeriesLine(TypedDict):
    address: str
    allowed: bool
    bytes: int
    bps: list[float]


class CapLine(TypedDict):
    name: str | None
    rate_bps: int | float | None
    action: str | None


class EgressSeries(TypedDict):
    """A host's upload rate per destination over a window (the host page's chart, the API's egress)."""

    host: str
    since: float
    until: float
    step: float
    series: list[SeriesLine]
    caps: list[CapLine]


def _alert_row(mapping: RowMapping) -> AlertRow:
    row = dict(mapping)
    row["evidence"] = json.loads(row["evidence"])
    row.pop("severity_rank", None)
    # Flagged: the newest event it rests on is dated long before the collector raised it.
    raised = row.get("raised_at") or row.get("created_at") or 0
    row["backdated"] = backdated_by(float(row.get("last_ts") or 0), float(raised)) or None
    return cast(AlertRow, row)


def list_alerts(conn: Connection, f: AlertFilter) -> list[AlertRow]:
    """Alerts as ``alerts list --json`` gives them, most severe first, then most recently raised."""
    where: list[str] = ["1=1"]
    params: SqlParams = {"lim": f.limit, "off": f.offset}
    if f.states:
        where.append(f"state IN ({', '.join(f':s{i}' for i in range(len(f.states)))})")
        params.update({f"s{i}": s for i, s in enumerate(f.states)})
    if f.min_severity:
        where.append("severity_rank >= :rank")
        params["rank"] = SEVERITY_RANK[f.min_severity]
    for col in ("host", "kind", "assignee"):
        value = getattr(f, col)
        if value:
            where.append(f"{col} = :{col}")
            params[col] = value
    # The window is the collector's: when an alert was raised and last changed, not the times its
    # agent wrote on the events (a backdated event must not hide its alert from "since 24h").
    if f.since is not None:
        where.append("updated_at >= :since")
        params["since"] = f.since
    if f.until is not None:
        where.append("created_at <= :until")
        params["until"] = f.until
    if f.q:
        # Case-insensitive on both databases; '%' and '_' typed by the user are matched literally.
        needle = "%" + f.q.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        # Title and host, not the long explanation: the title names process, pid, host and destination,
        # and scanning it keeps a search under the floor at 100,000 alerts (bench/console.py).
        where.append("(id = :qexact OR key = :qexact OR lower(title) LIKE :q ESCAPE '\\' "
                     "OR lower(host) LIKE :q ESCAPE '\\')")
        params.update(q=needle, qexact=f.q)
    sql = (f"SELECT * FROM alerts WHERE {' AND '.join(where)} "
           "ORDER BY severity_rank DESC, raised_at DESC LIMIT :lim OFFSET :off")
    return [_alert_row(r) for r in conn.execute(text(sql), params).mappings()]


def facets(conn: Connection) -> dict[str, list[str]]:
    """Hosts and kinds to offer in the queue's filters."""
    hosts = conn.execute(text("SELECT host FROM hosts ORDER BY host LIMIT 2000")).scalars().all()
    return {"hosts": [str(h) for h in hosts]}


def get_alert(conn: Connection, ref: str) -> AlertRow | None:
    row = conn.execute(text("SELECT * FROM alerts WHERE id = :k OR key = :k"), {"k": ref}).mappings().first()
    return _alert_row(row) if row else None


def alert_detail(conn: Connection, ref: str) -> AlertDetail | None:
    """One alert with its audit trail and its story (people, files, places, in order)."""
    found = get_alert(conn, ref)
    if found is None:
        return None
    alert = cast(AlertDetail, found)
    alert["audit"] = [cast(TrailEntry, {k: a[k] for k in ("user", "action", "comment", "ts", "detail", "via")})
                      for a in audit(conn, alert["id"])]
    alert["story"] = story(conn, alert)
    return alert


def _ident(p: JsonObject) -> JsonObject:
    return {k: p.get(k) for k in ("pid", "ppid", "name", "exe", "uid", "user", "cmdline", "container")
            if p.get(k) not in (None, [], "")}


def story(conn: Connection, alert: AlertRow) -> Story:
    """Who read which weight file, when, how much; where the bytes went (address, port, DNS name)."""
    ev = alert["evidence"] or {}
    proc = as_object(ev.get("process"))
    pids = {p for p in [proc.get("pid"), *as_list(ev.get("readers")), *as_list(proc.get("pids"))] if p is not None}
    ids = [str(i) for i in as_list(ev.get("events"))][-STORY_EVENTS:]
    people: dict[int, JsonObject] = {}
    names: dict[str, str] = {}
    reads: list[StoryRead] = []
    if ids:
        params = {f"e{i}": v for i, v in enumerate(ids)}
        rows = conn.execute(text(f"SELECT id, type, ts, data FROM events WHERE id IN "
                                 f"({', '.join(':' + k for k in params)}) ORDER BY ts"), params).mappings()
        for r in rows:
            data = json.loads(r["data"])
            if r["type"] == "egress_sample":
                for p in data.get("processes") or []:
                    for d in p.get("destinations") or []:
                        if d.get("name"):
                            names[d["address"]] = d["name"]
                    if p.get("pid") in pids or not pids:
                        people.setdefault(int(p["pid"]), {}).update(_ident(p))
            elif r["type"] in ("file_access", "weights_copy", "weight_holder", "canary_read"):
                if data.get("pid") is not None:
                    people.setdefault(int(data["pid"]), {}).update(_ident(data))
                reads.append({"ts": r["ts"], "type": r["type"], "pid": data.get("pid"), "user": data.get("user"),
                              "name": data.get("name"),
                              "path": data.get("path") or data.get("destination"),
                              "bytes": data.get("bytes_read") or data.get("resident_bytes") or data.get("destination_size"),
                              "first_ts": data.get("first_ts"), "last_ts": data.get("last_ts")})
    if proc.get("pid") is not None:
        # The events' view of the sender wins; the evidence fills what they lack.
        known = people.setdefault(json_int(proc["pid"]), {})
        known.update({k: v for k, v in _ident(proc).items() if k not in known})
    destinations: list[JsonObject] = [{**d, "name": d.get("name") or names.get(str(d.get("address")))}
                                      for d in map(as_object, as_list(ev.get("destinations")))]
    return {"processes": [people[p] for p in sorted(people)], "destinations": destinations, "reads": reads,
            "timeline": ev.get("timeline") or [], "bytes_read": ev.get("bytes_read"), "bytes_sent": ev.get("bytes_sent"),
            "rate_bps": ev.get("rate_bps"), "projected_seconds_for_rest": ev.get("projected_seconds_for_rest"),
            "weights_total_bytes": ev.get("weights_total_bytes")}


# -- hosts ---------------------------------------------------------------------


def hosts(conn: Connection) -> list[ListedHost]:
    rows = conn.execute(text(
        "SELECT h.*, (SELECT count(*) FROM alerts a WHERE a.host = h.host AND a.state != 'resolved') AS open_alerts "
        "FROM hosts h ORDER BY h.host")).mappings()
    return [cast(ListedHost, dict(r)) for r in rows]


def _latest(conn: Connection, host: str, type_: str) -> JsonObject | None:
    row = conn.execute(text("SELECT ts, data FROM events WHERE host = :h AND type = :t AND type <> 'egress_sample' "
                            "ORDER BY seq DESC LIMIT 1"), {"h": host, "t": type_}).mappings().first()
    return {"ts": row["ts"], **json.loads(row["data"])} if row else None


def host_detail(conn: Connection, host: str) -> JsonObject | None:
    row = conn.execute(text("SELECT * FROM hosts WHERE host = :h"), {"h": host}).mappings().first()
    if row is None:
        return None
    drift_alert = conn.execute(text("SELECT id, state, last_ts, explanation FROM alerts WHERE host = :h "
                                    "AND kind = 'enforcement_drift' ORDER BY last_ts DESC LIMIT 1"),
                               {"h": host}).mappings().first()
    open_alerts = conn.execute(text("SELECT id, kind, severity, state, title, last_ts FROM alerts WHERE host = :h "
                                    "AND state != 'resolved' ORDER BY severity_rank DESC, raised_at DESC LIMIT 50"),
                               {"h": host}).mappings()
    sensor = conn.execute(text("SELECT state, state_at, whole_at, degraded_at FROM sensors WHERE host = :h"),
                          {"h": host}).mappings().first()
    return {**dict(row), "sensor": _sensor(sensor) if sensor else None, "heartbeat": _latest(conn, host, "heartbeat"),
            "policy_applied": _latest(conn, host, "policy_applied"),
            "agent_started": _latest(conn, host, "agent_started"),
            "drift": {"last_event": _latest(conn, host, "enforcement_drift"),
                      "alert": dict(drift_alert) if drift_alert else None},
            "open_alerts": [dict(a) for a in open_alerts]}


def _sensor(row: RowMapping) -> JsonObject:
    """The sensor's state as its latest report says (path, kernel, features off with the kernel's reasons)."""
    state = json.loads(row["state"]) if row.get("state") else {}
    off: list[JsonValue] = [{"name": name, "reason": f.get("reason")} for name, f in sorted((state.get("features") or {}).items())
           if not f.get("on")]
    whole = state.get("path") == "ebpf" and not state.get("degraded") and not off
    return {"path": state.get("path"), "kernel": state.get("kernel"), "degraded": bool(state.get("degraded")),
            "detail": state.get("detail"), "off": off, "whole": whole, "at": row.get("state_at")}


def egress_series(conn: Connection, host: str, since: float, until: float, buckets: int = 60,
                  top: int = 6) -> EgressSeries:
    """Upload rate per destination in ``buckets`` steps over [since, until), the busiest ``top`` apart."""
    if until <= since:
        raise QueryError("until must be after since")
    buckets = max(1, min(buckets, 500))
    step = (until - since) / buckets
    # floor() of a non-negative number: CAST truncates on SQLite, rounds on PostgreSQL.
    bucket = ("CAST(floor((ts - :since) / :step) AS BIGINT)" if conn.dialect.name == "postgresql"
              else "CAST((ts - :since) / :step AS INTEGER)")
    rows = conn.execute(text(
        f"SELECT address, max(allowed) AS allowed, {bucket} AS b, sum(bytes) AS bytes FROM egress "
        "WHERE host = :h AND ts >= :since AND ts < :until GROUP BY address, b"),
        {"h": host, "since": since, "until": until, "step": step}).all()
    totals: dict[str, int] = {}
    allowed: dict[str, bool] = {}
    for address, allow, _b, nbytes in rows:
        totals[address] = totals.get(address, 0) + int(nbytes)
        allowed[address] = bool(allow)
    keep = [a for a, _ in sorted(totals.items(), key=lambda kv: -kv[1])[:top]]
    series: dict[str, list[float]] = {a: [0.0] * buckets for a in keep}
    other = [0.0] * buckets
    for address, _allow, b, nbytes in rows:
        i = min(int(b), buckets - 1)
        series.get(address, other)[i] += int(nbytes) * 8 / step
    out: list[SeriesLine] = [{"address": a, "allowed": allowed[a], "bytes": totals[a], "bps": series[a]} for a in keep]
    if any(other):
        out.append({"address": "other", "allowed": False, "bytes": sum(v for a, v in totals.items() if a not in series),
                    "bps": other})
    policy = _latest(conn, host, "policy_applied") or {}
    caps: list[CapLine] = []
    for c in map(as_object, as_list(policy.get("caps"))):
        name, rate, action = c.get("name"), c.get("rate_bps"), c.get("action")
        caps.append({"name": name if isinstance(name, str) else None,
                     "rate_bps": rate if isinstance(rate, (int, float)) and not isinstance(rate, bool) else None,
                     "action": action if isinstance(action, str) else None})
    return {"host": host, "since": since, "until": until, "step": step, "series": out, "caps": caps}
