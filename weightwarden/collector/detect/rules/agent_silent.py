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
from typing import Any

from sqlalchemy import Connection, text

from weightwarden.collector.detect.common import Draft, clock
from weightwarden.collector.detect.keys import AlertKey
from weightwarden.collector.detect.registry import register
from weightwarden.collector.detect.rule import Context, Hint, Look, Row, Rule
from weightwarden.collector.store import facts as q
from weightwarden.events import AgentLost, AgentStarted, AgentStopping, Event, Heartbeat
from weightwarden.units import format_duration

MIN_SILENT_S = 5.0  # never faster than this, whatever the interval: a sweep and a host flush each take ~1 s
GAPS_KEPT = 8
MAX_HOSTS = 100_000


def _gt(a: float | None, b: float | None) -> bool:
    return a is not None and b is not None and a > b


def verdict(lc: Row, last_seen: float | None, now: float, threshold: float) -> tuple[str, str, float] | None:
    """(severity, why, since) while the agent is down; None when it is up (or was never down)."""
    started, stopped, conn, lost_at = lc.get("started_at"), lc.get("stopped_at"), lc.get("lost_conn"), lc.get("lost_at")
    beat, silent = lc.get("beat_at"), lc.get("silent_from")
    will_down = conn is not None and not _gt(started, conn) and not (beat is not None and lost_at is not None
                                                                      and beat >= lost_at)
    stop_down = stopped is not None and not _gt(max(started or -1.0, beat or -1.0), stopped)
    talking = last_seen is not None and silent is not None and last_seen > silent and now - last_seen < threshold
    silence_down = silent is not None and not _gt(beat, silent) and not _gt(started, silent) and not talking
    clean = stopped is not None and conn is not None and stopped >= conn
    if will_down and not clean and conn is not None:
        return "high", "lost", float(silent if silent is not None else conn)
    if silence_down and not stop_down and silent is not None:
        return "high", "silent", float(silent)
    since = stopped if stopped is not None else conn
    if (stop_down or will_down) and since is not None:
        return "low", "stopped", float(since)
    return None


class AgentSilentRule(Rule[str]):
    name = "silent"
    kinds = ("agent_silent",)
    events = (AgentLost, AgentStopping, AgentStarted)

    def reset(self) -> None:
        self._beats: dict[str, deque[float]] = {}  # recent heartbeat times per host: its interval
        self._gap: dict[str, float] = {}
        self._down: set[str] = set()  # hosts this collector last judged down

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
            lc = q.lifecycle_of(conn, ev.host)
            if lc.get("lost_conn") is None or d.connected_at >= lc["lost_conn"]:
                h = ctx.store.host(conn, ev.host) or {}
                # When it went silent: the last time anything was heard from it (not when the will arrived).
                seen = h.get("last_seen")
                q.note_lifecycle(conn, ev.host, lost_conn=d.connected_at, lost_at=now,
                                 silent_from=float(seen) if seen is not None and seen < now else d.connected_at)
        elif isinstance(d, AgentStopping):
            q.note_lifecycle(conn, ev.host, stopped_at=ev.ts, stop_reason=d.reason)
        elif isinstance(d, AgentStarted):
            q.note_lifecycle(conn, ev.host, started_at=ev.ts)
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
        self.settle(ctx, conn, {**h, **q.lifecycle_of(conn, host)}, now)

    def sweep_host(self, ctx: Context, conn: Connection, host: Row, now: float) -> None:
        limit = self.threshold(host.get("beat_gap"), ctx.lag_s)
        seen = host.get("last_seen")
        down = verdict(host, seen, now, limit)
        if down is None and seen is not None and now - float(seen) > limit:
            q.note_lifecycle(conn, host["host"], silent_from=float(seen))
            host = {**host, "silent_from": float(seen)}
        self.settle(ctx, conn, host, now)

    def settle(self, ctx: Context, conn: Connection, h: Row, now: float) -> None:
        """Write what the lifecycle facts say: the alert open (and the host's status) or resolved."""
        host = h["host"]
        key = AlertKey(self.name, host)
        limit = self.threshold(h.get("beat_gap"), ctx.lag_s)
        down = verdict(h, h.get("last_seen"), now, limit)
        if down is None:
            self._down.discard(host)
            if h.get("status") in ("lost", "silent", "stopped"):
                ctx.store.update_host(conn, host, status="online")
            ctx.resolve(conn, key, "the agent is back", now)
            return
        severity, why, since = down
        self._down.add(host)
        if h.get("status") != why:
            ctx.store.update_host(conn, host, status=why, lost_at=h.get("lost_at") or now)
        ctx.put(conn, self.draft(host, severity, why, since, h, now), now)
        ctx.resolve(conn, key, "", now, open_=True)

    def draft(self, host: str, severity: str, why: str, since: float, h: Row, now: float) -> Draft:
        evidence: dict[str, Any] = {"last_seen": since, "reason": why, "process": None, "files": [],
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
