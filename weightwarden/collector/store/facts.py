"""The facts detection reads, all through these functions (the verdicts it writes: :mod:`verdicts`).

Retention and rollups must keep each query answerable over the look-back it is called with
(Tuning.link_window_s for a process's reads and relays, slow_window_s and burst_s for egress).
"""

from __future__ import annotations

import time
from typing import TypedDict, TypeVar, cast

from sqlalchemy import Connection, text

from weightwarden.collector.store.rows import (
    CopierRow,
    EgressRow,
    HourlyRow,
    PipeEndRow,
    ReadRow,
    RelayRow,
    SenderTotal,
    SqlParams,
    StageRow,
)

R = TypeVar("R")


class ReadSize(TypedDict):
    bytes: int
    size: int | None
    ts: float

# Bytes that may carry data off the host: not allowlisted, or DNS, which carries names wherever it goes
# (a tunnel through an allowlisted resolver is still a tunnel).
OUTWARD = "(allowed = 0 OR port = 53)"
_ORDER = "ORDER BY ts, first_ts, event_id, address, port"


def _rows(conn: Connection, sql: str, params: SqlParams, as_: type[R]) -> list[R]:
    """The rows a query returns, typed as the caller's TypedDict says the selected columns are."""
    return cast(list[R], [dict(r) for r in conn.execute(text(sql), params).mappings()])


def flows_of(conn: Connection, host: str, pid: int, since: float) -> list[EgressRow]:
    """A process's outward egress rows (every start_time that pid had) whose last byte left at or after ``since``."""
    return _rows(conn, f"SELECT * FROM egress WHERE host=:h AND pid=:p AND ts>=:s AND {OUTWARD} {_ORDER}",
                 {"h": host, "p": pid, "s": since}, EgressRow)


def flows_between(conn: Connection, host: str, pid: int, lo: float, hi: float) -> list[EgressRow]:
    """A process's outward and accepted rows whose last byte left in [lo, hi)."""
    return _rows(conn, f"SELECT * FROM egress WHERE host=:h AND pid=:p AND ts>=:lo AND ts<:hi AND {OUTWARD} {_ORDER}",
                 {"h": host, "p": pid, "lo": lo, "hi": hi}, EgressRow)


def recent_flows(conn: Connection, host: str, pid: int, received_since: float) -> list[EgressRow]:
    return _rows(conn, f"SELECT * FROM egress WHERE host=:h AND pid=:p AND received_at>=:r AND {OUTWARD} {_ORDER}",
                 {"h": host, "p": pid, "r": received_since}, EgressRow)


def hosts_with_reads(conn: Connection, hosts: list[str], since: float) -> set[str]:
    """Which of ``hosts`` have weight reads active at or after ``since``: one statement per 500 hosts."""
    found: set[str] = set()
    for i in range(0, len(hosts), 500):
        params: SqlParams = {f"h{n}": h for n, h in enumerate(hosts[i:i + 500])}
        found.update(conn.execute(text(f"SELECT DISTINCT host FROM weight_reads WHERE ts >= :s AND host IN "
                                       f"({', '.join(':' + k for k in params)})"), {"s": since, **params}).scalars())
    return found


def recent_relay_targets(conn: Connection, received_since: float) -> list[tuple[str, int, float]]:
    """Receivers of hand-overs that arrived lately, with the earliest such hand-over's first byte."""
    return [(r[0], int(r[1]), float(r[2])) for r in conn.execute(text(
        "SELECT host, dst_pid, min(first_ts) FROM relays WHERE received_at>=:r AND bytes>0 GROUP BY host, dst_pid"),
        {"r": received_since})]


def read_as_stored(conn: Connection, host: str, r: ReadRow) -> ReadSize | None:
    """The stored version of a weight read (same process, file, kind and start), if any."""
    row = conn.execute(text("SELECT bytes, size, ts FROM weight_reads WHERE host=:h AND pid=:p AND path=:path "
                            "AND kind=:k AND first_ts=:f"),
                       {"h": host, "p": r["pid"], "path": r["path"], "k": r["kind"], "f": r["first_ts"]}).mappings().first()
    return cast(ReadSize, dict(row)) if row else None


def outward_rows(conn: Connection, host: str, lo: float, hi: float) -> list[EgressRow]:
    """Every outward egress row of a host whose last byte left in [lo, hi)."""
    return _rows(conn, f"SELECT * FROM egress WHERE host=:h AND ts>=:lo AND ts<:hi AND {OUTWARD} {_ORDER}",
                 {"h": host, "lo": lo, "hi": hi}, EgressRow)


def last_outward(conn: Connection, host: str, pid: int) -> float | None:
    value = conn.execute(text(f"SELECT max(ts) FROM egress WHERE host=:h AND pid=:p AND {OUTWARD}"),
                         {"h": host, "p": pid}).scalar()
    return None if value is None else float(value)


def recent_span(conn: Connection, host: str, received_since: float) -> tuple[float, float] | None:
    """When the outward bytes of a host that arrived since ``received_since`` (wall clock) left."""
    row = conn.execute(text(f"SELECT min(ts), max(ts) FROM egress WHERE host=:h AND received_at>=:r AND {OUTWARD}"),
                       {"h": host, "r": received_since}).first()
    return None if row is None or row[0] is None else (float(row[0]), float(row[1]))


def outward_senders(conn: Connection, host: str, since: float) -> list[int]:
    """Pids that sent outward since ``since`` (pid 0 stands for bytes with no named process)."""
    rows = conn.execute(text(f"SELECT DISTINCT pid FROM egress WHERE host=:h AND ts>=:s AND pid>0 AND {OUTWARD}"),
                        {"h": host, "s": since}).scalars()
    return sorted(int(p) for p in rows)


def reads_of(conn: Connection, host: str, pid: int, since: float) -> list[ReadRow]:
    """Weight reads, holdings and copies of one pid (every start_time) still active at or after ``since``."""
    return _rows(conn, "SELECT * FROM weight_reads WHERE host=:h AND pid=:p AND ts>=:s ORDER BY first_ts, path, kind",
                 {"h": host, "p": pid, "s": since}, ReadRow)


def reads_between(conn: Connection, host: str, lo: float, hi: float) -> list[ReadRow]:
    """Weight reads and holdings on a host active at some time in [lo, hi) (copies are not reads)."""
    return _rows(conn, "SELECT * FROM weight_reads WHERE host=:h AND ts>=:lo AND first_ts<:hi AND kind <> 'copy' "
                       "ORDER BY first_ts, pid, path, kind", {"h": host, "lo": lo, "hi": hi}, ReadRow)


def copier_of(conn: Connection, host: str, paths: list[str], since: float) -> CopierRow | None:
    """Who wrote a copy of the weights at one of ``paths`` (the earliest copy), if the agent saw it."""
    if not paths:
        return None
    params = {f"p{i}": p for i, p in enumerate(paths)}
    rows = _rows(conn, f"SELECT pid, start_time, name, exe FROM weight_reads WHERE host=:h AND kind='copy' AND ts>=:s "
                       f"AND path IN ({', '.join(':' + k for k in params)}) ORDER BY first_ts, pid LIMIT 1",
                 {"h": host, "s": since, **params}, CopierRow)
    return rows[0] if rows else None


def pipe_writers(conn: Connection, host: str, inode: str, since: float) -> list[ReadRow]:
    """Weight reads by processes that hold the write end (only) of pipe ``inode``."""
    return _rows(conn, "SELECT * FROM weight_reads WHERE host=:h AND ts>=:s AND pipes LIKE :p "
                       "ORDER BY first_ts, pid, path, kind", {"h": host, "s": since, "p": f"%|{inode}:w|%"}, ReadRow)


def pipe_stages_writing(conn: Connection, host: str, inode: str, since: float) -> list[StageRow]:
    """Processes seen holding the write end of pipe ``inode`` that read a pipe themselves (pipeline
    stages, as samples report them), one row per process, with every pipe end it held."""
    return _rows(conn, "SELECT pid, start_time, max(name) AS name, max(exe) AS exe, max(pipes) AS pipes, "
                       "min(first_ts) AS first_ts, max(ts) AS ts FROM pipe_ends WHERE host=:h AND inode=:i "
                       "AND side='w' AND ts>=:s GROUP BY pid, start_time ORDER BY pid, start_time",
                 {"h": host, "i": inode, "s": since}, StageRow)


def stage_reads(conn: Connection, host: str, pid: int, start: float | None, since: float) -> list[str]:
    """Every pipe one process (pid and start time) was seen reading: all its rows, whichever arrived."""
    same = "start_time IS NULL" if start is None else "start_time = :st"
    return sorted(str(i) for i in conn.execute(text(
        f"SELECT DISTINCT inode FROM pipe_ends WHERE host=:h AND pid=:p AND {same} AND side='r' AND ts>=:s"),
        {"h": host, "p": pid, "st": start, "s": since}).scalars())


def pipe_readers(conn: Connection, host: str, inode: str, since: float) -> list[int]:
    """Pids seen holding the read end of pipe ``inode``."""
    rows = conn.execute(text("SELECT DISTINCT pid FROM pipe_ends WHERE host=:h AND inode=:i AND side='r' AND ts>=:s"),
                        {"h": host, "i": inode, "s": since}).scalars()
    return sorted(int(p) for p in rows)


def pipes_written_by(conn: Connection, host: str, pid: int, since: float) -> list[str]:
    """Pipes ``pid`` holds the write end of: as a weights reader, or as a reported pipeline stage."""
    found = {str(i) for i in conn.execute(text(
        "SELECT DISTINCT inode FROM pipe_ends WHERE host=:h AND pid=:p AND side='w' AND ts>=:s"),
        {"h": host, "p": pid, "s": since}).scalars()}
    for key in conn.execute(text("SELECT DISTINCT pipes FROM weight_reads WHERE host=:h AND pid=:p AND ts>=:s "
                                 "AND pipes IS NOT NULL"), {"h": host, "p": pid, "s": since}).scalars():
        found.update(part[:-2] for part in str(key).split("|") if part.endswith(":w"))
    return sorted(found)


def add_pipe_ends(conn: Connection, rows: list[PipeEndRow]) -> None:
    if rows:
        received = time.time()
        conn.execute(text(
            "INSERT INTO pipe_ends(host, inode, side, pid, start_time, name, exe, pipes, first_ts, ts, event_id, "
            "received_at) VALUES (:host, :inode, :side, :pid, :start_time, :name, :exe, :pipes, :first_ts, :ts, "
            ":event_id, :received_at)"), [{"received_at": received, **r} for r in rows])


def recent_stages(conn: Connection, received_since: float) -> list[tuple[str, int, float]]:
    """Processes whose pipe ends (as stages or readers) arrived lately, with their earliest first time."""
    return [(r[0], int(r[1]), float(r[2])) for r in conn.execute(text(
        "SELECT host, pid, min(first_ts) FROM pipe_ends WHERE received_at>=:r GROUP BY host, pid ORDER BY 1, 2"),
        {"r": received_since})]


def relays_into(conn: Connection, host: str, pid: int, since: float) -> list[RelayRow]:
    """Local hand-overs to ``pid`` (any start_time) that ended at or after ``since``."""
    return _rows(conn, "SELECT * FROM relays WHERE host=:h AND dst_pid=:p AND ts>=:s AND bytes>0 "
                       "ORDER BY ts, first_ts, event_id, src_pid", {"h": host, "p": pid, "s": since}, RelayRow)


def relay_targets(conn: Connection, host: str, pid: int, since: float) -> list[int]:
    rows = conn.execute(text("SELECT DISTINCT dst_pid FROM relays WHERE host=:h AND src_pid=:p AND ts>=:s AND bytes>0"),
                        {"h": host, "p": pid, "s": since}).scalars()
    return sorted(int(p) for p in rows)


def add_relays(conn: Connection, rows: list[RelayRow]) -> None:
    if rows:
        received = time.time()
        conn.execute(text(
            "INSERT INTO relays(host, src_pid, src_start, src_exe, src_name, dst_pid, dst_start, dst_exe, dst_name, via, "
            "bytes, first_ts, ts, event_id, received_at) VALUES (:host, :src_pid, :src_start, :src_exe, :src_name, "
            ":dst_pid, :dst_start, :dst_exe, :dst_name, :via, :bytes, :first_ts, :ts, :event_id, :received_at)"),
            [{"received_at": received, **r} for r in rows])


def contacted_since(conn: Connection, host: str, exe: str, addresses: list[str]) -> dict[str, float]:
    """When ``exe`` first contacted each of ``addresses`` on ``host`` (missing: never)."""
    if not addresses:
        return {}
    params = {f"a{i}": a for i, a in enumerate(addresses)}
    rows = conn.execute(text(f"SELECT address, first_seen FROM history WHERE host=:h AND exe=:e AND address IN "
                             f"({', '.join(':' + k for k in params)})"), {"h": host, "e": exe, **params})
    return {r[0]: float(r[1]) for r in rows}


def recent_units(conn: Connection, received_since: float, link_window_s: float) -> tuple[
        list[tuple[str, int]], list[tuple[str, float, float]], list[tuple[str, str, float, float, float]]]:
    """What facts arrived lately (wall clock), however old the times they carry, touch: outward
    senders on hosts with weight reads a link could reach (ending at most ``link_window_s`` before the send),
    hosts with new weight reads (and the span of those reads), and outward destinations."""
    senders = [(r[0], int(r[1])) for r in conn.execute(text(
        f"SELECT DISTINCT e.host, e.pid FROM egress e WHERE e.received_at>=:r AND e.pid>0 AND {OUTWARD} "
        "AND EXISTS (SELECT 1 FROM weight_reads w WHERE w.host=e.host AND w.ts>=e.ts-:w)"),
        {"r": received_since, "w": link_window_s})]
    reads = [(r[0], float(r[1]), float(r[2])) for r in conn.execute(text(
        "SELECT host, min(first_ts), max(ts) FROM weight_reads WHERE received_at>=:r GROUP BY host"),
        {"r": received_since})]
    destinations = [(r[0], r[1], float(r[2]), float(r[3]), float(r[4])) for r in conn.execute(text(
        f"SELECT host, address, min(ts), max(ts), max(received_at) FROM egress WHERE received_at>=:r AND {OUTWARD} "
        "AND COALESCE(accepted, 0) = 0 AND address NOT IN ('(other)', '(unowned)', '(unexplained)') "
        "GROUP BY host, address"),
        {"r": received_since})]
    return sorted(set(senders)), sorted(reads), sorted(destinations)


def _hour(conn: Connection) -> str:
    """The hour a row's last byte left in (floor: PostgreSQL's CAST rounds, SQLite's truncates; ts >= 0)."""
    return "CAST(ts / 3600 AS INTEGER)" if conn.dialect.name == "sqlite" else "CAST(floor(ts / 3600) AS BIGINT)"


def hourly_to(conn: Connection, host: str, address: str, lo: float, hi: float) -> list[HourlyRow]:
    """Outward bytes to one address per hour (by last send) in [lo, hi), with the first and last send."""
    hour = _hour(conn)
    return _rows(conn, f"SELECT {hour} AS hour, sum(bytes) AS bytes, min(COALESCE(first_ts, ts)) "
                       f"AS first_ts, max(ts) AS ts FROM egress WHERE host=:h AND address=:a AND ts>=:lo AND ts<:hi "
                       f"AND {OUTWARD} AND COALESCE(accepted, 0) = 0 GROUP BY {hour} ORDER BY 1",
                 {"h": host, "a": address, "lo": lo, "hi": hi}, HourlyRow)


def hourly_to_many(conn: Connection, pairs: list[tuple[str, str]], lo: float, hi: float) -> list[HourlyRow]:
    """hourly_to for many (host, address) pairs in one statement per 400 pairs."""
    out: list[HourlyRow] = []
    for i in range(0, len(pairs), 400):
        chunk = pairs[i:i + 400]
        params: SqlParams = {"lo": lo, "hi": hi}
        values = []
        for n, (host, address) in enumerate(chunk):
            params[f"h{n}"], params[f"a{n}"] = host, address
            values.append(f"(:h{n}, :a{n})")
        out += _rows(conn, f"SELECT host, address, {_hour(conn)} AS hour, sum(bytes) AS bytes, "
                           f"min(COALESCE(first_ts, ts)) AS first_ts, max(ts) AS ts FROM egress "
                           f"WHERE (host, address) IN (VALUES {', '.join(values)}) AND ts>=:lo AND ts<:hi "
                           f"AND {OUTWARD} AND COALESCE(accepted, 0) = 0 "
                           f"GROUP BY host, address, {_hour(conn)} ORDER BY 1, 2, 3", params, HourlyRow)
    return out


def weights_of(conn: Connection, hosts: list[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for i in range(0, len(hosts), 500):
        params = {f"h{n}": h for n, h in enumerate(hosts[i:i + 500])}
        out.update({r[0]: int(r[1] or 0) for r in conn.execute(text(
            f"SELECT host, weights_bytes FROM hosts WHERE host IN ({', '.join(':' + k for k in params)})"), params)})
    return out


def senders_to(conn: Connection, host: str, address: str, lo: float, hi: float) -> list[SenderTotal]:
    """Who sent outward to one address in [lo, hi), biggest first."""
    return _rows(conn, f"SELECT pid, exe, name, sum(bytes) AS bytes, min(event_id) AS event_id FROM egress "
                       f"WHERE host=:h AND address=:a AND ts>=:lo AND ts<:hi AND {OUTWARD} "
                       f"AND COALESCE(accepted, 0) = 0 GROUP BY pid, exe, name ORDER BY 4 DESC, 1 LIMIT 20",
                 {"h": host, "a": address, "lo": lo, "hi": hi}, SenderTotal)


def seq_runs(conn: Connection, host: str, after: int, limit: int = 1000) -> list[tuple[int, int]]:
    """The host's stored sequence numbers above ``after`` as [first, last] runs, computed in the
    database: a jump of millions costs one row, not millions."""
    rows = conn.execute(text(
        "SELECT min(seq), max(seq) FROM (SELECT seq, seq - ROW_NUMBER() OVER (ORDER BY seq) AS g FROM "
        "(SELECT DISTINCT seq FROM events WHERE host=:h AND seq>:a) d) r GROUP BY g ORDER BY 1 LIMIT :n"),
        {"h": host, "a": after, "n": limit})
    return [(int(r[0]), int(r[1])) for r in rows]


def min_seq(conn: Connection, host: str) -> int | None:
    value = conn.execute(text("SELECT min(seq) FROM events WHERE host=:h AND seq>0"), {"h": host}).scalar()
    return None if value is None else int(value)


def set_weights_total(conn: Connection, host: str, total: int, ts: float) -> bool:
    """Record the host's weights size as of ``ts``; True if the size in force changed."""
    before = conn.execute(text("SELECT weights_bytes FROM hosts WHERE host=:h"), {"h": host}).scalar()
    res = conn.execute(text("UPDATE hosts SET weights_bytes=:b, weights_at=:t WHERE host=:h "
                            "AND (weights_at IS NULL OR weights_at < :t OR (weights_at = :t AND weights_bytes < :b))"),
                       {"h": host, "b": total, "t": ts})
    return bool(res.rowcount) and before != total


