"""``weightwarden-collector run``: subscribe, validate, store, correlate.

Tasks in one TaskGroup. The message queue is owned by the service: the MQTT
task fills it, the ingest task alone drains it in batches (one database
transaction each). The sweeper looks for silent agents and sequence gaps,
and re-evaluates recent uploads so collectors sharing a database converge.
With ``--shared-group`` the subscription is an MQTT v5 shared subscription
(``$share/GROUP/weightwarden/v1/#``): the broker spreads messages over every
collector in the group.

Messages are acknowledged (PUBACK) only once their batch is committed: a
collector that crashes, or whose database is away, leaves them with the broker,
which sends them again to the same session (a stable client id, default
``weightwarden-collector-<hostname>``) when the collector is back. Redelivered
events keep their id and are stored once.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import random
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from weightwarden import logs
from weightwarden.asyncutil import wait_for_stop
from weightwarden.mqtt import MqttSettings
from weightwarden.collector.metrics import StatusWriter
from weightwarden.collector.outputs.dispatch import Dispatcher
from weightwarden.collector.outputs.receivers import ALERT_TOPIC
from weightwarden.collector.pipeline import Pipeline

TOPIC = "weightwarden/v1/#"
BATCH = 500
SESSION_EXPIRY_S = 300


@dataclass
class ServiceConfig:
    broker: MqttSettings
    shared_group: str | None = None
    retention_s: float = 30 * 86400.0
    sweep_every_s: float = 1.0
    client_id: str | None = None


class CollectorService:
    def __init__(self, cfg: ServiceConfig, pipeline: Pipeline) -> None:
        self.cfg = cfg
        self.pipeline = pipeline
        self.log = logs.get("collector")
        # (topic, payload, send its PUBACK): acknowledged after the commit, not on arrival.
        self.queue: asyncio.Queue[tuple[str, bytes, Callable[[], object] | None]] = asyncio.Queue(maxsize=50_000)
        self.stop = asyncio.Event()
        self.received = 0
        self.connected = asyncio.Event()

    def topic(self) -> str:
        return f"$share/{self.cfg.shared_group}/{TOPIC}" if self.cfg.shared_group else TOPIC

    async def _mqtt(self) -> None:
        s = self.cfg.broker
        backoff = 0.5
        # Stable across restarts, so a restarted collector resumes its session and gets what it had not
        # acknowledged. Several collectors on one host need --client-id each.
        ident = self.cfg.client_id or f"weightwarden-collector-{socket.gethostname()}"
        while not self.stop.is_set():
            try:
                # A persistent session: if the connection drops, the broker keeps queueing
                # QoS 1 messages for us and hands them over when we are back.
                props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
                props.SessionExpiryInterval = SESSION_EXPIRY_S
                client = aiomqtt.Client(
                    s.host, s.port, username=s.username, password=s.password, identifier=ident,
                    protocol=aiomqtt.ProtocolVersion.V5, keepalive=s.keepalive, clean_start=False,
                    properties=props, tls_context=s.ssl_context() if s.tls else None, timeout=10,
                )
                # aiomqtt has no manual acknowledgement of its own; paho's, on its client, before
                # connecting (a resumed session delivers at once).
                paho_client = client._client
                paho_client.manual_ack_set(True)
                async with client:
                    await client.subscribe(self.topic(), qos=1)
                    self.log.info("collector_subscribed", topic=self.topic(), broker=f"{s.host}:{s.port}")
                    self.connected.set()
                    backoff = 0.5
                    async for message in client.messages:
                        payload = message.payload if isinstance(message.payload, bytes) else \
                            str(message.payload).encode()
                        ack = functools.partial(paho_client.ack, message.mid, message.qos) if message.qos else None
                        if str(message.topic).startswith(ALERT_TOPIC + "/"):
                            if ack is not None:
                                ack()  # alert notifications (ours or another collector's), not agent events
                            continue
                        await self.queue.put((str(message.topic), payload, ack))
                        self.received += 1
                        if self.stop.is_set():
                            break
            except aiomqtt.MqttError as exc:
                self.connected.clear()
                self.log.warning("collector_disconnected", error=str(exc))
                await asyncio.sleep(backoff * (0.5 + random.random()))
                backoff = min(backoff * 2, 30.0)

    async def _ingest(self) -> None:
        while not (self.stop.is_set() and self.queue.empty()):
            try:
                first = await asyncio.wait_for(self.queue.get(), timeout=0.5)
            except TimeoutError:
                continue
            batch = [first]
            while len(batch) < BATCH and not self.queue.empty():
                batch.append(self.queue.get_nowait())
            await self._ingest_until_stored(batch)

    async def _ingest_until_stored(self, batch: list[tuple[str, bytes, Callable[[], object] | None]]) -> None:
        """Store a batch, retrying while the database is away: the events were already
        acknowledged to the broker, so dropping them here would lose them. Bad content
        cannot fail a batch (the pipeline dead-letters and isolates it per event); what
        fails is the database, and meanwhile nothing is acknowledged, so the broker holds the rest.
        After a stop that gives up, the broker still has the batch: nothing was acknowledged."""
        delay = 0.5
        for attempt in itertools.count(1):
            try:
                await asyncio.to_thread(self.pipeline.ingest, [(topic, payload) for topic, payload, _ in batch])
                for _topic, _payload, ack in batch:
                    if ack is not None:
                        ack()  # on the connection it came by; if that is gone, the broker resends it
                if attempt > 1:
                    self.log.info("ingest_recovered", attempts=attempt, events=len(batch))
                return
            except Exception as exc:  # noqa: BLE001 - the database may be away; the collector stays
                if self.stop.is_set() and attempt >= 3:
                    self.log.error("ingest_abandoned_at_stop", error=repr(exc), unacknowledged=len(batch))
                    return
                self.log.error("ingest_failed", error=repr(exc), attempt=attempt, kept=len(batch),
                               queued=self.queue.qsize(), retry_in_s=round(delay, 1))
                await wait_for_stop(self.stop, delay)
                delay = min(delay * 2, 30.0)

    async def _sweeper(self) -> None:
        last_purge = 0.0
        while not self.stop.is_set():
            try:
                await asyncio.to_thread(self.pipeline.sweep)
                if time.time() - last_purge > 600:
                    last_purge = time.time()
                    await asyncio.to_thread(self.pipeline.store.purge, self.cfg.retention_s)
            except Exception as exc:  # noqa: BLE001
                self.log.error("sweep_failed", error=repr(exc))
            await wait_for_stop(self.stop, self.cfg.sweep_every_s)

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self.stop.set)
        loop.add_signal_handler(signal.SIGINT, self.stop.set)
        async with asyncio.TaskGroup() as tg:
            mqtt = tg.create_task(self._mqtt())
            tg.create_task(self._ingest())
            tg.create_task(self._sweeper())
            # Alert outputs (syslog, webhook, MQTT) and the status /metrics reports: both beside ingest, never in it.
            ident = self.cfg.client_id or f"weightwarden-collector-{socket.gethostname()}"
            tg.create_task(Dispatcher(self.pipeline.store, ident).run(self.stop))
            tg.create_task(StatusWriter(self.pipeline.store, ident, lambda: self.received, self.queue.qsize).run(self.stop))
            await self.stop.wait()
            mqtt.cancel()
        return 0
