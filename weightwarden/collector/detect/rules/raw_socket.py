"""``raw_socket``: a packet socket (AF_PACKET or AF_XDP) that is not allowlisted sent data.

Its frames skip the transport layer (and with qdisc bypass every qdisc, netfilter and cgroup program
too), so nothing else on the host accounts for them by owner. Medium by itself; high when its
process had the weights (read them, or any link the exfiltration rule follows: a pipe, a relay, a
fork) or it sent a weights-sized volume; critical when it sent, of what it had, what the exfiltration
rule calls critical. Subject: the process, (host, pid); each process that pid named is judged.
"""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import Connection, text

from weightwarden.collector.detect.common import Draft, Proc, Tuning, proc_text, rank
from weightwarden.collector.detect.facts import cmd_hash, container_json, pipe_key
from weightwarden.collector.detect.keys import AlertKey
from weightwarden.collector.detect.links import identities, sender_of
from weightwarden.collector.detect.registry import register
from weightwarden.collector.detect.rule import Context, Hint, Lately, Look, Rule
from weightwarden.collector.detect.sender import Link, link_text, severity_of, taken_by
from weightwarden.collector.store import agent_facts as a
from weightwarden.collector.store import facts as q
from weightwarden.collector.store.rows import RawSocketRow, ReadRow
from weightwarden.events import Event, RawSocket
from weightwarden.units import format_size


def sent(rows: list[RawSocketRow]) -> int:
    """Bytes its non-allowlisted sockets sent: each socket's events count up, so the most each reported."""
    per: dict[tuple[str, str | None, float], int] = {}
    for r in rows:
        if not r["allowed"]:
            k = (r["family"], r["interface"], round(float(r["first_ts"]), 3))
            per[k] = max(per.get(k, 0), int(r["tx_bytes"]))
    return sum(per.values())


def verdict(tx: int, links: list[Link], weights_total: int, tune: Tuning) -> tuple[str, int, str]:
    """(severity, what it had, why)."""
    taken = taken_by(links, float("inf"))[0]
    if taken >= tune.min_read_bytes:
        sev = severity_of(tx / max(taken, 1), tune) or "high"
        return (sev if rank(sev) >= rank("high") else "high"), taken, "had"
    if weights_total and tx >= tune.host_high_ratio * weights_total:
        return "high", taken, "sized"
    return "medium", taken, "alone"


class RawSocketRule(Rule[tuple[str, int]]):
    name = "raw"
    kinds = ("raw_socket",)
    events = (RawSocket,)
    quotes_weights = True
    renew_lately = True

    def subject(self, key: AlertKey) -> tuple[str, int] | None:
        return (key.host, int(key.parts[0])) if key.rule == self.name and key.parts and key.parts[0].isdigit() else None

    def on_event(self, ctx: Context, conn: Connection, ev: Event, now: float) -> Iterable[tuple[str, int] | Look]:
        d = ev.data
        if not isinstance(d, RawSocket) or d.pid is None:
            return ()
        first = d.first_ts if d.first_ts is not None else ev.ts
        a.add_raw_socket(conn, {
            "host": ev.host, "pid": d.pid, "start_time": d.start_time, "name": d.name, "exe": d.exe, "uid": d.uid,
            "container": container_json(d), "ppid": d.ppid, "pipes": pipe_key(d.pipes, dict(d.pipe_ends)),
            "cmd_hash": cmd_hash(d.cmdline), "family": d.family, "interface": d.interface, "bypass": int(d.bypass),
            "allowed": int(d.allowed), "tx_bytes": d.tx_bytes, "tx_packets": d.tx_packets, "action": d.action,
            "killed": int(d.killed), "escaped_bytes": d.escaped_bytes, "first_ts": min(first, ev.ts),
            "ts": d.last_ts if d.last_ts is not None else ev.ts, "event_id": ev.id})
        return [(ev.host, d.pid)]

    def on_reads(self, ctx: Context, conn: Connection, host: str, row: ReadRow, grew: bool,
                 now: float) -> Iterable[tuple[str, int] | Look]:
        return [(host, p) for p in a.raw_socket_pids(conn, host, [int(row["pid"])])] if grew else []

    def on_sweep(self, ctx: Context, conn: Connection, lately: Lately, now: float) -> Iterable[tuple[str, int] | Look]:
        # Raw sockets are rare: any whose host had new facts that could link them is judged again.
        return [(r[0], int(r[1])) for r in conn.execute(text(
            "SELECT DISTINCT host, pid FROM raw_sockets s WHERE received_at >= :r OR EXISTS (SELECT 1 FROM "
            "weight_reads w WHERE w.host = s.host AND w.received_at >= :r) OR EXISTS (SELECT 1 FROM relays e "
            "WHERE e.host = s.host AND e.received_at >= :r) ORDER BY 1, 2"), {"r": lately.since_wall})]

    def judge(self, ctx: Context, conn: Connection, subject: tuple[str, int], hint: Hint, now: float) -> None:
        host, pid = subject
        rows = a.raw_sockets_of(conn, host, pid)
        weights_total = q.weights_of(conn, [host]).get(host, 0)
        produced: set[AlertKey] = set()
        for start, mine in identities(rows):
            tx = sent(mine)
            if tx <= 0:
                continue
            proc = sender_of(pid, start, mine[-1])
            lo, hi = min(float(r["first_ts"]) for r in mine), max(float(r["ts"]) for r in mine)
            links = ctx.links.of(conn, host, proc, lo, hi, hi - self.tune.link_window_s)
            draft = self.draft(host, proc, mine, tx, links, weights_total)
            ctx.put(conn, draft, now)
            produced.add(draft.key)
        ctx.withdraw(conn, [k for k in ctx.keys_of(conn, self.name, host, str(pid)) if k not in produced], now)

    def draft(self, host: str, proc: Proc, rows: list[RawSocketRow], tx: int, links: list[Link],
              weights_total: int) -> Draft:
        severity, taken, why = verdict(tx, links, weights_total, self.tune)
        last = rows[-1]
        ifaces = sorted({str(r["interface"]) for r in rows if r.get("interface")})
        bypass = any(r["bypass"] for r in rows)
        how = "; it ".join(link_text(link) for link in links)
        reason = {"had": f"It had {format_size(taken)} of the weights (it {how}), and sent {tx / max(taken, 1):.0%} "
                         f"of that through this socket.",
                  "sized": f"That is as much as the weights on this host ({format_size(weights_total)}), though no "
                           f"link to a reader of them was found.",
                  "alone": "No link to a reader of the weights was found, and the volume is smaller than them."}[why]
        skipped = "the transport layer, every qdisc, netfilter and cgroup program" if bypass else "the transport layer"
        explanation = (
            f"{proc_text(proc)} on {host} sent {format_size(tx)} through a {last['family']} socket"
            f"{' on ' + ', '.join(ifaces) if ifaces else ''}{' with qdisc bypass' if bypass else ''}, which is not "
            f"allowlisted: hand-built frames skip {skipped}, so caps and per-socket accounting never see them. {reason}"
            + (f" The agent stopped the process ({format_size(int(last['escaped_bytes'] or 0))} had left)."
               if last.get("killed") else ""))
        readers = sorted({int(link.reader["pid"]) for link in links})
        evidence = {
            "rule": "raw-socket",
            "process": {k: proc.get(k) for k in ("name", "pid", "exe", "uid", "ppid", "start_time", "container")},
            "socket": {"family": last["family"], "interfaces": ifaces, "bypass": bypass,
                       "action": last.get("action"), "killed": bool(last.get("killed"))},
            "bytes_sent": tx, "bytes_read": taken, "readers": readers,
            "links": [{"kind": link.kind, "reader": {k: link.reader.get(k) for k in ("name", "pid", "exe")},
                       "via": link.via or None, "since": link.t0} for link in links],
            "files": sorted({r["path"] for link in links for r in link.reads if r["kind"] != "copy"}),
            "destinations": [{"address": f"({last['family']} socket)", "port": 0, "bytes": tx}],
            "weights_total_bytes": weights_total,
            "events": sorted({str(r["event_id"]) for r in rows})[:50],
        }
        start = proc.get("start_time")
        key = AlertKey(self.name, host, (str(proc["pid"]),) if start is None else (str(proc["pid"]), f"{float(start):.2f}"))
        title = f"Raw packet socket of {proc.get('name') or '?'} (pid {proc['pid']}) sent {format_size(tx)} from {host}"
        first = min(float(r["first_ts"]) for r in rows)
        return Draft(key, host, "raw_socket", severity, title, explanation, evidence, first,
                     max(float(r["ts"]) for r in rows))


RULE = register(RawSocketRule())
