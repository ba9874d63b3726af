"""``slow_exfiltration``: one destination receives, over hours, a large share of the host's weights
(detect.slow). Subject: (host, destination address, UTC day).

Every destination-day touched is judged in a few statements however many there are (most have no
verdict to write and cost nothing of their own); a destination under a steady trickle is judged at
most every ``SLOW_EVERY_S`` and once more when its facts stop.
"""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import Connection

from weightwarden.collector.detect.common import NOWHERE, day_of, day_start
from weightwarden.collector.detect.keys import AlertKey
from weightwarden.collector.detect.registry import register
from weightwarden.collector.detect.rule import Context, Hint, Lately, Look, Rule, SampleFacts
from weightwarden.collector.detect.slow import RULE_NAME, SlowWindow, slow, slow_key, slow_of_key, slow_peak
from weightwarden.collector.store import facts as q
from weightwarden.collector.store import verdicts
from weightwarden.collector.store.rows import HourlyRow

SLOW_EVERY_S = 60.0  # a destination under a steady trickle is re-judged at most this often...
SLOW_SETTLE_S = 3.0  # ...and once more when its facts stop
MAX_DONE = 100_000
Unit = tuple[str, str, str]  # host, address, day


class SlowRule(Rule[Unit]):
    name = RULE_NAME
    kinds = ("slow_exfiltration",)
    quotes_weights = True
    renew_lately = True

    def reset(self) -> None:
        self._done: dict[Unit, float] = {}  # when each destination-day was last judged (the pipeline's clock)

    def subject(self, key: AlertKey) -> Unit | None:
        return slow_of_key(key)

    def _days(self, first: float, last: float) -> set[str]:
        """The days whose slow windows (ending in that day) hold bytes sent in [first, last]."""
        return {day_of(first), day_of(last), day_of(last + self.tune.slow_window_s - 3600)}

    def on_samples(self, ctx: Context, conn: Connection, facts: SampleFacts, now: float) -> Iterable[Unit | Look]:
        out: set[Unit] = set()
        clock = ctx.clock()
        for r in facts.rows:
            if (not r["allowed"] or r["port"] == 53) and r["accepted"] != 1 and r["address"] not in NOWHERE:
                for day in self._days(float(r["ts"]), float(r["ts"])):
                    if clock - self._done.get((r["host"], r["address"], day), -1e18) >= SLOW_EVERY_S:
                        out.add((r["host"], r["address"], day))
        return sorted(out)

    def on_sweep(self, ctx: Context, conn: Connection, lately: Lately, now: float) -> Iterable[Unit | Look]:
        _senders, _reads, dests = q.recent_units(conn, lately.since_wall, self.tune.link_window_s)
        out: set[Unit] = set()
        for host, address, first, last, received in dests:
            for day in sorted(self._days(first, last)):
                # _done is on the pipeline's clock, received on the wall clock: compare ages.
                done = self._done.get((host, address, day))
                age = None if done is None else now - done
                if age is None or (lately.wall - received < age + 2 * SLOW_SETTLE_S and
                                   (age >= SLOW_EVERY_S or lately.wall - received >= SLOW_SETTLE_S)):
                    out.add((host, address, day))
        return sorted(out)

    def judge_many(self, ctx: Context, conn: Connection, subjects: dict[Unit, Hint], now: float) -> int:
        units: list[Unit] = sorted(subjects)
        if len(self._done) > MAX_DONE:
            self._done.clear()
        clock = ctx.clock()
        for unit in units:
            self._done[unit] = clock
        try:
            with conn.begin_nested():
                judged = self.peaks(conn, units)
        except Exception as exc:  # noqa: BLE001 - counted; the sweep tries again
            ctx.note_error(f"slow ({len(units)} destinations): {exc!r}")
            return 1
        failed = 0
        for host, address, day, win, weights in judged:
            try:
                with conn.begin_nested():
                    self.write(ctx, conn, host, address, day, win, weights, now)
            except Exception as exc:  # noqa: BLE001 - one destination's odd facts must not stop the others
                failed += 1
                ctx.note_error(f"slow {(host, address, day)!r}: {exc!r}")
        return failed

    def peaks(self, conn: Connection, units: list[Unit]) -> list[tuple[str, str, str, SlowWindow | None, int]]:
        """Every destination-day at once (a few statements however many): those with a verdict to
        write, or an alert to withdraw. Most have neither, and cost no statement of their own."""
        if not units:
            return []
        starts = [day_start(d) for _h, _a, d in units]
        hourly = q.hourly_to_many(conn, sorted({(h, a) for h, a, _d in units}), min(starts) - self.tune.slow_window_s,
                                  max(starts) + 86400)
        by_pair: dict[tuple[str, str], list[HourlyRow]] = {}
        for row in hourly:
            by_pair.setdefault((row["host"], row["address"]), []).append(row)
        weights = q.weights_of(conn, sorted({h for h, _a, _d in units}))
        existing = verdicts.existing_keys(conn, [str(slow_key(h, a, d)) for h, a, d in units])
        out = []
        for host, address, day in units:
            win = slow_peak(by_pair.get((host, address), []), day, weights.get(host, 0), self.tune)
            if win is not None or str(slow_key(host, address, day)) in existing:
                out.append((host, address, day, win, weights.get(host, 0)))
        return out

    def write(self, ctx: Context, conn: Connection, host: str, address: str, day: str, win: SlowWindow | None,
              weights_total: int, now: float) -> None:
        if win is None:
            ctx.withdraw(conn, [slow_key(host, address, day)], now)
        else:
            ctx.put(conn, slow(host, address, day, win, q.senders_to(conn, host, address, win.lo, win.hi),
                               weights_total, self.tune), now)


RULE = register(SlowRule())
