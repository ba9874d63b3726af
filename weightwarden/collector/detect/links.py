"""What links a process to the weights: every flow of data into it that the stored facts show.

A link is a real flow (see detect.sender): the process read or maps the weights itself, read a
staged copy, reads a pipe (anonymous or named: a FIFO) a weights reader writes, possibly through
intermediate pipeline stages (``python | base64 | curl``), was handed bytes by a weights reader
over a unix socket or loopback, possibly through relays, or is a fork of a reader. Chains of
stages and relays are followed up to ``Tuning.relay_depth`` hops.

A pipeline stage carries a link only as a filter does: it reads one pipe and writes on. A process
that reads many pipes (a container shim or a supervisor collecting its children's output) is a
hub, and what one child wrote is not what another child reads: it links nothing.
"""

from __future__ import annotations

import json
from typing import TypeVar

from sqlalchemy import Connection

from weightwarden.collector.detect.common import Proc, Tuning, same_process
from weightwarden.collector.detect.facts import parse_pipes, pipe_key
from weightwarden.collector.detect.sender import Link
from weightwarden.collector.store import facts as q
from weightwarden.collector.store.database import Store
from weightwarden.collector.store.rows import EgressRow, RawSocketRow, ReadRow, RelayRow

Ident = tuple[int, float | None]
MAX_STAGE_READS = 1  # a stage reading more pipes than this is a hub (shim, supervisor): no flow through it


def read_ends(pipes: str | None) -> list[str]:
    """The pipes a process reads (only the read end receives; a shared write end, a log, is no flow)."""
    return [inode for inode, end in parse_pipes(pipes) if end == "r"]


def write_ends(pipes: str | None) -> list[str]:
    return [inode for inode, end in parse_pipes(pipes) if end == "w"]


def sender_of(pid: int, start: float | None, last: EgressRow | RawSocketRow) -> Proc:
    """A process as the rules describe it, from its latest row."""
    container = last.get("container")
    return {"pid": pid, "start_time": start, "name": last.get("name"), "exe": last.get("exe"),
            "uid": last.get("uid"), "ppid": last.get("ppid"), "pipes": last.get("pipes"),
            "cmd_hash": last.get("cmd_hash"), "container": json.loads(container) if container else None}


T = TypeVar("T", EgressRow, RawSocketRow)


def identities(rows: list[T]) -> list[tuple[float | None, list[T]]]:
    """A pid's rows split by process (start time). Rows without a start time belong to the process
    that had most recently started when they were sent."""
    starts = sorted({round(float(t), 2) for r in rows if (t := r.get("start_time")) is not None})
    groups: dict[float | None, list[T]] = {}
    for r in rows:
        if (started := r.get("start_time")) is not None:
            s: float | None = round(float(started), 2)
        elif starts:
            before = [x for x in starts if x <= float(r["ts"])]
            s = before[-1] if before else starts[0]
        else:
            s = None
        groups.setdefault(s, []).append(r)
    return sorted(groups.items(), key=lambda kv: kv[0] if kv[0] is not None else -1.0)


class Links:
    def __init__(self, store: Store, tune: Tuning) -> None:
        self.store = store
        self.tune = tune

    def _same(self, r: ReadRow, pid: int, start: float | None, lo: float, hi: float) -> bool:
        if not same_process(int(r["pid"]), r.get("start_time"), pid, start):
            return False
        if r.get("start_time") is None or start is None:  # pid alone: only close in time
            return float(r["ts"]) >= lo - self.tune.pid_only_s and float(r["first_ts"]) <= hi + self.tune.pid_only_s
        return True

    def of(self, conn: Connection, host: str, who: Proc, lo: float, hi: float, since: float,
           depth: int | None = None, seen: frozenset[Ident] | None = None) -> list[Link]:
        """Every flow of weights into ``who`` (pid, start_time, ppid, pipes, exe, cmd_hash) whose bytes
        it may have sent within [lo, hi]: facts back to ``since``."""
        depth = self.tune.relay_depth if depth is None else depth
        pid, start = int(who["pid"]), who.get("start_time")
        seen = seen if seen is not None else frozenset({(pid, start)})
        links: list[Link] = []
        own = [r for r in self.store.reads_for(conn, host, [pid], since) if self._same(r, pid, start, lo, hi)]
        reads = [r for r in own if r["kind"] in ("read", "holder")]
        if reads:
            links.append(Link("self", who, reads, min(float(r["first_ts"]) for r in reads)))
        staged = [r for r in own if r["kind"] == "staged_read"]
        if staged:
            # The reader of the weights is the process that wrote the copy, where the agent saw it write.
            copier = q.copier_of(conn, host, sorted({str(r["path"]) for r in staged}), since)
            reader = who if copier is None else {"pid": int(copier["pid"]), "start_time": copier.get("start_time"),
                                                 "name": copier.get("name"), "exe": copier.get("exe")}
            links.append(Link("staged", reader, staged, min(float(r["first_ts"]) for r in staged)))
        links += self._pipes(conn, host, who, since, depth, seen)
        ppid = who.get("ppid")
        if start is not None and ppid and ppid > 1:
            parent = [r for r in self.store.reads_for(conn, host, [int(ppid)], since)
                      if r["kind"] in ("read", "holder") and float(r["first_ts"]) <= start
                      and ((started := r.get("start_time")) is None or float(started) <= start)
                      and r.get("exe") == who.get("exe")
                      and (not (r.get("cmd_hash") and who.get("cmd_hash")) or r["cmd_hash"] == who["cmd_hash"])]
            if parent:
                reader = {"pid": int(ppid), "start_time": parent[-1].get("start_time"), "name": parent[-1]["name"],
                          "exe": parent[-1]["exe"]}
                links.append(Link("fork", reader, parent, float(start)))
        if depth > 0:
            links += self._relays(conn, host, pid, start, since, depth, seen)
        return links

    def _pipes(self, conn: Connection, host: str, who: Proc, since: float, depth: int,
               seen: frozenset[Ident]) -> list[Link]:
        """Readers of the weights that write a pipe ``who`` reads; and, ``depth`` permitting, pipeline
        stages that write it, followed up their own links."""
        pid, start = int(who["pid"]), who.get("start_time")
        links: list[Link] = []
        for inode in read_ends(who.get("pipes")):
            writers: dict[Ident, list[ReadRow]] = {}
            for r in q.pipe_writers(conn, host, inode, since):
                ident = (int(r["pid"]), r.get("start_time"))
                if r["kind"] != "copy" and not same_process(ident[0], ident[1], pid, start):
                    writers.setdefault(ident, []).append(r)
            for (wpid, wstart), reads in sorted(writers.items(), key=lambda kv: (kv[0][0], kv[0][1] or 0.0)):
                reader: Proc = {"pid": wpid, "start_time": wstart, "name": reads[-1]["name"], "exe": reads[-1]["exe"]}
                links.append(Link("pipe", reader, reads, min(float(r["first_ts"]) for r in reads), via=f"pipe {inode}"))
            if depth <= 0:
                continue
            for stage in q.pipe_stages_writing(conn, host, inode, since):
                ident = (int(stage["pid"]), stage.get("start_time"))
                if ident in seen or same_process(ident[0], ident[1], pid, start) or ident in writers:
                    continue
                inputs = q.stage_reads(conn, host, ident[0], ident[1], since)
                if len(inputs) > MAX_STAGE_READS:
                    continue  # a hub, not a filter
                up_links = self.of(conn, host, {"pid": ident[0], "start_time": ident[1], "name": stage["name"],
                                                "exe": stage["exe"], "ppid": None,
                                                "pipes": pipe_key([], {i: "r" for i in inputs})},
                                   float(stage["first_ts"]), float(stage["ts"]), since, depth - 1, seen | {ident})
                for up in up_links:
                    if up.kind == "fork":
                        continue  # a stage's parent is not the pipeline's source
                    links.append(Link("pipe", up.reader, up.reads, up.t0, via=f"pipe {inode}", hops=up.hops,
                                      chain=[*up.chain, {"pid": ident[0], "name": stage.get("name"),
                                                         "start_time": ident[1], "exe": stage.get("exe")}]))
        return links

    def _relays(self, conn: Connection, host: str, pid: int, start: float | None, since: float, depth: int,
                seen: frozenset[Ident]) -> list[Link]:
        by_src: dict[Ident, list[RelayRow]] = {}
        for e in q.relays_into(conn, host, pid, since):
            if same_process(int(e["dst_pid"]), e.get("dst_start"), pid, start):
                by_src.setdefault((int(e["src_pid"]), e.get("src_start")), []).append(e)
        links: list[Link] = []
        for (spid, sstart), edges in sorted(by_src.items(), key=lambda kv: (kv[0][0], kv[0][1] or 0.0)):
            if (spid, sstart) in seen or spid == pid:
                continue
            src: Proc = {"pid": spid, "start_time": sstart, "name": edges[-1]["src_name"], "exe": edges[-1]["src_exe"]}
            lo = min(float(e["first_ts"]) for e in edges)
            hi = max(float(e["ts"]) for e in edges)
            for up in self.of(conn, host, src, lo, hi, since, depth - 1, seen | {(spid, sstart)}):
                hop = [(float(e["first_ts"]), int(e["bytes"])) for e in edges if float(e["ts"]) >= up.t0]
                if not hop:
                    continue
                chain = [*up.chain, src] if up.kind == "relay" or up.reader.get("pid") != spid else up.chain
                via = sorted({str(e["via"]) for e in edges})
                links.append(Link("relay", up.reader, up.reads, max(up.t0, min(ts for ts, _ in hop)),
                                  via=" and ".join(f"{v} socket" if v == "unix" else f"local {v}" for v in via),
                                  hops=[*(up.hops or []), hop], chain=chain))
        return links

    def downstream(self, conn: Connection, host: str, pids: set[int], first: float) -> set[int]:
        """``pids`` and every process they handed bytes on to, or feed through a pipe, up to the depth
        bound: a hand-over or a stage that arrives after the later ones down its chain changes the
        verdict of the chain's last sender."""
        since = first - self.tune.link_window_s
        out, frontier = set(pids), set(pids)
        for _ in range(self.tune.relay_depth + 1):
            nxt: set[int] = set()
            for p in sorted(frontier):
                nxt.update(q.relay_targets(conn, host, p, since))
                for inode in q.pipes_written_by(conn, host, p, since):
                    nxt.update(q.pipe_readers(conn, host, inode, since))
            frontier = nxt - out
            if not frontier:
                break
            out |= frontier
        return out


__all__ = ["Links", "identities", "read_ends", "sender_of", "write_ends"]
