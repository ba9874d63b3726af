"""Events -> the rows detection stores: egress rows, local relays, weight reads. Pure.

Each egress row says when its bytes left ([first_ts, ts]: the destination's own first and
last send where the agent knows them, else the sample's interval), who sent them (pid and
start time, so a reused pid is another process), and how (protocol, whether the peer opened
the connection). Bytes the agent could not put on one destination or one process become
rows of their own, so no byte drops out of the host-level rule.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping

from weightwarden.collector.detect.common import OTHER, UNEXPLAINED, UNOWNED
from weightwarden.collector.store.rows import EgressRow, PipeEndRow, ReadRow, RelayRow
from weightwarden.events import (
    EgressSample,
    Event,
    FileAccess,
    ProcessFields,
    SensorState,
    UnexplainedEgress,
    WeightHolder,
    WeightsCopy,
)


def pipe_key(pipes: list[int], ends: Mapping[str, str] | None = None) -> str | None:
    """Pipe inodes with the end held, as '|12:r|34:w|56|' (no suffix: end unknown), so one LIKE
    finds the writers of a pipe. An older agent sends no ends: its pipes link nothing."""
    ends = ends or {}
    inodes = [str(p) for p in pipes[:64]] + [i for i in sorted(ends) if i not in {str(p) for p in pipes}]
    if not inodes:
        return None
    return "|" + "|".join(f"{i}:{ends[i]}" if i in ends else i for i in inodes[:64]) + "|"


def parse_pipes(key: str | None) -> list[tuple[str, str | None]]:
    out: list[tuple[str, str | None]] = []
    for part in (key or "").split("|"):
        if part:
            inode, _, end = part.partition(":")
            out.append((inode, end or None))
    return out


def cmd_hash(cmdline: list[str]) -> str | None:
    return hashlib.sha256("\0".join(cmdline).encode()).hexdigest()[:16] if cmdline else None


def container_json(p: ProcessFields) -> str | None:
    return json.dumps(p.container.model_dump(exclude_none=True), sort_keys=True) if p.container else None


def sensor_whole(sensor: SensorState | None) -> bool:
    """The sensor sees every byte and its owner: the eBPF path, with nothing it should have off."""
    return sensor is not None and sensor.path == "ebpf" and not sensor.degraded


def complete(data: EgressSample) -> int | None:
    """1 when the sample's sensor was whole (the eBPF path, nothing degraded), 0 when it was not, None
    from an agent that does not say. Bytes it could not name a process for are rows of their own (pid 0)."""
    if data.sensor is None:
        return None
    return int(sensor_whole(data.sensor))


def egress_rows(ev: Event) -> list[EgressRow]:
    """An egress sample's rows, one per process and destination (the model has range-checked every value);
    an unexplained_egress event's bytes as one row no process is named for."""
    data = ev.data
    if isinstance(data, UnexplainedEgress):
        return unexplained_rows(ev, data)
    if not isinstance(data, EgressSample):
        return []
    whole = complete(data)
    interval = max(data.interval_s, 1e-3)
    start = data.start_ts if data.start_ts is not None else data.ts - interval
    rows: list[EgressRow] = []

    def row(proc: ProcessFields | None, pid: int, exe: str, address: str, port: int, nbytes: int, *,
            allowed: int = 0, protocol: str | None = None, accepted: int | None = None, first_ts: float = start,
            ts: float = data.ts, rate_bps: float | None = None, dns_name: str | None = None, exact: int = 0) -> None:
        rows.append({
            "pid": pid, "ppid": proc.ppid if proc else None, "exe": exe, "name": (proc.name if proc else exe) or "",
            "uid": proc.uid if proc else None, "start_time": proc.start_time if proc else None,
            "address": address, "port": port, "allowed": allowed, "bytes": nbytes, "ts": ts, "first_ts": first_ts,
            "rate_bps": nbytes * 8 / interval if rate_bps is None else rate_bps, "event_id": ev.id,
            "protocol": protocol, "accepted": accepted, "exact": exact,
            "pipes": pipe_key(proc.pipes, dict(proc.pipe_ends)) if proc else None,
            "container": container_json(proc) if proc else None, "cmd_hash": cmd_hash(proc.cmdline) if proc else None,
            "user_name": proc.user if proc else None, "dns_name": dns_name, "complete": whole})

    for proc in data.processes:
        exe = proc.exe or ""
        for dest in proc.destinations:
            if dest.tx_bytes == 0:
                continue
            first = dest.first_ts if dest.first_ts is not None else start
            last = dest.last_ts if dest.last_ts is not None else data.ts
            row(proc, proc.pid, exe, dest.address, dest.port, dest.tx_bytes, allowed=int(dest.allowed),
                protocol=dest.protocol, accepted=None if dest.accepted is None else int(dest.accepted),
                first_ts=min(first, last), ts=last, rate_bps=proc.tx_bytes * 8 / interval, dns_name=dest.name,
                exact=int(dest.first_ts is not None and dest.last_ts is not None))
        if proc.other_destinations and proc.other_destinations.tx_bytes:
            # The tail beyond the agent's top destinations: replies if everything shown is replies.
            serving = bool(proc.destinations) and all(d.accepted for d in proc.destinations)
            row(proc, proc.pid, exe, OTHER, 0, proc.other_destinations.tx_bytes, accepted=1 if serving else None)
    if data.other_processes and data.other_processes.tx_bytes:
        row(None, 0, "(other processes)", OTHER, 0, data.other_processes.tx_bytes)
    if data.unowned_flow_tx_bytes:
        row(None, 0, UNOWNED, UNOWNED, 0, data.unowned_flow_tx_bytes)
    return rows


def unexplained_rows(ev: Event, d: UnexplainedEgress) -> list[EgressRow]:
    """Bytes that left an interface with no owner and no header to explain them (raw frames, a blinded
    sensor): counted by the host-level rule like unowned flows."""
    if not d.unexplained_tx_bytes:
        return []
    seconds = max(d.last_ts - d.first_ts, 1e-3)
    return [{"pid": 0, "ppid": None, "exe": UNEXPLAINED, "name": d.interface, "uid": None, "start_time": None,
             "address": UNEXPLAINED, "port": 0, "allowed": 0, "bytes": d.unexplained_tx_bytes, "ts": d.last_ts,
             "first_ts": min(d.first_ts, d.last_ts), "rate_bps": d.unexplained_tx_bytes * 8 / seconds,
             "event_id": ev.id, "protocol": None, "accepted": None, "exact": 1, "pipes": None, "container": None,
             "cmd_hash": None, "user_name": None, "dns_name": None,
             "complete": None if d.sensor is None else int(sensor_whole(d.sensor))}]


def pipe_rows(ev: Event) -> list[PipeEndRow]:
    """For each process in a sample that reads a pipe (a sender fed by a pipe, a pipeline stage), one row
    per pipe end it holds: who reads what, through any number of stages (an agent names the writers of
    a sender's pipes as processes of their own in the sample)."""
    data = ev.data
    if not isinstance(data, EgressSample):
        return []
    start = data.start_ts if data.start_ts is not None else data.ts - max(data.interval_s, 1e-3)
    out: list[PipeEndRow] = []
    for p in data.processes:
        ends = dict(p.pipe_ends)
        if "r" not in ends.values():
            continue
        key = pipe_key(p.pipes, ends)
        for inode, side in sorted(ends.items()):
            if side in ("r", "w"):
                out.append({"inode": inode, "side": side, "pid": p.pid, "start_time": p.start_time, "name": p.name,
                            "exe": p.exe, "pipes": key, "first_ts": start, "ts": data.ts, "event_id": ev.id})
    return out


def relay_rows(ev: Event) -> list[RelayRow]:
    """One row per process and local peer it handed bytes to in the sample's interval (a peer the
    agent could not name links nothing: the host-level rule still sees what leaves)."""
    data = ev.data
    if not isinstance(data, EgressSample):
        return []
    start = data.start_ts if data.start_ts is not None else data.ts - max(data.interval_s, 1e-3)
    return [{"src_pid": p.pid, "src_start": p.start_time, "src_exe": p.exe, "src_name": p.name, "dst_pid": peer.pid,
             "dst_start": peer.start_time, "dst_exe": peer.exe, "dst_name": peer.name, "via": peer.via,
             "bytes": peer.tx_bytes, "first_ts": start, "ts": data.ts, "event_id": ev.id}
            for p in data.processes for peer in p.local_peers if peer.tx_bytes > 0 and peer.pid is not None]


def weight_row(ev: Event, d: FileAccess | WeightHolder | WeightsCopy) -> ReadRow:
    ts = ev.ts
    pid = d.pid if d.pid is not None else -1
    inode = None if d.inode is None else str(d.inode)
    dev = None if d.dev is None else str(d.dev)
    pipes, container, hashed = pipe_key(d.pipes, dict(d.pipe_ends)), container_json(d), cmd_hash(d.cmdline)
    if isinstance(d, FileAccess):
        staged = d.staged_copy_of
        how = d.how or ("estimate" if d.bytes_estimated else None)
        return {"pid": pid, "ppid": d.ppid, "exe": d.exe, "name": d.name, "uid": d.uid, "event_id": ev.id,
                "pipes": pipes, "start_time": d.start_time, "container": container, "cmd_hash": hashed,
                "inode": inode, "dev": dev, "path": d.host_path or d.path, "kind": "staged_read" if staged else "read",
                "bytes": d.bytes_read, "size": d.size, "how": how, "first_ts": d.first_ts,
                "ts": max(d.last_ts, d.first_ts), "staged_of": "\n".join(staged) or None}
    if isinstance(d, WeightHolder):
        # Held since the process started, where known; otherwise since the agent saw it.
        since = d.start_time if d.start_time is not None else ts
        return {"pid": pid, "ppid": d.ppid, "exe": d.exe, "name": d.name, "uid": d.uid, "event_id": ev.id,
                "staged_of": None, "pipes": pipes, "start_time": d.start_time, "container": container,
                "cmd_hash": hashed, "inode": inode, "dev": dev, "path": d.path, "kind": "holder",
                "bytes": max(d.mapped_bytes, d.resident_bytes), "size": d.mapped_bytes, "how": "mmap",
                "first_ts": min(since, ts), "ts": ts}
    return {"pid": pid, "ppid": d.ppid, "exe": d.exe, "name": d.name, "uid": d.uid, "event_id": ev.id,
            "pipes": pipes, "start_time": d.start_time, "container": container, "cmd_hash": hashed,
            "inode": inode, "dev": dev, "path": d.destination, "kind": "copy", "bytes": d.destination_size,
            "size": d.destination_size, "first_ts": ts, "ts": ts, "staged_of": "\n".join(d.sources) or None,
            "remote": d.remote, "derivative": int(d.derivative)}
