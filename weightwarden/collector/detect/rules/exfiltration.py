"""``exfiltration`` / ``staged_exfiltration``: a process that had the weights sends them (detect.sender).

Subject: a sender, (host, pid); every process that pid named (start times) is judged. New rows of
a sender whose links did not change are looked at first (a server answering its clients costs a
few indexed lookups per sample, not a scan of its history); new links (a read, a hand-over, a pipe
stage) have it judged in full, with every process down the chain from them.
"""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import Connection

from weightwarden.collector.detect.common import Proc, bucket, same_process
from weightwarden.collector.detect.keys import AlertKey
from weightwarden.collector.detect.links import identities, sender_of
from weightwarden.collector.detect.registry import register
from weightwarden.collector.detect.rule import Context, Hint, Lately, Look, Rule, SampleFacts
from weightwarden.collector.detect.sender import RULE_NAME, Link, exfiltration, sender_of_key, worth_judging
from weightwarden.collector.store import facts as q
from weightwarden.collector.store.rows import EgressRow, ReadRow

Sender = tuple[str, int]  # (host, pid)


class ExfiltrationRule(Rule[Sender]):
    name = RULE_NAME
    kinds = ("exfiltration", "staged_exfiltration")
    quotes_weights = True
    renew_lately = True

    def subject(self, key: AlertKey) -> Sender | None:
        found = sender_of_key(key)
        return None if found is None else (key.host, found[0])

    # -- what facts touch ----------------------------------------------------------------

    def on_samples(self, ctx: Context, conn: Connection, facts: SampleFacts, now: float) -> Iterable[Sender | Look]:
        mine: dict[Sender, list[EgressRow]] = {}
        for r in facts.rows:
            if r["host"] in facts.with_reads and r["pid"] > 0 and (not r["allowed"] or r["port"] == 53):
                mine.setdefault((r["host"], int(r["pid"])), []).append(r)
        out: list[Sender | Look] = [Look(k, rows) for k, rows in sorted(mine.items())]
        # A hand-over or a pipeline stage is a new link, for its receiver and whoever that one feeds on to.
        fed: dict[str, tuple[set[int], float]] = {}
        for relay in facts.relays:
            pids, first = fed.get(relay["host"], (set(), float(relay["first_ts"])))
            fed[relay["host"]] = (pids | {int(relay["dst_pid"])}, min(first, float(relay["first_ts"])))
        for end in facts.pipes:
            pids, first = fed.get(end["host"], (set(), float(end["first_ts"])))
            fed[end["host"]] = (pids | {int(end["pid"])}, min(first, float(end["first_ts"])))
        for host, (pids, first) in sorted(fed.items()):
            if host in facts.with_reads:
                out += [(host, p) for p in sorted(ctx.links.downstream(conn, host, pids, first))]
        return out

    def on_reads(self, ctx: Context, conn: Connection, host: str, row: ReadRow, grew: bool,
                 now: float) -> Iterable[Sender | Look]:
        if not grew:
            return []
        # Anyone who sent after this read began may have had the weights from it.
        return [(host, pid) for pid in q.outward_senders(conn, host, float(row["first_ts"]) - 1)]

    def on_sweep(self, ctx: Context, conn: Connection, lately: Lately, now: float) -> Iterable[Sender | Look]:
        senders, reads, _dests = q.recent_units(conn, lately.since_wall, self.tune.link_window_s)
        out: list[Sender | Look] = [Look((host, pid), q.recent_flows(conn, host, pid, lately.since_wall))
                                      for host, pid in senders]
        for host, pid, first in q.recent_relay_targets(conn, lately.since_wall) + q.recent_stages(conn, lately.since_wall):
            out += [(host, p) for p in sorted(ctx.links.downstream(conn, host, {pid}, first))]
        for host, first, _last in reads:
            out += [(host, pid) for pid in q.outward_senders(conn, host, first - 1)]
        return out

    # -- verdicts --------------------------------------------------------------------

    def judge(self, ctx: Context, conn: Connection, subject: Sender, hint: Hint, now: float) -> None:
        host, pid = subject
        if hint is None:
            self.evaluate(ctx, conn, host, pid, now)
        else:
            self.check(ctx, conn, host, pid, hint, now)

    def check(self, ctx: Context, conn: Connection, host: str, pid: int, new: list[EgressRow], now: float) -> None:
        """New rows of a sender whose links did not change: judge it in full only if they could change
        its verdict (it has an alert, or the windows around them could make one)."""
        if ctx.keys_of(conn, self.name, host, str(pid)):
            self.evaluate(ctx, conn, host, pid, now)
            return
        width = self.tune.burst_s
        for start, mine in identities(new):
            _sender, lo, hi, links = self.linked(ctx, conn, host, pid, start, mine)
            if not links:
                continue
            near = [r for r in q.flows_between(conn, host, pid, (bucket(lo, width) - 1) * width,
                                                (bucket(hi, width) + 2) * width)
                    if same_process(pid, r.get("start_time"), pid, start) or r.get("start_time") is None]
            if worth_judging(near, links, self.tune):
                self.evaluate(ctx, conn, host, pid, now)
                return

    def linked(self, ctx: Context, conn: Connection, host: str, pid: int, start: float | None, mine: list[EgressRow]
               ) -> tuple[Proc, float, float, list[Link]]:
        """One sender identity's rows: the sender, the span its bytes left in, and what links it to the weights."""
        sender = sender_of(pid, start, mine[-1])
        lo = min(float(r["first_ts"] if r.get("first_ts") is not None else r["ts"]) for r in mine)
        hi = max(float(r["ts"]) for r in mine)
        links = ctx.links.of(conn, host, sender, lo, hi, hi - self.tune.link_window_s)
        return sender, lo, hi, links

    def evaluate(self, ctx: Context, conn: Connection, host: str, pid: int, now: float) -> None:
        produced: set[AlertKey] = set()
        latest = q.last_outward(conn, host, pid)
        rows = [] if latest is None else q.flows_of(conn, host, pid, latest - self.tune.link_window_s)
        weights_total = q.weights_of(conn, [host]).get(host, 0)
        for start, mine in identities(rows):
            sender, _lo, _hi, links = self.linked(ctx, conn, host, pid, start, mine)
            if not links:
                continue
            exe = str(sender.get("exe") or "")

            def contacts(addresses: list[str], exe: str = exe) -> dict[str, float]:
                return q.contacted_since(conn, host, exe, sorted(set(addresses)))

            draft = exfiltration(host, sender, mine, links, contacts, weights_total, self.tune)
            if draft is not None:
                ctx.put(conn, draft, now)
                produced.add(draft.key)
        stale = [k for k in ctx.keys_of(conn, self.name, host, str(pid)) if k not in produced]
        ctx.withdraw(conn, stale, now)


RULE = register(ExfiltrationRule())
