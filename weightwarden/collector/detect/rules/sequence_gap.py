"""``sequence_gap``: sequence numbers that never arrived and that no ``events_dropped`` explains.

Each host's sequence is checked by the sweep, as ranges (never expanded: a jump of millions is one
range). Missing ranges wait ``gap_grace_s`` for redelivery (a spool draining after an outage), then
join the host's alert: every range ever found missing stays in it, with the total.
"""

from __future__ import annotations

import json

from sqlalchemy import Connection, text

from weightwarden.collector.detect.common import Draft
from weightwarden.collector.detect.registry import register
from weightwarden.collector.detect.rule import Context, Rule
from weightwarden.collector.jsonread import json_int, json_list
from weightwarden.collector.store import bulk, verdicts
from weightwarden.collector.store import facts as q
from weightwarden.collector.store.host_rows import HostState
from weightwarden.events import EventsDropped

MAX_RANGES = 1000  # kept in the alert's evidence (the count covers them all)


def subtract(ranges: list[tuple[int, int]], minus: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Inclusive integer ranges less other ranges, without expanding either."""
    out = []
    cuts = sorted(minus)
    for lo, hi in ranges:
        cur = lo
        for clo, chi in cuts:
            if chi < cur or clo > hi:
                continue
            if clo > cur:
                out.append((cur, clo - 1))
            cur = max(cur, chi + 1)
            if cur > hi:
                break
        if cur <= hi:
            out.append((cur, hi))
    return out


def union(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Inclusive ranges merged where they overlap or touch."""
    out: list[tuple[int, int]] = []
    for lo, hi in sorted(ranges):
        if out and lo <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return out


class SequenceGapRule(Rule[str]):
    name = "gap"
    kinds = ("sequence_gap",)

    def sweep_hosts(self, ctx: Context, conn: Connection, hosts: list[HostState], now: float) -> list[HostState]:
        """Hosts whose events since the last contiguous one are all there (nearly all, nearly always) move
        on in one statement; the others (holes, a gap waiting out its grace, a host met for the first time)
        are looked at one by one."""
        ahead = {h["host"]: h for h in hosts if int(h["seq_contig"] or 0) > 0 and h["gap_seen_at"] is None
                 and int(h["seq_max"] or 0) > int(h["seq_contig"] or 0)}
        whole: list[dict[str, object]] = []
        if ahead:
            cond, params = bulk.in_list(conn, sorted(ahead))
            for host, top, _have in conn.execute(text(
                    "SELECT e.host, h.seq_max, count(DISTINCT e.seq) FROM hosts h JOIN events e ON e.host = h.host "
                    f"AND e.seq > h.seq_contig AND e.seq <= h.seq_max WHERE h.host {cond} GROUP BY e.host, h.seq_max, "
                    "h.seq_contig HAVING count(DISTINCT e.seq) = h.seq_max - h.seq_contig"), params):
                whole.append({"h": host, "t": int(top)})
        # Hosts met for the first time whose events are one run from their first (a fleet's first minutes:
        # thousands of them, four statements each one by one, held every sweep for many seconds): the same
        # answer as sweep_host's (the run's top; no gap), for all of them in two statements.
        new = sorted(h["host"] for h in hosts if int(h["seq_contig"] or 0) == 0)
        if new:
            cond, params = bulk.in_list(conn, new)
            for host, top in conn.execute(text(
                    f"SELECT host, max(seq) FROM events WHERE host {cond} AND seq > 0 GROUP BY host "
                    "HAVING count(DISTINCT seq) = max(seq) - min(seq) + 1"), params):
                whole.append({"h": host, "t": int(top)})
        if whole:
            conn.execute(text("UPDATE hosts SET seq_contig = :t, gap_seen_at = NULL WHERE host = :h "
                              "AND seq_contig < :t"), whole)
        done = {w["h"] for w in whole}
        return [h for h in hosts if h["host"] not in done and (int(h["seq_contig"] or 0) == 0 or h["gap_seen_at"]
                                                              is not None or h["host"] in ahead)]

    def sweep_host(self, ctx: Context, conn: Connection, host: HostState, now: float) -> None:
        """A collector that meets a host for the first time takes the first sequence number it holds as
        the start: the agent counted before this collector existed, and that history is not missing."""
        h = host
        name, contig = h["host"], int(h["seq_contig"] or 0)
        if contig == 0:
            first = q.min_seq(conn, name)
            if first is None:
                return
            contig = first - 1
        runs = q.seq_runs(conn, name, contig)
        if not runs:
            return
        top = runs[-1][1]
        holes: list[tuple[int, int]] = []
        expected = contig + 1
        for lo, hi in runs:
            if lo > expected:
                holes.append((expected, lo - 1))
            expected = max(expected, hi + 1)
        explained = self.explained(ctx, conn, name)
        missing = subtract(holes, explained)
        if not missing:
            ctx.store.update_host(conn, name, seq_contig=top, gap_seen_at=None)
            return
        if h["gap_seen_at"] is None:
            # Give redeliveries (a spool draining after an outage) time to arrive.
            ctx.store.update_host(conn, name, seq_contig=missing[0][0] - 1, gap_seen_at=now)
        elif now - h["gap_seen_at"] >= self.tune.gap_grace_s:
            ctx.put(conn, self.draft(conn, name, missing, explained, now), now)
            ctx.store.update_host(conn, name, seq_contig=top, gap_seen_at=None)

    @staticmethod
    def explained(ctx: Context, conn: Connection, host: str) -> list[tuple[int, int]]:
        out: list[tuple[int, int]] = []
        for dropped in ctx.store.events_of(conn, host, EventsDropped.TYPE, 0):
            for pair in json_list(dropped["data"].get("seq_ranges") or []):
                if isinstance(pair, list) and len(pair) == 2:
                    out.append((json_int(pair[0]), json_int(pair[1])))
        return out

    def draft(self, conn: Connection, host: str, missing: list[tuple[int, int]], explained: list[tuple[int, int]],
              now: float) -> Draft:
        """Every range found missing so far, not only this sweep's (less any an agent explained since)."""
        key = self.key(host)
        before = verdicts.alert_row(conn, str(key))
        earlier: list[tuple[int, int]] = []
        if before is not None:
            for pair in json.loads(before["evidence"]).get("missing_seq_ranges") or []:
                earlier.append((int(pair[0]), int(pair[1])))
        ranges = subtract(union(earlier + missing), explained)
        count = sum(hi - lo + 1 for lo, hi in ranges)
        shown = [[lo, hi] for lo, hi in ranges]
        first = float(before["first_ts"]) if before is not None else now
        draft = Draft(key, host, "sequence_gap", "medium", f"Events missing from {host}",
                      f"{count} events from {host} never arrived and the agent did not report dropping them "
                      f"(sequence numbers {shown[:10]}{' …' if len(shown) > 10 else ''}). Events can be lost in "
                      f"transit or suppressed; look at what the host was doing then.",
                      {"missing_seq_ranges": shown[:MAX_RANGES], "missing": count, "process": None, "files": [],
                       "destinations": [], "events": []}, first, now)
        draft.mode, draft.order = "event", f"{now:017.6f}:gap"
        return draft


RULE = register(SequenceGapRule())
