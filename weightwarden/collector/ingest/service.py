"""``weightwarden-collector run``: subscribe, validate, store, correlate.

Tasks in one TaskGroup. The :class:`~flow.Inbox` is owned by the service:
paho's message callback fills it (and stops reading the broker while it is
full; the MQTT task only connects, subscribes and waits), the ingest task alone
drains it in batches (one database transaction each; the larger the
backlog, the larger the batch, up to a count and a byte limit). The sweeper
looks for silent agents and sequence gaps, and re-evaluates recent uploads so
collectors sharing a database converge; retention runs beside it; the reporter
writes this collector's backlog to the database and says in the log when it
is behind. With ``--shared-group`` the subscription is an MQTT v5 shared
subscription (``$share/GROUP/weightwarden/v1/#``): the broker spreads messages
over every collector in the group.

Messages are acknowledged (PUBACK) only once their batch is committed: a
collector that crashes, or whose database is away, leaves them with the broker,
which sends them again to the same session (a stable client id) when the
collector is back. Redelivered events keep their id and are stored once. A
message that cannot be stored is a dead letter, committed and acknowledged like
the rest: only the database being away holds a batch back.

The broker session and what a takeover looks like: :mod:`session`; who sweeps: :mod:`leader`.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import os
import random
import re
import signal
import socket
import time
from dataclasses import dataclass, field
from typing import Any

import aiomqtt

from weightwarden import health, logs
from weightwarden.asyncutil import wait_for_stop
from weightwarden.collector import __version__
from weightwarden.collector.ingest.backpressure import BatchSizer, Held, Inbox, ReadGate
from weightwarden.collector.ingest.batching import DatabaseAway
from weightwarden.collector.ingest.leader import SweepLeader
from weightwarden.collector.ingest.pipeline import Pipeline
from weightwarden.collector.ingest.session import (
    TAKEN_OVER,
    UPTIME_TOPIC,
    Closed,
    TakeoverWatch,
    client_id,
    reason,
    session_client,
)
from weightwarden.collector.outputs.dispatch import Dispatcher
from weightwarden.collector.outputs.receivers import ALERT_TOPIC
from weightwarden.collector.store.host_rows import CollectorStatus
from weightwarden.collector.store.retention import Retention
from weightwarden.collector.store.retention import run as run_retention
from weightwarden.mqtt import MqttSettings

TOPIC = "weightwarden/v1/#"
BEHIND_S = 5.0  # a message waiting longer than this in the collector: it is behind, and says so
REPORT_EVERY_S = 5.0
RETENTION_EVERY_S = 60.0
SWEEP_PAUSE = 3.0  # after a sweep, wait at least three times as long as it took
FLUSH_EVERY_S = 1.0
SLOW_S = 2.0  # a batch or a sweep this long says in the log where its time went (an incident waits behind it)
LIVE_TIMEOUT_S = 5.0  # /healthz: the event loop must run a no-op this soon


@dataclass
class ServiceConfig:
    broker: MqttSettings
    shared_group: str | None = None
    retention: Retention = field(default_factory=Retention)
    sweep_every_s: float = 1.0
    client_id: str | None = None
    queue_max_bytes: int = 32 << 20
    queue_max_messages: int = 20_000  # also the MQTT Receive Maximum: unacknowledged messages we accept
    batch_max_messages: int = 5_000
    batch_max_bytes: int = 2 << 20
    batch_target_s: float = 0.5  # batches sized to take about this long (an incident waits for the one in hand)
    health_listen: str | None = None  # HOST:PORT for /healthz and /readyz (--health-listen)


class CollectorService(TakeoverWatch):
    def __init__(self, cfg: ServiceConfig, pipeline: Pipeline) -> None:
        self.cfg = cfg
        self.broker = cfg.broker
        self.pipeline = pipeline
        self.log = logs.get("collector")
        self.inbox = Inbox(cfg.queue_max_messages, cfg.queue_max_bytes)
        self.sizer = BatchSizer(target_s=cfg.batch_target_s, ceiling=cfg.batch_max_messages,
                                floor=min(BatchSizer.floor, cfg.batch_max_messages))
        self.stop = asyncio.Event()
        self.received = 0
        self.stored = 0
        self.processed = 0  # messages done with: stored, duplicates and dead letters
        self.batches = 0
        self.last_batch = 0
        self.connected = asyncio.Event()
        self._ingest_done = asyncio.Event()
        self.gate: ReadGate | None = None
        hostname = socket.gethostname()
        self.ident = cfg.client_id or client_id(pipeline.store, hostname)
        # What stats, /metrics and logs call this collector: never the secret part of its session id.
        self.name = cfg.client_id or f"weightwarden-collector-{hostname}"
        self.started_at = time.time()
        # The broker's uptime as last seen (seconds, our monotonic clock then), and whether the broker
        # ended the last connection itself (end of stream, not a timeout or a reset).
        self.uptime: tuple[float, float] | None = None
        self.uptime_seen = asyncio.Event()
        self.sys_interval: float | None = None
        self.closed_by_broker = False
        self.takeovers = 0
        # Health (/healthz, /readyz): the loop it runs on, and the database's last failure (None: it answers).
        self._loop: asyncio.AbstractEventLoop | None = None
        self.db_error: str | None = None
        self.health_server = (health.HealthServer(cfg.health_listen, self.live, self.ready)
                              if cfg.health_listen else None)  # bound here: a port in use fails the start
        # Rows every collector's every batch would update (counters, hosts): shares of their own, and
        # host rows once a second (_flusher), so collectors sharing a database never queue on them.
        pipeline.counter_part = self.name
        pipeline.defer_hosts = True
        pipeline.shared = cfg.shared_group is not None

    def topic(self) -> str:
        return f"$share/{self.cfg.shared_group}/{TOPIC}" if self.cfg.shared_group else TOPIC

    def _client(self) -> aiomqtt.Client:
        return session_client(self.cfg.broker, self.ident, self.cfg.queue_max_messages)

    async def _mqtt(self) -> None:
        backoff = 0.5
        loop = asyncio.get_running_loop()
        suspect: Closed | None = None  # the broker ended our last connection itself, without a reason
        while not self.stop.is_set():
            connected = False
            try:
                client = self._client()
                paho_client = client._client
                # aiomqtt has no manual acknowledgement of its own; paho's, on its client, before
                # connecting (a resumed session delivers at once). And messages go straight from paho's
                # callback into the inbox: aiomqtt's iterator costs a task and two futures per message.
                paho_client.manual_ack_set(True)
                self.gate = gate = ReadGate(client, loop)
                paho_client.on_message = functools.partial(self._on_message, gate)
                self._watch_end_of_stream(paho_client)
                self.inbox.on_room = gate.resume
                self.uptime_seen.clear()
                async with client:
                    connected = True
                    await client.subscribe(self.topic(), qos=1)
                    await client.subscribe(UPTIME_TOPIC, qos=0)
                    s = self.cfg.broker
                    self.log.info("collector_subscribed", topic=self.topic(), broker=f"{s.host}:{s.port}")
                    self.connected.set()
                    backoff = 0.5
                    if suspect is not None and not suspect.unreachable:
                        await self._judge_silent_close(suspect)
                    suspect = None
                    stop = asyncio.ensure_future(self.stop.wait())
                    waiters: list[asyncio.Future[Any]] = [client._disconnected, stop]
                    try:
                        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
                    finally:
                        stop.cancel()
                    if client._disconnected.done():
                        exc = client._disconnected.exception()
                        raise exc if isinstance(exc, aiomqtt.MqttError) else aiomqtt.MqttError(
                            f"disconnected: {exc}" if exc else "disconnected")
            except aiomqtt.MqttError as exc:
                self.connected.clear()
                if self.stop.is_set():
                    return
                if not connected:
                    if suspect is not None:
                        suspect.unreachable = True  # down for a while: a restart or the network, not a takeover
                elif reason(exc) == TAKEN_OVER:
                    await self._taken_over("the broker said so (MQTT v5 reason 0x8E, session taken over)")
                elif self.closed_by_broker and self.uptime is not None:
                    suspect = Closed(time.monotonic(), self.uptime, self.sys_interval)
                self.log.warning("collector_disconnected", error=str(exc), closed_by_broker=self.closed_by_broker)
                await asyncio.sleep(backoff * (0.5 + random.random()))
                backoff = min(backoff * 2, 30.0)

    def _on_message(self, gate: ReadGate, client: Any, _userdata: Any, message: Any) -> None:
        """paho's on_message, in the event loop's reader callback: into the inbox, and stop reading
        while the inbox is full (TCP, then the broker, hold the rest; ``Inbox.on_room`` resumes)."""
        ack = functools.partial(client.ack, message.mid, message.qos) if message.qos else None
        try:
            topic = message.topic
        except UnicodeDecodeError:  # the broker should refuse such a topic; it is a dead letter here
            topic = message._topic.decode("utf-8", "backslashreplace")
        if topic == UPTIME_TOPIC:
            m = re.match(rb"\s*(\d+)", bytes(message.payload))
            if m:
                up = float(m.group(1))
                if self.uptime is not None and self.uptime_seen.is_set() and up > self.uptime[0]:
                    step = up - self.uptime[0]  # the broker's sys_interval, as seen on this connection
                    self.sys_interval = step if self.sys_interval is None else min(self.sys_interval, step)
                self.uptime = (up, time.monotonic())
                self.uptime_seen.set()
            if ack is not None:
                ack()
            return
        if topic.startswith(ALERT_TOPIC + "/"):
            if ack is not None:
                ack()  # alert notifications (ours or another collector's), not agent events
            return
        self.inbox.put(Held(topic, bytes(message.payload), ack), self.pipeline.urgent(topic))
        self.received += 1
        if self.inbox.full:
            gate.pause()

    async def _ingest(self) -> None:
        try:
            while not (self.stop.is_set() and not len(self.inbox)):
                batch = await self.inbox.take(self.sizer.limit(), self.cfg.batch_max_bytes, 0.5)
                if not batch:
                    continue
                try:
                    await self._ingest_until_stored(batch)
                finally:
                    self.inbox.release(batch)
        finally:
            self._ingest_done.set()

    async def _ingest_until_stored(self, batch: list[Held]) -> None:
        """Store a batch, retrying while the database is away: dropping the batch would lose it.
        Bad content cannot fail a batch (the pipeline dead-letters what it cannot store); what
        fails is the database, and meanwhile nothing is acknowledged, so the broker holds the rest.
        After a stop that gives up, the broker still has the batch: nothing was acknowledged."""
        delay = 0.5
        messages = [(h.topic, h.payload) for h in batch]
        for attempt in itertools.count(1):
            try:
                began = time.monotonic()
                counts = await asyncio.to_thread(self.pipeline.ingest, messages)
                took = time.monotonic() - began
                self.sizer.observe(len(messages), took)
                if took > SLOW_S:
                    self.log.info("batch_slow", seconds=round(took, 2), events=len(messages),
                                  queued=len(self.inbox), **{k: round(v, 2) for k, v in self.pipeline.timing.items()})
            except Exception as exc:  # noqa: BLE001 - the database is away (or a bug): the collector stays
                self.db_error = str(exc)[:200]
                if self.stop.is_set() and attempt >= 3:
                    self.log.error("ingest_abandoned_at_stop", error=str(exc), unacknowledged=len(batch))
                    return
                event = "ingest_failed" if isinstance(exc, DatabaseAway) else "ingest_bug"
                self.log.error(event, error=str(exc) if isinstance(exc, DatabaseAway) else repr(exc)[:500],
                               attempt=attempt, kept=len(batch), queued=len(self.inbox),
                               retry_in_s=round(delay, 1))
                await wait_for_stop(self.stop, delay)
                delay = min(delay * 2, 30.0)
                continue
            self.db_error = None
            for held in batch:
                if held.ack is not None:
                    held.ack()  # on the connection it came by; if that is gone, the broker resends it
            self.stored += counts["stored"]
            self.processed += len(batch)
            self.batches += 1
            self.last_batch = len(batch)
            if attempt > 1:
                self.log.info("ingest_recovered", attempts=attempt, events=len(batch))
            return

    async def _flusher(self) -> None:
        """Host rows (last seen, heartbeat fields) of committed batches, once a second; and at the end."""
        while True:
            stopping = await wait_for_stop(self.stop, FLUSH_EVERY_S)
            try:
                await asyncio.to_thread(self.pipeline.flush_hosts)
            except Exception as exc:  # noqa: BLE001 - kept for the next flush; ingest reports the database
                self.log.debug("flush_failed", error=repr(exc)[:300])
            if stopping and self._ingest_done.is_set():
                return

    async def _sweeper(self) -> None:
        """The sweep every sweep_every_s, but never more than a quarter of the time: its cost grows
        with the fleet (it looks at every host), and ingest must keep the rest. Collectors sharing a
        PostgreSQL take turns: the sweep reads everything committed, so one of them at a time will do."""
        leader = SweepLeader(self.pipeline.store)
        try:
            while not self.stop.is_set():
                started = time.monotonic()
                try:
                    if await asyncio.to_thread(leader.acquire):
                        await asyncio.to_thread(self.pipeline.sweep)
                except Exception as exc:  # noqa: BLE001
                    self.log.error("sweep_failed", error=repr(exc)[:500])
                took = time.monotonic() - started
                if took > SLOW_S:
                    self.log.info("sweep_slow", seconds=round(took, 2))
                await wait_for_stop(self.stop, max(self.cfg.sweep_every_s - took, SWEEP_PAUSE * took))
        finally:
            await asyncio.to_thread(leader.release)

    async def _retention(self) -> None:
        await wait_for_stop(self.stop, 5.0)
        while not self.stop.is_set():
            try:
                removed = await asyncio.to_thread(run_retention, self.pipeline.store, self.cfg.retention)
                if any(removed.values()):
                    self.log.info("retention", **removed)
            except Exception as exc:  # noqa: BLE001
                self.log.error("retention_failed", error=repr(exc)[:500])
            await wait_for_stop(self.stop, RETENTION_EVERY_S)

    def status(self, rate: float) -> CollectorStatus:
        """The collector_status row (metrics.py renders it): backlog in messages, bytes and seconds."""
        return {"client_id": self.name, "hostname": socket.gethostname(), "pid": os.getpid(),
                "version": __version__, "started_at": self.started_at, "updated_at": time.time(),
                "received": self.received, "stored": self.stored, "backlog": self.inbox.held,
                "backlog_bytes": self.inbox.held_bytes, "backlog_s": round(self.inbox.oldest_age(), 3),
                "paused": int(bool(self.gate and self.gate.paused)), "ingest_rate": round(rate, 1),
                "batch": self.last_batch}

    async def _reporter(self) -> None:
        """Every few seconds: this collector's numbers into the database, and a log line while behind."""
        last_done, last_t, behind = self.processed, time.monotonic(), False
        while not self.stop.is_set():
            await wait_for_stop(self.stop, REPORT_EVERY_S)
            now = time.monotonic()
            rate = (self.processed - last_done) / max(now - last_t, 1e-3)
            last_done, last_t = self.processed, now
            status = self.status(rate)
            if (status["backlog_s"] or 0.0) > BEHIND_S or status["paused"]:
                behind = True
                self.log.warning("ingest_behind", backlog_s=status["backlog_s"], held=status["backlog"],
                                 held_bytes=status["backlog_bytes"], reading=not status["paused"],
                                 messages_per_s=status["ingest_rate"], batch=status["batch"])
            elif behind:
                behind = False
                self.log.info("ingest_caught_up", messages_per_s=status["ingest_rate"])
            try:
                await asyncio.to_thread(self._report, status)
                self.db_error = None
            except Exception as exc:  # noqa: BLE001 - the database may be away; ingest says so already
                self.db_error = str(exc)[:200]
                self.log.debug("report_failed", error=repr(exc)[:300])

    def _report(self, status: CollectorStatus) -> None:
        with self.pipeline.store.tx() as conn:
            self.pipeline.store.report_collector(conn, status)

    # -- health (read from the health server's thread) ------------------------

    def live(self) -> health.Probe:
        """Alive while the event loop answers: every task (ingest, sweep, MQTT) runs on it."""
        loop = self._loop
        if loop is None or self.stop.is_set():
            return health.Probe(True, "starting" if loop is None else "stopping")
        try:
            asyncio.run_coroutine_threadsafe(asyncio.sleep(0), loop).result(timeout=LIVE_TIMEOUT_S)
        except TimeoutError:
            return health.Probe(False, "stuck", f"the event loop did not answer within {LIVE_TIMEOUT_S:g} s")
        except RuntimeError as exc:  # the loop is closed
            return health.Probe(False, "stopped", str(exc))
        return health.Probe(True, "ok")

    def ready(self) -> health.Probe:
        """Ready while subscribed to the broker and the database answers."""
        if self.stop.is_set():
            return health.Probe(False, "stopping")
        if not self.connected.is_set():
            s = self.cfg.broker
            return health.Probe(False, "disconnected", f"not subscribed at {s.host}:{s.port}")
        if self.db_error is not None:
            return health.Probe(False, "database", self.db_error)
        return health.Probe(True, "ok")

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self.stop.set)
        loop.add_signal_handler(signal.SIGINT, self.stop.set)
        self._loop = loop
        if self.health_server is not None:
            self.health_server.start()
        try:
            return await self._run_tasks()
        finally:
            if self.health_server is not None:
                self.health_server.close()

    async def _run_tasks(self) -> int:
        async with asyncio.TaskGroup() as tg:
            mqtt = tg.create_task(self._mqtt())
            tg.create_task(self._ingest())
            tg.create_task(self._sweeper())
            tg.create_task(self._retention())
            tg.create_task(self._flusher())
            # This collector's backlog and rate, for `stats`, /metrics and the console; and the alert
            # outputs (syslog, webhook, MQTT): beside ingest, never in it.
            tg.create_task(self._reporter())
            tg.create_task(Dispatcher(self.pipeline.store, self.name).run(self.stop))
            await self.stop.wait()
            mqtt.cancel()
        return 0
