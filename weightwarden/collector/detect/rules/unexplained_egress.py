"""``unexplained_egress``: bytes left the host that no process was credited with and that headers
cannot explain (hand-built frames, a blinded sensor, traffic the agent cannot see).

The agent's ``unexplained_egress`` events are stored as egress rows no process is named for (address
``(unexplained)``), so the host-level rule counts them like unowned flows: a weights-sized
unexplained volume after a weights read is high there. Large by itself, it is an alert of its own:
medium from ``unexplained_min_bytes`` within a window of two ``burst_s``, high when the volume is
weights-sized (``host_high_ratio`` of the host's weights). One alert per host and UTC day.
"""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import Connection, text

from weightwarden.collector.detect.common import UNEXPLAINED, Draft, bucket, clock, day_of, day_start, pair_sums
from weightwarden.collector.detect.keys import AlertKey
from weightwarden.collector.detect.registry import register
from weightwarden.collector.detect.rule import Context, Hint, Lately, Look, Rule, SampleFacts
from weightwarden.collector.store import facts as q
from weightwarden.collector.store.rows import EgressRow
from weightwarden.units import format_size


class UnexplainedEgressRule(Rule[tuple[str, str]]):
    name = "unexplained"
    kinds = ("unexplained_egress",)
    quotes_weights = True
    renew_lately = True

    def subject(self, key: AlertKey) -> tuple[str, str] | None:
        return (key.host, key.parts[0]) if key.rule == self.name and len(key.parts) == 1 else None

    def _days(self, ts: float) -> set[str]:
        width = self.tune.burst_s
        k = bucket(ts, width)
        return {day_of((k - 1) * width), day_of(k * width)}  # the windows that hold it start in these days

    def on_samples(self, ctx: Context, conn: Connection, facts: SampleFacts, now: float) -> Iterable[tuple[str, str] | Look]:
        return sorted({(r["host"], d) for r in facts.rows if r["address"] == UNEXPLAINED
                       for d in self._days(float(r["ts"]))})

    def on_sweep(self, ctx: Context, conn: Connection, lately: Lately, now: float) -> Iterable[tuple[str, str] | Look]:
        out: set[tuple[str, str]] = set()
        for host, ts in conn.execute(text(
                "SELECT host, ts FROM egress WHERE received_at >= :r AND address = :a ORDER BY 1, 2"),
                {"r": lately.since_wall, "a": UNEXPLAINED}):
            out |= {(host, d) for d in self._days(float(ts))}
        return sorted(out)

    def judge(self, ctx: Context, conn: Connection, subject: tuple[str, str], hint: Hint, now: float) -> None:
        host, day = subject
        width = self.tune.burst_s
        lo = day_start(day)
        key = AlertKey(self.name, host, (day,))
        rows = [r for r in q.outward_rows(conn, host, lo, lo + 86400 + 2 * width) if r["address"] == UNEXPLAINED]
        windows = pair_sums((bucket(float(r["ts"]), width), float(r["bytes"])) for r in rows)
        first_k, last_k = bucket(lo, width), bucket(lo + 86400, width)
        weights = q.weights_of(conn, [host]).get(host, 0)
        best = max(((n, -k) for k, n in windows.items() if first_k <= k < last_k
                    and n >= self.tune.unexplained_min_bytes), default=None)
        if best is None:
            ctx.withdraw(conn, [key], now)
            return
        sent, k = int(best[0]), -best[1]
        inside = [r for r in rows if k <= bucket(float(r["ts"]), width) <= k + 1]
        ctx.put(conn, self.draft(key, host, inside, sent, k, weights), now)

    def draft(self, key: AlertKey, host: str, rows: list[EgressRow], sent: int, k: int, weights: int) -> Draft:
        sized = bool(weights) and sent >= self.tune.host_high_ratio * weights
        ifaces = sorted({str(r["name"]) for r in rows})
        first = min(float(r["first_ts"]) for r in rows)
        last = max(float(r["ts"]) for r in rows)
        explanation = (
            f"{format_size(sent)} left {host} ({', '.join(ifaces)}) between {clock(first)} and {clock(last)} that no "
            f"process was credited with and that protocol headers cannot explain: hand-built frames (a raw or "
            f"packet socket), a sensor someone blinded, or traffic the agent cannot see. "
            + (f"That is as much as the weights on this host ({format_size(weights)})."
               if sized else "Look at what else the host was doing: raw sockets, tampering, a new driver.")
            + " The host-level rule counts these bytes too, like flows with no owner.")
        evidence = {"rule": "unexplained", "process": None, "interfaces": ifaces, "bytes_sent": sent,
                    "window": {"start": k * self.tune.burst_s, "end": (k + 2) * self.tune.burst_s},
                    "weights_total_bytes": weights, "files": [],
                    "destinations": [{"address": UNEXPLAINED, "port": 0, "bytes": sent}],
                    "events": sorted({str(r["event_id"]) for r in rows})[:50]}
        return Draft(key, host, "unexplained_egress", "high" if sized else "medium",
                     f"{format_size(sent)} of unexplained egress from {host}", explanation, evidence, first, last)


RULE = register(UnexplainedEgressRule())
