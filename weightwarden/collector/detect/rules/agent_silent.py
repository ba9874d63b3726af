"""``agent_silent``: an agent that stopped answering (its Last-Will, or nothing heard for three of its
heartbeat intervals), or that stopped cleanly (low). Resolved when the agent is back.

The verdict is a function of the agent's lifecycle facts (store ``lifecycle``), whatever order they
arrived in: its latest start, its latest clean stop, its latest Last-Will (by the connection it
belonged to), its latest heartbeat, and when the collector found it silent. A Last-Will belongs to a
connection (``connected_at``): a start after that connection, or a heartbeat sent after the will was
received, means the agent is back; a clean stop announced on that connection makes it a clean stop
(the will and ``agent_stopping`` often arrive in one batch, in either order). The time shown is when
the agent went silent: the last time anything was heard from it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from typing import cast

from sqlalchemy import Connection, text

from weightwarden.collector.detect.common import Draft, clock
from weightwarden.collector.detect.keys import AlertKey
from weightwarden.collector.detect.registry import register
from weightwarden.collector.detect.rule import Context, Hint, Look, Rule
from weightwarden.collector.store import agent_facts as a
from weightwarden.collector.store.host_rows import HostState, LifecycleRow
from weightwarden.events import AgentLost, AgentStarted, AgentStopping, Event, Heartbeat
from weightwarden.jsontypes import JsonObject
from weightwarden.units import format_duration

MIN_SILENT_S = 5.0  # never faster than this, whatever the interval: a sweep and a host flush each take ~1 s
GAPS_KEPT = 8
MAX_HOSTS = 100_000


def _gt(a: float | None, b: float | None) -> bool:
    return a is not None and b is not None and a > b


def episode(lc: HostState | LifecycleRow) -> tuple[str, str, float, float] | None:
    """The latest time the agent went away, from its lifecycle facts: (severity, why, since, key time).

    A Last-Will belongs to the connection that began at ``lost_conn``: a clean stop announced after
    that makes it part of the stop (low); otherwise the agent crashed or was cut off (high), and it went
    silent when it was last heard from. Silence the sweep found is high too, unless the agent's last
    word was a clean stop. The latest of these is the episode the alert describes."""
    stopped, conn, silent, beat = lc.get("stopped_at"), lc.get("lost_conn"), lc.get("silent_from"), lc.get("beat_at")
    found: list[tuple[float, str, str, float]] = []
    if conn is not None and not (stopped is not None and stopped >= conn):
        seen = lc.get("lost_seen")
        found.append((float(conn), "high", "lost", float(seen if seen is not None else conn)))
    if stopped is not None:
        found.append((float(stopped), "low", "stopped", float(stopped)))
    if silent is not None and not (stopped is not None and (beat is None or stopped >= beat)):
        found.append((float(silent), "high", "silent", float(silent)))
    if not found:
        return None
    at, severity, why, since = max(found, key=lambda e: (e[0], e[1] == "low"))
    return severity, why, since, at


def still_down(lc: HostState | LifecycleRow, why: str, last_seen: float | None, now: float, threshold: float) -> bool:
    """Is the agent still away? Back: a start after the episode, or (same run, reconnected) a heartbeat
    sent after the will arrived or after it went silent, or messages flowing again."""
    started, beat = lc.get("started_at"), lc.get("beat_at")
    if why == "lost":
        lost_at = lc.get("lost_at")
        return not _gt(started, lc.get("lost_conn")) and not (beat is not None and lost_at is not None
                                                              and beat >= lost_at)
    if why == "stopped":
        return not _gt(max(started or -1.0, beat or -1.0), lc.get("stopped_at"))
    silent = lc.get("silent_from")
    talking = last_seen is not None and silent is not None and last_seen > silent and now - last_seen < threshold
    return not _gt(beat, silent) and not _gt(started, silent) and not talking


def verdict(lc: HostState, last_seen: float | None, now: float, threshold: float) -> tuple[str, str, float, bool] | None:
    """(severity, why, since, down) of the latest episode; None if the agent never went away."""
    ep = episode(lc)
    if ep is None:
        return None
    severity, why, since, _at = ep
    return severity, why, since, still_down(lc, why, last_seen, now, threshold)


class AgentSilentRule(Rule[str]):
    name = "silent"
    kinds = ("agent_silent",)
    events = (AgentLost, AgentStopping, AgentStarted)
    renew_lately = True  # collectors judging at once from snapshots converge in the sweep

    def reset(self) -> None:
        self._beats: dict[str, deque[float]] = {}  # recent heartbeat times per host: its interval
        self._gap: dict[str, float] = {}
        self._down: set[str] = set()  # hosts this collector last judged down
        self._settled: dict[str, tuple[str, str, float, bool]] = {}  # host -> the verdict last written by the sweep

    def forget(self) -> None:
        self.reset()

    def subject(self, key: AlertKey) -> str | None:
        return key.host if key.rule == self.name and not key.parts else None

    def threshold(self, gap: float | None, lag: float = 0.0) -> float:
        """How long an agent may be quiet: the tuning's, or three of its own heartbeat intervals."""
        if self.tune.silent_after_s > 0:
            base = self.tune.silent_after_s
        elif gap:
            base = max(MIN_SILENT_S, self.tune.silent_intervals * gap)
        else:
            base = self.tune.silent_default_s
        return base + lag  # a collector behind its inbox has not heard what was said meanwhile

    # -- facts ---------------------------------------------------------------------------

    def on_event(self, ctx: Context, conn: Connection, ev: Event, now: float) -> Iterable[str | Look]:
        d = ev.data
        if isinstance(d, AgentLost):
            lc = a.lifecycle_of(conn, ev.host)
            lost_conn = lc["lost_conn"]
            if lost_conn is None or d.connected_at >= lost_conn:
                h = ctx.store.host(conn, ev.host)
                # When it went silent: the last time anything was heard from it (not when the will arrived).
                seen = h["last_seen"] if h else None
                a.note_lifecycle(conn, ev.host, lost_conn=d.connected_at, lost_at=now,
                                 lost_seen=float(seen) if seen is not None else d.connected_at)
        elif isinstance(d, AgentStopping):
            a.note_lifecycle(conn, ev.host, stopped_at=ev.ts, stop_reason=d.reason)
        elif isinstance(d, AgentStarted):
            a.note_lifecycle(conn, ev.host, started_at=ev.ts)
        return [ev.host]

    def on_heartbeats(self, ctx: Context, conn: Connection, events: list[Event], now: float) -> Iterable[str]:
        latest: dict[str, float] = {}
        for ev in events:
            if isinstance(ev.data, Heartbeat):
                latest[ev.host] = max(latest.get(ev.host, 0.0), ev.ts)
                beats = self._beats.setdefault(ev.host, deque(maxlen=GAPS_KEPT + 1))
                beats.append(ev.ts)
        if len(self._beats) > MAX_HOSTS:
            self._beats.clear()
            self._gap.clear()
        rows = []
        for host, ts in sorted(latest.items()):
            times = sorted(self._beats.get(host, ()))
            gaps = sorted(b - a for a, b in zip(times, times[1:], strict=False) if b - a >= 0.5)
            gap = gaps[len(gaps) // 2] if gaps else None
            known = self._gap.get(host)
            if gap is not None and (known is None or abs(gap - known) > 0.2 * known):
                self._gap[host] = gap
            else:
                gap = None  # unchanged: not written again
            rows.append({"h": host, "t": ts, "g": gap})
        if rows:
            conn.execute(text(
                "INSERT INTO lifecycle(host, beat_at, beat_gap) VALUES (:h, :t, :g) ON CONFLICT (host) DO UPDATE SET "
                "beat_at = CASE WHEN lifecycle.beat_at IS NULL OR excluded.beat_at > lifecycle.beat_at "
                "THEN excluded.beat_at ELSE lifecycle.beat_at END, "
                "beat_gap = coalesce(excluded.beat_gap, lifecycle.beat_gap)"), rows)
        # Hosts this collector saw go down are judged at once; others' are found by the sweep.
        return sorted(h for h in latest if h in self._down)

    # -- verdicts --------------------------------------------------------------------

    def judge(self, ctx: Context, conn: Connection, subject: str, hint: Hint, now: float) -> None:
        host = str(subject)
        h = ctx.store.host(conn, host) or {"host": host}
        self.settle(ctx, conn, cast(HostState, {**h, **a.lifecycle_of(conn, host)}), now)

    def sweep_hosts(self, ctx: Context, conn: Connection, hosts: list[HostState], now: float) -> list[HostState]:
        """The hosts whose verdict changed since this collector last wrote it, or that went quiet: a
        look at their rows, no statement for the others."""
        out = []
        for host in hosts:
            limit = self.threshold(host.get("beat_gap"), ctx.lag_s)
            seen = host.get("last_seen")
            found = verdict(host, seen, now, limit)
            quiet = (found is None or not found[3]) and seen is not None and now - float(seen) > limit
            if quiet or (found is not None and self._settled.get(host["host"]) != found):
                out.append(host)
        return out

    def sweep_host(self, ctx: Context, conn: Connection, host: HostState, now: float) -> None:
        limit = self.threshold(host.get("beat_gap"), ctx.lag_s)
        seen = host.get("last_seen")
        found = verdict(host, seen, now, limit)
        if (found is None or not found[3]) and seen is not None and now - float(seen) > limit:
            a.note_lifecycle(conn, host["host"], silent_from=float(seen))
            host = {**host, "silent_from": float(seen)}
            found = verdict(host, seen, now, limit)
        # Each sweep looks at every host: write only what changed since this collector last settled it.
        if found is not None and self._settled.get(host["host"]) != found:
            self.settle(ctx, conn, host, now)
            if len(self._settled) > MAX_HOSTS:
                self._settled.clear()
            self._settled[host["host"]] = found

    def settle(self, ctx: Context, conn: Connection, h: HostState, now: float) -> None:
        """Write what the lifecycle facts say: the alert open (and the host's status) or resolved."""
        host = h["host"]
        key = AlertKey(self.name, host)
        limit = self.threshold(h.get("beat_gap"), ctx.lag_s)
        found = verdict(h, h.get("last_seen"), now, limit)
        if found is None:
            return  # never went away
        severity, why, since, down = found
        # The latest episode described (also once it is over: the same facts, the same alert, in any
        # order), then opened or resolved as the facts say.
        draft = self.draft(host, severity, why, since, h)
        draft.reopen = False
        ctx.put(conn, draft, now)
        if down:
            self._down.add(host)
            if h.get("status") != why:
                ctx.store.update_host(conn, host, status=why, lost_at=since)
            ctx.resolve(conn, key, "", now, open_=True, reopen_after=since)
        else:
            self._down.discard(host)
            if h.get("status") in ("lost", "silent", "stopped"):
                ctx.store.update_host(conn, host, status="online")
            ctx.resolve(conn, key, "the agent is back", now)

    def draft(self, host: str, severity: str, why: str, since: float, h: HostState) -> Draft:
        evidence: JsonObject = {"last_seen": since, "reason": why, "process": None, "files": [],
                                    "destinations": [], "events": []}
        if why == "stopped":
            title = f"Agent on {host} stopped"
            text_ = (f"The agent on {host} stopped cleanly at {clock(since)} ({h.get('stop_reason') or 'no reason given'}). "
                     f"Caps stay in force, but nothing on {host} is being watched until it is back.")
        elif why == "lost":
            title = f"Agent on {host} went silent"
            text_ = (f"The agent on {host} lost its broker connection without saying goodbye (its Last-Will arrived); "
                     f"it was last heard from at {clock(since)}: it crashed, was killed, or the host is cut off. "
                     f"Caps stay in force, but nothing on {host} is being watched until it is back.")
        else:
            title = f"Agent on {host} went silent"
            text_ = (f"Nothing has arrived from {host} since {clock(since)} "
                     f"(over {format_duration(self.threshold(h.get('beat_gap')))}, three of its heartbeat intervals); "
                     f"heartbeats are missing. The agent may be dead or the host cut off.")
        return Draft(AlertKey(self.name, host), host, "agent_silent", severity, title, text_, evidence, since, since)


RULE = register(AgentSilentRule())
