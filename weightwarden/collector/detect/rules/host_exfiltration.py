"""``host_exfiltration`` / ``chunked_exfiltration``: weights were read, then a comparable volume left
with no link found (detect.host). Subject: a host's UTC day.

Senders a linked rule judges (those holding weight facts of their own, and those with a linked
alert) are left to it. Whether the sensor saw everything in a window (each row says whether its
sample's sensor was whole; tampering leaves blind spans) decides whether named, unlinked senders
can make it more than medium.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from sqlalchemy import Connection

from weightwarden.collector.detect.common import bucket, day_of, day_start, same_process
from weightwarden.collector.detect.host import RULE_NAME, day_key, host_exfiltration
from weightwarden.collector.detect.keys import AlertKey
from weightwarden.collector.detect.registry import register
from weightwarden.collector.detect.rule import Context, Hint, Lately, Look, Rule, SampleFacts
from weightwarden.collector.detect.sender import sender_of_key
from weightwarden.collector.store import agent_facts as a
from weightwarden.collector.store import facts as q
from weightwarden.collector.store import verdicts
from weightwarden.collector.store.rows import ReadRow
from weightwarden.events import Event, SensorTampered


def days(lo: float, hi: float, width: float) -> set[str]:
    """The days whose windows contain times in [lo, hi] (a window starting the day before may)."""
    first, last = bucket(lo, width) - 2, bucket(hi, width) + 1
    last = min(last, first + int(8 * 86400 // width))  # a read open for weeks: its first week
    return {day_of(k * width) for k in range(first, last + 1)}


class HostRule(Rule[tuple[str, str]]):
    name = RULE_NAME
    kinds = ("host_exfiltration", "chunked_exfiltration")
    after = ("exfiltration",)  # senders a linked alert covers are left to it
    events = (SensorTampered,)  # a blind span changes what the days it overlaps can say
    renew_lately = True

    def on_event(self, ctx: Context, conn: Connection, ev: Event, now: float) -> Iterable[tuple[str, str] | Look]:
        data = ev.data
        if not isinstance(data, SensorTampered):
            return []
        first = data.blind_from_ts if data.blind_from_ts is not None else data.detected_ts
        return sorted((ev.host, d) for d in days(min(first, data.detected_ts), data.detected_ts, self.tune.burst_s))

    def subject(self, key: AlertKey) -> tuple[str, str] | None:
        return (key.host, key.parts[0]) if key.rule == self.name and len(key.parts) == 1 else None

    def on_verdicts(self, ctx: Context, conn: Connection, changed: Sequence[AlertKey],
                    now: float) -> Iterable[tuple[str, str]]:
        """A linked verdict that appeared or went changes which senders are left to this rule."""
        out: set[tuple[str, str]] = set()
        for key in changed:
            found = sender_of_key(key)
            if found is None:
                continue
            row = verdicts.alert_row(conn, str(key))
            if row is not None:
                lo, hi = float(row["first_ts"]), float(row["last_ts"])
            else:
                last = q.last_outward(conn, key.host, found[0])
                if last is None:
                    continue
                lo, hi = last - 2 * self.tune.burst_s, last
            out |= {(key.host, d) for d in days(lo, hi, self.tune.burst_s)}
        return sorted(out)

    def on_samples(self, ctx: Context, conn: Connection, facts: SampleFacts, now: float) -> Iterable[tuple[str, str] | Look]:
        out: set[tuple[str, str]] = set()
        for r in facts.rows:
            if r["host"] in facts.with_reads and (not r["allowed"] or r["port"] == 53):
                out |= {(r["host"], d) for d in days(float(r["ts"]), float(r["ts"]), self.tune.burst_s)}
        return sorted(out)

    def on_reads(self, ctx: Context, conn: Connection, host: str, row: ReadRow, grew: bool,
                 now: float) -> Iterable[tuple[str, str] | Look]:
        if row["kind"] not in ("read", "staged_read"):
            return []
        return sorted((host, d) for d in days(float(row["first_ts"]), float(row["ts"]) + self.tune.host_window_s,
                                              self.tune.burst_s))

    def on_sweep(self, ctx: Context, conn: Connection, lately: Lately, now: float) -> Iterable[tuple[str, str] | Look]:
        senders, reads, _dests = q.recent_units(conn, lately.since_wall, self.tune.link_window_s)
        out: set[tuple[str, str]] = set()
        for host, first, last in reads:
            out |= {(host, d) for d in days(first, last + self.tune.host_window_s, self.tune.burst_s)}
        for host in sorted({h for h, _pid in senders}):
            span = q.recent_span(conn, host, lately.since_wall)
            if span is not None:
                out |= {(host, d) for d in days(*span, self.tune.burst_s)}
        return sorted(out)

    def judge(self, ctx: Context, conn: Connection, subject: tuple[str, str], hint: Hint, now: float) -> None:
        host, day = subject
        width, window = self.tune.burst_s, self.tune.host_window_s
        lo = day_start(day)
        hi = lo + 86400 + width
        key = day_key(host, day)
        reads = [r for r in q.reads_between(conn, host, lo - window - 2 * width, hi)
                 if r["kind"] in ("read", "staged_read")]
        if not reads:
            ctx.withdraw(conn, [key], now)
            return
        # Senders a linked rule judges: those holding weight facts of their own, and those with a linked alert.
        covered = [(int(r["pid"]), r.get("start_time"))
                   for r in q.reads_between(conn, host, lo - self.tune.link_window_s, hi)]
        covered += [found for k in ctx.keys_of(conn, "exfiltration", host) if (found := sender_of_key(k)) is not None]
        flows = [r for r in q.outward_rows(conn, host, lo, hi)
                 if not any(same_process(int(r["pid"]), r.get("start_time"), p, s) for p, s in covered)]
        draft = host_exfiltration(host, day, reads, flows, self.tune, a.blind_spans(conn, host, lo - 2 * width, hi))
        if draft is None:
            ctx.withdraw(conn, [key], now)
        else:
            ctx.put(conn, draft, now)


RULE = register(HostRule())
