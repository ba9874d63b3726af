"""The rows the collector's tables hold, as the code reads and writes them.

Each is a TypedDict: a row stays the plain mapping SQLAlchemy returns and the SQL binds (no copy,
no conversion), while mypy sees every key. A row built by detection (``detect/facts.py``) lacks
what the store adds (``host`` where the batch adds it, ``received_at``); a row read back has
them. Columns an older schema lacked are read back as None: the readers already allow for it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NotRequired, TypedDict

from weightwarden.jsontypes import JsonObject

# What SQL binds: one scalar per named parameter.
SqlValue = str | int | float | bool | bytes | None
SqlParams = dict[str, SqlValue]
# An alert's evidence as a rule writes it: stored with json.dumps(default=str), read back as JSON.
Evidence = Mapping[str, object]


class EgressRow(TypedDict):
    """One process's bytes to one destination in one sample (the ``egress`` view: raw and per-minute)."""

    pid: int
    ppid: int | None
    exe: str
    name: str
    uid: int | None
    start_time: float | None
    address: str
    port: int
    allowed: int
    bytes: int
    ts: float  # its last byte left then
    first_ts: float  # ... and its first then
    rate_bps: float
    event_id: str
    protocol: str | None
    accepted: int | None  # 1: the peer opened the connection (a reply); None: unknown
    exact: int  # 1: first_ts/ts are this destination's own sends
    pipes: str | None
    container: str | None  # JSON
    cmd_hash: str | None
    user_name: str | None
    dns_name: str | None
    complete: int | None
    host: NotRequired[str]
    received_at: NotRequired[float | None]


class ReadRow(TypedDict):
    """A weight read, holding, staged read or copy (``weight_reads``)."""

    pid: int
    ppid: int | None
    exe: str | None
    name: str | None
    uid: int | None
    start_time: float | None
    event_id: str
    staged_of: str | None  # the copied files, one per line
    pipes: str | None
    container: str | None  # JSON
    cmd_hash: str | None
    inode: str | None
    dev: str | None
    path: str
    kind: str  # read, staged_read, holder, copy
    bytes: int
    size: int | None
    first_ts: float
    ts: float
    how: NotRequired[str | None]
    remote: NotRequired[str | None]
    derivative: NotRequired[int]
    host: NotRequired[str]
    received_at: NotRequired[float | None]


class RelayRow(TypedDict):
    """Bytes one process handed another on the host in one sample (``relays``)."""

    src_pid: int
    src_start: float | None
    src_exe: str | None
    src_name: str | None
    dst_pid: int
    dst_start: float | None
    dst_exe: str | None
    dst_name: str | None
    via: str
    bytes: int
    first_ts: float
    ts: float
    event_id: str
    host: NotRequired[str]
    received_at: NotRequired[float | None]


class PipeEndRow(TypedDict):
    """One pipe end held by a process that reads a pipe (``pipe_ends``)."""

    inode: str
    side: str  # r or w
    pid: int
    start_time: float | None
    name: str | None
    exe: str | None
    pipes: str | None
    first_ts: float
    ts: float
    event_id: str
    host: NotRequired[str]
    received_at: NotRequired[float | None]


class StageRow(TypedDict):
    """A process seen writing a pipe, with every pipe end it held (store.facts.pipe_stages_writing)."""

    pid: int
    start_time: float | None
    name: str | None
    exe: str | None
    pipes: str | None
    first_ts: float
    ts: float


class CopierRow(TypedDict):
    pid: int
    start_time: float | None
    name: str | None
    exe: str | None


class HourlyRow(TypedDict):
    """Outward bytes to one address in one hour (by last send)."""

    hour: int
    bytes: int
    first_ts: float
    ts: float
    host: NotRequired[str]
    address: NotRequired[str]


class SenderTotal(TypedDict):
    """Who sent to one address in a window, and how much."""

    pid: int
    exe: str
    name: str
    bytes: int
    event_id: str


class RawSocketRow(TypedDict):
    """A packet socket that sent (``raw_sockets``)."""

    pid: int
    start_time: float | None
    name: str | None
    exe: str | None
    uid: int | None
    container: str | None
    ppid: int | None
    pipes: str | None
    cmd_hash: str | None
    family: str
    interface: str | None
    bypass: int | None
    allowed: int
    tx_bytes: int
    tx_packets: int | None
    action: str | None
    killed: int | None
    escaped_bytes: int | None
    first_ts: float
    ts: float
    event_id: str
    host: NotRequired[str]
    received_at: NotRequired[float | None]


class RelinkRow(TypedDict):
    """A weight file given a new name (``relinks``)."""

    inode: str
    dev: str | None
    how: str
    from_path: str
    to_path: str
    outside_tree: int
    size: int | None
    pid: int | None
    start_time: float | None
    name: str | None
    exe: str | None
    uid: int | None
    ts: float
    event_id: str
    host: NotRequired[str]
    received_at: NotRequired[float | None]


class AuditRecord(TypedDict):
    """One entry of the audit trail (``audit``), as store.audit writes and reads it."""

    id: int
    ts: float
    user: str
    action: str
    target: str | None
    source: str | None
    via: str | None
    outcome: str
    detail: str | None
    comment: str | None
    alert_key: str | None
    alert_id: str | None


class _AlertColumns(TypedDict):
    key: str
    id: str
    host: str
    kind: str
    severity: str
    state: str
    title: str
    explanation: str
    first_ts: float
    last_ts: float
    created_at: float
    updated_at: float
    count: int
    acked_by: str | None
    acked_at: float | None
    resolved_by: str | None
    resolved_at: float | None
    assignee: str | None
    fact_order: str | None
    raised_at: float | None


class StoredAlert(_AlertColumns):
    """An alert as the ``alerts`` table holds it: its evidence as JSON text."""

    evidence: str
    severity_rank: int


class AlertRow(_AlertColumns):
    """A stored alert with its evidence parsed (the store's readers drop the rank and add ``backdated``)."""

    evidence: JsonObject
    severity_rank: NotRequired[int]
    backdated: NotRequired[float | None]


class AlertDraftRow(TypedDict):
    """An alert as a detection writes it (common.Draft.to_row)."""

    key: str
    id: str
    host: str
    kind: str
    severity: str
    title: str
    explanation: str
    evidence: Evidence
    first_ts: float
    last_ts: float
    reopen: NotRequired[bool]
    count: NotRequired[int | None]


__all__ = ["AlertDraftRow", "AlertRow", "AuditRecord", "CopierRow", "EgressRow", "Evidence", "HourlyRow", "PipeEndRow",
           "RawSocketRow", "ReadRow", "RelayRow", "RelinkRow", "SenderTotal", "SqlParams", "SqlValue",
           "StageRow", "StoredAlert"]
