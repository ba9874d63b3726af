"""``weights_relinked``: a weight file got a new name (a hard link anywhere, a rename or move out of
the weights tree). The agent keeps knowing the file by its inode, so a later read through the new
name is reported with the weights' path and the same inode.

Medium by itself (giving the weights a name outside the tree is how one hides them from a watcher
of paths); high when the file is then read and sent: a read of that inode after the relink by a
process an exfiltration alert names as a reader. Subject: the file, (host, inode): every name it
was given is in the one alert.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from sqlalchemy import Connection, text

from weightwarden.collector.detect.common import Draft, clock
from weightwarden.collector.detect.keys import AlertKey
from weightwarden.collector.detect.registry import register
from weightwarden.collector.detect.rule import Context, Hint, Lately, Look, Rule
from weightwarden.collector.jsonread import json_int, json_list
from weightwarden.collector.store import agent_facts as af
from weightwarden.collector.store.rows import AlertRow, ReadRow, RelinkRow
from weightwarden.events import Event, WeightsRelinked
from weightwarden.units import format_size

ANY_FILE = "-"  # an agent that names no inode: the relink is known by its path only


class WeightsRelinkedRule(Rule[tuple[str, str]]):
    name = "relink"
    kinds = ("weights_relinked",)
    events = (WeightsRelinked,)
    after = ("exfiltration",)  # high once an exfiltration alert names a reader of the relinked file
    renew_lately = True  # collectors judging at once from snapshots converge in the sweep

    def subject(self, key: AlertKey) -> tuple[str, str] | None:
        return (key.host, key.parts[0]) if key.rule == self.name and len(key.parts) == 1 else None

    def on_event(self, ctx: Context, conn: Connection, ev: Event, now: float) -> Iterable[tuple[str, str] | Look]:
        d = ev.data
        if not isinstance(d, WeightsRelinked):
            return ()
        inode = str(d.inode) if d.inode is not None else ANY_FILE
        af.add_relink(conn, {"host": ev.host, "inode": inode, "dev": None if d.dev is None else str(d.dev),
                            "how": d.how, "from_path": d.from_path, "to_path": d.to_path,
                            "outside_tree": int(d.outside_tree), "size": d.size, "pid": d.pid,
                            "start_time": d.start_time, "name": d.name, "exe": d.exe, "uid": d.uid, "ts": ev.ts,
                            "event_id": ev.id})
        return [(ev.host, inode)]

    def on_reads(self, ctx: Context, conn: Connection, host: str, row: ReadRow, grew: bool,
                 now: float) -> Iterable[tuple[str, str] | Look]:
        inode = row.get("inode")
        return [(host, inode)] if inode and af.relinks_of(conn, host, str(inode)) else []

    def on_verdicts(self, ctx: Context, conn: Connection, changed: Sequence[AlertKey],
                    now: float) -> Iterable[tuple[str, str]]:
        return [(host, inode) for host in sorted({k.host for k in changed}) for inode in af.relinked_inodes(conn, host)]

    def on_sweep(self, ctx: Context, conn: Connection, lately: Lately, now: float) -> Iterable[tuple[str, str] | Look]:
        return [(r[0], str(r[1])) for r in conn.execute(text(
            "SELECT DISTINCT host, inode FROM relinks l WHERE received_at >= :r OR EXISTS (SELECT 1 FROM alerts a "
            "WHERE a.host = l.host AND a.updated_at >= :n AND a.key LIKE 'exfiltration:%') ORDER BY 1, 2"),
            {"r": lately.since_wall, "n": lately.since_now})]

    def judge(self, ctx: Context, conn: Connection, subject: tuple[str, str], hint: Hint, now: float) -> None:
        host, inode = subject
        relinks = af.relinks_of(conn, host, inode)
        if not relinks:
            return
        first = min(float(r["ts"]) for r in relinks)
        readers = {int(r["pid"]): r for r in (af.reads_of_inode(conn, host, inode, first - 1) if inode != ANY_FILE else [])
                   if float(r["ts"]) >= first - 1 and r["kind"] in ("read", "staged_read", "holder")}
        sent = []
        for a in af.alerts_of(conn, host, "exfiltration:"):
            process = a["evidence"]["process"]
            if not isinstance(process, dict):
                raise TypeError(f"{a['key']}: evidence names no process")
            named = {json_int(p) for p in json_list(a["evidence"].get("readers") or [])} | {json_int(process["pid"])}
            if named & set(readers):
                sent.append(a)
        ctx.put(conn, self.draft(AlertKey(self.name, host, (inode,)), host, relinks, readers, sent), now)

    def draft(self, key: AlertKey, host: str, relinks: list[RelinkRow], readers: dict[int, ReadRow],
              sent: list[AlertRow]) -> Draft:
        names = sorted({str(r["to_path"]) for r in relinks})
        sources = sorted({str(r["from_path"]) for r in relinks})
        by = sorted({f"{r.get('name') or '?'} (pid {r.get('pid')})" for r in relinks})
        first = min(float(r["ts"]) for r in relinks)
        size = max(int(r["size"] or 0) for r in relinks)
        outside = any(r["outside_tree"] for r in relinks)
        hows = sorted({str(r["how"]) for r in relinks})
        severity = "high" if sent else "medium"
        who = ", ".join(sorted(f"{r.get('name') or '?'} (pid {p})" for p, r in readers.items()))
        then = (f" The file was then read under it by {who} and sent off the host: see "
                f"{', '.join(a['title'] for a in sent[:3])}." if sent else
                (f" It has since been read by {len(readers)} process(es), none of which is known to have sent it."
                 if readers else ""))
        explanation = (
            f"A weight file on {host} ({', '.join(sources[:3])}, {format_size(size)}) was given "
            f"{'a new name' if len(names) == 1 else f'{len(names)} new names'} ({', '.join(hows)}) at {clock(first)} by "
            f"{', '.join(by[:3])}: {', '.join(names[:3])}{' …' if len(names) > 3 else ''}"
            f"{', outside the weights tree' if outside else ''}. A name nobody watches is how weights are hidden from "
            f"a watcher of paths; the agent still knows the file by its inode.{then}")
        evidence = {"rule": "relinked", "process": {k: relinks[-1].get(k) for k in ("name", "pid", "exe", "uid")},
                    "files": sources + [n for n in names if n not in sources], "new_names": names, "how": hows,
                    "inode": key.parts[0],
                    "readers": sorted(readers), "sent_by": sorted(str(a["key"]) for a in sent),
                    "destinations": [d for a in sent for d in json_list(a["evidence"].get("destinations") or [])][:20],
                    "bytes": size, "events": sorted({str(r["event_id"]) for r in relinks})[:50]}
        return Draft(key, host, "weights_relinked", severity, f"Weights given a new name on {host}: {names[0]}",
                     explanation, evidence, first, max(float(r["ts"]) for r in relinks),
                     count=len({str(r["event_id"]) for r in relinks}))  # each relink reported, once


RULE = register(WeightsRelinkedRule())
