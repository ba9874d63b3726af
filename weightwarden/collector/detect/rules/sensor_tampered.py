"""``sensor_tampered``: someone changed the sensor behind the agent's back (a program or link detached
or replaced, a map rewritten, the fallback's rules flushed). High, and never resolved by the
collector: only an analyst knows whether the host can be trusted again. The span the sensor may
have been blind in is kept: the host-level rule treats bytes in it as seen by no one."""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import Connection

from weightwarden.collector.detect.common import Draft, clock
from weightwarden.collector.detect.event_rule import host_evidence, stamp
from weightwarden.collector.detect.registry import register
from weightwarden.collector.detect.rule import Context, Look, Rule
from weightwarden.collector.store import agent_facts as a
from weightwarden.events import Event, SensorTampered
from weightwarden.units import format_duration


class SensorTamperedRule(Rule[str]):
    name = "tamper"
    kinds = ("sensor_tampered",)
    events = (SensorTampered,)

    def on_event(self, ctx: Context, conn: Connection, ev: Event, now: float) -> Iterable[str | Look]:
        d = ev.data
        if not isinstance(d, SensorTampered):
            return ()
        first = min(d.blind_from_ts if d.blind_from_ts is not None else d.detected_ts, d.detected_ts)
        a.add_blind_span(conn, ev.host, first, d.detected_ts, ev.id)
        changes = "; ".join(f"{c.kind.replace('_', ' ')}: {c.name}" + (f" ({c.detail})" if c.detail else "")
                            for c in d.changes[:10]) or "unspecified changes"
        blind = (f"The sensor may have missed bytes for {format_duration(d.detected_ts - first)} (from "
                 f"{clock(first)}); uploads in that span are judged as if no one saw them." if first < d.detected_ts
                 else "")
        draft = Draft(self.key(ev.host), ev.host, "sensor_tampered", "high", f"Sensor tampered with on {ev.host}",
                      f"Someone changed the agent's sensor on {ev.host} behind its back, found at "
                      f"{clock(d.detected_ts)}: {changes}. The agent "
                      f"{'put back what it could' if d.reattached else 'could not put it back'}. {blind} Only "
                      f"someone with root on the host can do this; the collector never resolves this alert itself.",
                      host_evidence(d, ev), first, d.detected_ts)
        ctx.put(conn, stamp(draft, ev), now)
        return ()


RULE = register(SensorTamperedRule())
