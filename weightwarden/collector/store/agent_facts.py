"""What the agents say of themselves and of what they saw beside the flows: the sensor's state, the
agent's lifecycle, spans the sensor may have been blind in, packet sockets, relinked weight files.
Detection's rules read and write them through these functions (store.facts holds the flows')."""

from __future__ import annotations

import json
import time
from typing import cast

from sqlalchemy import Connection, text

from weightwarden.collector.store.facts import _rows
from weightwarden.collector.store.host_rows import LifecycleRow, SensorRow
from weightwarden.collector.store.rows import AlertRow, RawSocketRow, ReadRow, RelinkRow, StoredAlert

# -- the sensor's state ------------------------------------------------------------------------------


def record_sensor(conn: Connection, host: str, state: str, ts: float, whole: bool) -> None:
    """One report of the sensor's state (JSON) at ``ts`` (the agent's clock): the latest wins, and the
    latest whole and latest degraded times are kept, so the verdict does not depend on arrival order."""
    conn.execute(text(
        "INSERT INTO sensors(host, state, state_at, whole_at, degraded_at, degraded) VALUES "
        "(:h, :s, :t, :w, :d, :ds) ON CONFLICT (host) DO UPDATE SET "
        "state = CASE WHEN sensors.state_at IS NULL OR excluded.state_at >= sensors.state_at THEN excluded.state "
        "  ELSE sensors.state END, "
        "state_at = CASE WHEN sensors.state_at IS NULL OR excluded.state_at >= sensors.state_at "
        "  THEN excluded.state_at ELSE sensors.state_at END, "
        "whole_at = CASE WHEN sensors.whole_at IS NULL OR excluded.whole_at > sensors.whole_at THEN excluded.whole_at "
        "  ELSE sensors.whole_at END, "
        "degraded = CASE WHEN excluded.degraded_at IS NOT NULL AND (sensors.degraded_at IS NULL OR "
        "  excluded.degraded_at >= sensors.degraded_at) THEN excluded.degraded ELSE sensors.degraded END, "
        "degraded_at = CASE WHEN sensors.degraded_at IS NULL OR excluded.degraded_at > sensors.degraded_at "
        "  THEN excluded.degraded_at ELSE sensors.degraded_at END"),
        {"h": host, "s": state, "t": ts, "w": ts if whole else None, "d": None if whole else ts,
         "ds": None if whole else state})


def sensor_of(conn: Connection, host: str) -> SensorRow | None:
    row = conn.execute(text("SELECT * FROM sensors WHERE host=:h"), {"h": host}).mappings().first()
    return cast(SensorRow, dict(row)) if row else None


def blind_spans(conn: Connection, host: str, lo: float, hi: float) -> list[tuple[float, float]]:
    """Spans the sensor may have missed bytes in (it was tampered with) overlapping [lo, hi)."""
    return [(float(r[0]), float(r[1])) for r in conn.execute(text(
        "SELECT first_ts, ts FROM blind_spans WHERE host=:h AND ts>=:lo AND first_ts<:hi ORDER BY 1, 2"),
        {"h": host, "lo": lo, "hi": hi})]


def add_blind_span(conn: Connection, host: str, first: float, last: float, event_id: str) -> None:
    conn.execute(text("INSERT INTO blind_spans(host, first_ts, ts, event_id, received_at) VALUES "
                      "(:h, :f, :t, :e, :r)"), {"h": host, "f": first, "t": last, "e": event_id, "r": time.time()})


# -- the agent's lifecycle -----------------------------------------------------------------------------

LIFECYCLE = ("started_at", "stopped_at", "stop_reason", "lost_conn", "lost_at", "lost_seen", "silent_from", "beat_at",
             "beat_gap")


def lifecycle_of(conn: Connection, host: str) -> LifecycleRow:
    row = conn.execute(text("SELECT * FROM lifecycle WHERE host=:h"), {"h": host}).mappings().first()
    return cast(LifecycleRow, dict(row) if row else {"host": host, **{c: None for c in LIFECYCLE}})


def note_lifecycle(conn: Connection, host: str, **latest: float | str | None) -> None:
    """Keep the latest of each lifecycle time (by the agent's clock, except ``lost_at`` and ``silent_from``,
    the collector's); ``stop_reason`` goes with ``stopped_at``; ``silent_from`` is replaced, ``beat_gap``
    replaced unless None."""
    cols = [c for c in LIFECYCLE if c in latest]
    if not cols:
        return
    newer = {c: f"{c} = CASE WHEN lifecycle.{c} IS NULL OR excluded.{c} > lifecycle.{c} THEN excluded.{c} "
                f"ELSE lifecycle.{c} END" for c in ("started_at", "stopped_at", "lost_conn", "lost_at", "beat_at")}
    newer["stop_reason"] = ("stop_reason = CASE WHEN lifecycle.stopped_at IS NULL OR excluded.stopped_at >= "
                            "lifecycle.stopped_at THEN excluded.stop_reason ELSE lifecycle.stop_reason END")
    newer["silent_from"] = "silent_from = excluded.silent_from"
    newer["lost_seen"] = "lost_seen = excluded.lost_seen"  # goes with the latest will (the caller checks)
    newer["beat_gap"] = "beat_gap = coalesce(excluded.beat_gap, lifecycle.beat_gap)"
    sets = [newer[c] for c in cols if c != "stop_reason"] + ([newer["stop_reason"]] if "stop_reason" in cols else [])
    if "stop_reason" in cols and "stopped_at" not in cols:
        raise ValueError("stop_reason goes with stopped_at")
    conn.execute(text(f"INSERT INTO lifecycle(host, {', '.join(cols)}) VALUES (:host, {', '.join(':' + c for c in cols)}) "
                      f"ON CONFLICT (host) DO UPDATE SET {', '.join(sets)}"), {"host": host, **latest})


# -- raw sockets, relinked weights ---------------------------------------------------------------------


def add_raw_socket(conn: Connection, row: RawSocketRow) -> None:
    conn.execute(text(
        "INSERT INTO raw_sockets(host, pid, start_time, name, exe, uid, container, ppid, pipes, cmd_hash, family, "
        "interface, bypass, allowed, tx_bytes, tx_packets, action, killed, escaped_bytes, first_ts, ts, event_id, "
        "received_at) VALUES (:host, :pid, :start_time, :name, :exe, :uid, :container, :ppid, :pipes, :cmd_hash, "
        ":family, :interface, :bypass, :allowed, :tx_bytes, :tx_packets, :action, :killed, :escaped_bytes, "
        ":first_ts, :ts, :event_id, :received_at)"), {"received_at": time.time(), **row})


def raw_sockets_of(conn: Connection, host: str, pid: int) -> list[RawSocketRow]:
    return _rows(conn, "SELECT * FROM raw_sockets WHERE host=:h AND pid=:p ORDER BY ts, event_id",
                 {"h": host, "p": pid}, RawSocketRow)


def raw_socket_pids(conn: Connection, host: str, pids: list[int]) -> list[int]:
    """Which of ``pids`` have packet sockets that sent on ``host`` (the raw-socket rule judges them again
    when what they read changes)."""
    if not pids:
        return []
    params = {f"p{i}": p for i, p in enumerate(pids)}
    return sorted(int(p) for p in conn.execute(text(
        f"SELECT DISTINCT pid FROM raw_sockets WHERE host=:h AND pid IN ({', '.join(':' + k for k in params)})"),
        {"h": host, **params}).scalars())


def add_relink(conn: Connection, row: RelinkRow) -> None:
    conn.execute(text(
        "INSERT INTO relinks(host, inode, dev, how, from_path, to_path, outside_tree, size, pid, start_time, name, "
        "exe, uid, ts, event_id, received_at) VALUES (:host, :inode, :dev, :how, :from_path, :to_path, "
        ":outside_tree, :size, :pid, :start_time, :name, :exe, :uid, :ts, :event_id, :received_at)"),
        {"received_at": time.time(), **row})


def relinks_of(conn: Connection, host: str, inode: str) -> list[RelinkRow]:
    return _rows(conn, "SELECT * FROM relinks WHERE host=:h AND inode=:i ORDER BY ts, event_id",
                 {"h": host, "i": inode}, RelinkRow)


def relinked_inodes(conn: Connection, host: str) -> list[str]:
    return [str(i) for i in conn.execute(text("SELECT DISTINCT inode FROM relinks WHERE host=:h ORDER BY 1"),
                                         {"h": host}).scalars()]


def reads_of_inode(conn: Connection, host: str, inode: str, since: float) -> list[ReadRow]:
    """Weight reads (not copies) of the file with this inode that went on at or after ``since``."""
    return _rows(conn, "SELECT * FROM weight_reads WHERE host=:h AND inode=:i AND ts>=:s AND kind <> 'copy' "
                       "ORDER BY first_ts, pid, path, kind", {"h": host, "i": inode, "s": since}, ReadRow)


def alerts_of(conn: Connection, host: str, prefix: str) -> list[AlertRow]:
    """A host's alerts whose key starts with ``prefix``, with their evidence parsed."""
    pattern = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
    out = _rows(conn, "SELECT * FROM alerts WHERE host=:h AND key LIKE :p ESCAPE '\\' ORDER BY key",
                {"h": host, "p": pattern}, StoredAlert)
    return [cast(AlertRow, {**a, "evidence": json.loads(a["evidence"])}) for a in out]
