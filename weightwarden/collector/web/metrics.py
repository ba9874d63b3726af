"""Prometheus metrics of the collector, served by ``serve`` at /metrics.

Ingest rate and backlog live in each ``run`` process; it writes them to the
``collector_status`` table every few seconds (:class:`StatusWriter`) and
``serve`` reports every collector's row. One scrape target then covers every
collector sharing the database, the ingest process opens no extra port, and
the numbers are at most STATUS_EVERY_S old.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Callable

from sqlalchemy import text

from weightwarden import logs
from weightwarden.asyncutil import wait_for_stop
from weightwarden.collector.store.database import Store
from weightwarden.textsafe import visible

STATUS_EVERY_S = 5.0


def _label(value: object) -> str:
    # Label values come from agents (host names are checked, but not everything is): the exposition
    # format escapes backslash, newline and quote; other controls are made visible.
    return visible(value).replace("\\", "\\\\").replace('"', '\\"')


class _Text:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(self, name: str, kind: str, help_: str) -> None:
        self.lines += [f"# HELP {name} {help_}", f"# TYPE {name} {kind}"]

    def sample(self, name: str, value: float, **labels: object) -> None:
        lab = ",".join(f'{k}="{_label(v)}"' for k, v in labels.items())
        self.lines.append(f"{name}{{{lab}}} {value:g}" if lab else f"{name} {value:g}")

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


def render(store: Store, now: float | None = None) -> str:
    now = time.time() if now is None else now
    out = _Text()
    t0 = time.perf_counter()
    with store.tx() as conn:
        conn.execute(text("SELECT 1")).scalar()
        latency = time.perf_counter() - t0
        counters = {r[0]: int(r[1]) for r in conn.execute(text("SELECT name, value FROM counters"))}
        alerts = conn.execute(text("SELECT kind, severity, state, count(*) FROM alerts GROUP BY kind, severity, state")).all()
        hosts = conn.execute(text("SELECT host, last_seen, status FROM hosts ORDER BY host")).all()
        status = conn.execute(text("SELECT client_id, hostname, updated_at, received, backlog, ingest_rate, "
                                   "backlog_s, backlog_bytes FROM collector_status ORDER BY client_id")).all()
        deliveries = conn.execute(text("SELECT output, state, count(*) FROM alert_deliveries GROUP BY output, state")).all()
    out.family("weightwarden_events_stored_total", "counter", "Events stored, by all collectors.")
    out.sample("weightwarden_events_stored_total", counters.get("stored", 0))
    out.family("weightwarden_events_duplicate_total", "counter", "Events received again and stored once.")
    out.sample("weightwarden_events_duplicate_total", counters.get("duplicates", 0))
    out.family("weightwarden_dead_letters_total", "counter", "Messages rejected into dead_letters, by reason.")
    for name, value in sorted(counters.items()):
        if name.startswith("rejected_"):
            out.sample("weightwarden_dead_letters_total", value, reason=name[len("rejected_"):])
    out.family("weightwarden_correlation_errors_total", "counter", "Events stored whose correlation failed.")
    out.sample("weightwarden_correlation_errors_total", counters.get("correlation_errors", 0))
    out.family("weightwarden_events_backdated_total", "counter",
               "Events stored that were dated more than a day before they arrived.")
    out.sample("weightwarden_events_backdated_total", counters.get("backdated", 0))
    # Text format: each family's samples follow its own header, so one family at a time.
    for family, help_, column in (
            ("weightwarden_collector_ingest_rate", "Messages per second ingested by each collector.", 5),
            ("weightwarden_collector_backlog", "Messages received and not yet stored, per collector.", 4),
            ("weightwarden_collector_backlog_seconds", "How long the oldest message a collector holds has waited.", 6),
            ("weightwarden_collector_backlog_bytes", "Bytes of messages received and not yet stored, per collector.", 7),
            ("weightwarden_collector_status_age_seconds", "Age of each collector's last status report.", 2)):
        out.family(family, "gauge", help_)
        for row in status:
            age_or_value = round(now - float(row[2]), 3) if column == 2 else float(row[column] or 0)
            out.sample(family, age_or_value, collector=row[0], hostname=row[1] or "")
    out.family("weightwarden_alerts", "gauge", "Alerts by kind, severity and state.")
    for kind, severity, state, n in alerts:
        out.sample("weightwarden_alerts", int(n), kind=kind, severity=severity, state=state)
    out.family("weightwarden_host_last_seen_age_seconds", "gauge", "Seconds since each agent was last heard from.")
    for host, last_seen, _status in hosts:
        out.sample("weightwarden_host_last_seen_age_seconds", round(now - float(last_seen or 0), 3), host=host)
    out.family("weightwarden_host_online", "gauge", "1 if the agent is online, 0 if silent, lost or stopped.")
    for host, _last_seen, host_status in hosts:
        out.sample("weightwarden_host_online", 1 if host_status == "online" else 0, host=host)
    out.family("weightwarden_alert_deliveries", "gauge", "Alert notifications per output and delivery state.")
    for output, state, n in deliveries:
        out.sample("weightwarden_alert_deliveries", int(n), output=output, state=state)
    out.family("weightwarden_db_latency_seconds", "gauge", "Round trip of SELECT 1 to the database.")
    out.sample("weightwarden_db_latency_seconds", round(latency, 6))
    out.family("weightwarden_metrics_scrape_seconds", "gauge", "Time to gather these metrics.")
    out.sample("weightwarden_metrics_scrape_seconds", round(time.perf_counter() - t0, 6))
    return out.text()


class StatusWriter:
    """Writes this ``run`` process's ingest rate and backlog to ``collector_status`` every few seconds."""

    def __init__(self, store: Store, client_id: str, received: Callable[[], int], backlog: Callable[[], int],
                 every_s: float = STATUS_EVERY_S) -> None:
        self.store, self.client_id = store, client_id
        self.received, self.backlog, self.every_s = received, backlog, every_s
        self.started = time.time()

    def write(self, rate: float) -> None:
        with self.store.tx() as conn:
            conn.execute(text(
                "INSERT INTO collector_status(client_id, hostname, pid, started_at, updated_at, received, backlog, "
                "ingest_rate) VALUES (:c, :h, :p, :s, :u, :r, :b, :rate) ON CONFLICT (client_id) DO UPDATE SET "
                "hostname = excluded.hostname, pid = excluded.pid, started_at = excluded.started_at, "
                "updated_at = excluded.updated_at, received = excluded.received, backlog = excluded.backlog, "
                "ingest_rate = excluded.ingest_rate"),
                {"c": self.client_id, "h": socket.gethostname(), "p": os.getpid(), "s": self.started, "u": time.time(),
                 "r": self.received(), "b": self.backlog(), "rate": rate})

    async def run(self, stop: asyncio.Event) -> None:
        last_n, last_t = self.received(), time.monotonic()
        while not await wait_for_stop(stop, self.every_s):
            n, t = self.received(), time.monotonic()
            rate = (n - last_n) / max(t - last_t, 1e-3)
            last_n, last_t = n, t
            try:
                await asyncio.to_thread(self.write, round(rate, 3))
            except Exception as exc:  # noqa: BLE001 - metrics must never stop ingest; the next write retries
                logs.get("collector.metrics").warning("status_write_failed", error=repr(exc))
