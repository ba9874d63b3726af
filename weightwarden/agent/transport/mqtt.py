"""MQTT v5 sink: spool first, publish with QoS 1, delete on PUBACK.

Topics are ``weightwarden/v1/<host>/<type>``. A Last-Will (type
``agent_lost``, seq 0: it is outside the sequence) tells the collector when
the agent vanished without saying goodbye; a clean stop disconnects normally,
so the broker discards the will. Reconnects back off from 0.5 s to 30 s with
jitter; whatever was not acknowledged is sent again (same ``id``). So is what
the broker acknowledged in the last ``replay`` seconds (default 30): Mosquitto
acknowledges before it saves, and a broker that crashed comes back without what
it took since its last save (``autosave_interval``). Duplicates carry their
original ``id``; the collector stores each once.

URL: mqtt[s]://[USER[:PASS]@]HOST[:PORT][?keepalive=S&replay=S&ca=F&cert=F&key=F&password_file=F&client_id=ID]
A password is best given by file: ``password_file=`` or systemd's
LoadCredential=mqtt-password (read from $CREDENTIALS_DIRECTORY), never an
environment variable.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
import uuid
from pathlib import Path
from typing import Any

import aiomqtt

from weightwarden import logs
from weightwarden.agent.transport.sink import SinkStats
from weightwarden.agent.transport.spool import Spool
from weightwarden.events import AgentLost, AgentLostEvent, Event, EventFactory, EventsDropped
from weightwarden.mqtt import TOPIC_ROOT, MqttSettings

__all__ = ["BATCH", "MemorySequencer", "MqttSettings", "MqttSink", "TOPIC_ROOT"]

BATCH = 200

class MemorySequencer:
    """Sequence numbers continue from what the spool last stored: the append
    that stores an event also stores its seq, in one transaction."""

    def __init__(self, last: int) -> None:
        self.last = last

    def next(self) -> int:
        self.last += 1
        return self.last


class MqttSink:
    def __init__(self, settings: MqttSettings, spool_max_bytes: int = 256 * 2**20) -> None:
        self.settings = settings
        self.spool_max_bytes = spool_max_bytes
        self.spool: Spool | None = None
        self.host = ""
        self.log = logs.get("agent.mqtt")
        self.connected = False
        self.published = 0
        self._wake = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self._factory: EventFactory | None = None
        self._appends = 0
        self._refused = 0  # PUBACKs with a failure reason code, ever
        self.replayed = 0  # acknowledged events sent again after reconnects, ever

    @classmethod
    def from_url(cls, url: str) -> MqttSink:
        return cls(MqttSettings.from_url(url))

    # -- set-up ----------------------------------------------------------

    def prepare(self, host: str, state_dir: Path) -> MemorySequencer:
        self.host = host
        self.spool = Spool(state_dir / "spool.db", self.spool_max_bytes, keep_acked_s=self.settings.replay)
        return MemorySequencer(max(self.spool.last_seq(), self.spool.recovery.last_seq if self.spool.recovery else 0))

    def attach(self, factory: EventFactory) -> None:
        """Used to make events_dropped summaries with proper sequence numbers."""
        self._factory = factory

    def recovered(self) -> EventsDropped | None:
        rec = self.spool.recovery if self.spool else None
        if rec is None:
            return None
        return EventsDropped(reason=rec.reason, moved_to=rec.moved_to, dropped=None, last_seq_before=rec.last_seq)

    def stats(self) -> SinkStats:
        return SinkStats(depth=self.depth(), replayed=self.replayed)

    def depth(self) -> int:
        return self.spool.depth() if self.spool else 0

    def topic(self, type_: str) -> str:
        return f"{TOPIC_ROOT}/{self.host}/{type_}"

    def _will(self) -> aiomqtt.Will:
        will = AgentLostEvent(id=uuid.uuid4().hex, host=self.host, seq=0, ts=time.time(), data=AgentLost(
            reason="connection lost without a goodbye (crash, kill, or network partition)",
            connected_at=time.time(), pid=os.getpid()))
        return aiomqtt.Will(self.topic("agent_lost"), json.dumps(will.to_json()), qos=1)

    def _client(self) -> aiomqtt.Client:
        s = self.settings
        client = aiomqtt.Client(
            s.host, s.port, username=s.username, password=s.password,
            identifier=s.client_id or f"weightwarden-agent-{self.host}",
            protocol=aiomqtt.ProtocolVersion.V5, will=self._will(), keepalive=s.keepalive,
            tls_context=s.ssl_context() if s.tls else None, max_inflight_messages=BATCH, timeout=10,
        )
        # A whole batch in flight is normal here, not the leak aiomqtt warns about past 10 calls.
        client.pending_calls_threshold = BATCH + 1
        return client

    # -- the Sink protocol -------------------------------------------------

    async def start(self) -> None:
        if self.spool is None:
            raise RuntimeError("MqttSink.prepare() must run before start()")
        self._task = asyncio.create_task(self._publisher(), name="mqtt-publisher")

    async def publish(self, event: Event) -> None:
        assert self.spool is not None
        self.spool.append(event)
        self._appends += 1
        if self._appends % 100 == 0 and self._factory is not None:
            factory = self._factory
            summary = self.spool.enforce_limit(lambda data: factory.make(EventsDropped.model_validate(data)))
            if summary is not None and isinstance(summary.data, EventsDropped):
                self.log.warning("spool_full", dropped=summary.data.dropped, by_type=summary.data.by_type)
        self._wake.set()

    async def close(self, drain_timeout: float = 5.0) -> None:
        self._closing = True
        self._wake.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(self._task, timeout=drain_timeout)
            except TimeoutError:
                self.log.warning("mqtt_drain_timeout", left_in_spool=self.depth())
        if self.spool is not None:
            self.spool.close()

    # -- publishing --------------------------------------------------------

    async def _publisher(self) -> None:
        assert self.spool is not None
        backoff = 0.5
        lost_once = False  # after a lost connection, resend what the broker may have lost with it
        while True:
            try:
                async with self._client() as client:
                    replayed = 0
                    if lost_once:
                        replayed = await asyncio.to_thread(self.spool.requeue_acked)
                        self.replayed += replayed
                    if not self.connected:
                        self.log.info("mqtt_connected", broker=f"{self.settings.host}:{self.settings.port}",
                                      spooled=self.depth(), replayed=replayed)
                    self.connected, backoff = True, 0.5
                    if await self._drain(client):
                        return
            except aiomqtt.MqttError as exc:
                lost_once = True
                if self.connected:
                    self.log.warning("mqtt_disconnected", error=str(exc), spooled=self.depth())
                self.connected = False
                if self._closing:
                    return
                await asyncio.sleep(backoff * (0.5 + random.random()))
                backoff = min(backoff * 2, 30.0)

    def _watch_acks(self, client: aiomqtt.Client) -> None:
        """Note PUBACKs that carry a failure reason code.

        aiomqtt completes a publish on any PUBACK, but an MQTT v5 broker may answer
        with a failure (a broker shutting down does): such an event was not taken,
        and must stay in the spool. Reached through ``client._client``, aiomqtt's
        handle on the paho client.
        """
        paho_client = client._client
        passed_on = paho_client.on_publish

        def on_publish(c: Any, userdata: Any, mid: int, reason: Any, props: Any) -> None:
            if getattr(reason, "is_failure", False):
                self._refused += 1
            if passed_on is not None:
                passed_on(c, userdata, mid, reason, props)  # type: ignore[call-arg]

        paho_client.on_publish = on_publish

    @staticmethod
    async def _unless_lost(client: aiomqtt.Client, fut: asyncio.Future[Any], timeout: float | None = None) -> bool:
        """Wait for fut (True once it is done, False at the timeout), raising as soon as the connection drops.

        aiomqtt leaves a publish waiting for its PUBACK until the publish timeout even after paho
        has seen the socket close, and an idle sink would not notice at all until its next
        publish. Its ``_disconnected`` future (what aiomqtt's own message iterator races
        against) resolves at once.
        """
        lost: asyncio.Future[None] = client._disconnected
        done, _ = await asyncio.wait({fut, lost}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        if fut in done:
            return True
        fut.cancel()
        await asyncio.gather(fut, return_exceptions=True)
        if lost in done:
            await lost  # raises the disconnection's MqttError (and so marks it retrieved)
            raise aiomqtt.MqttError("connection closed")
        return False

    async def _drain(self, client: aiomqtt.Client) -> bool:
        """Publish the spool until closing and empty (True), or until an error raises."""
        assert self.spool is not None
        self._watch_acks(client)
        while True:
            rows = await asyncio.to_thread(self.spool.pending, BATCH)
            if not rows:
                if self._closing:
                    return True
                self._wake.clear()
                await self._unless_lost(client, asyncio.ensure_future(self._wake.wait()), timeout=1.0)
                continue
            refused_before = self._refused
            batch = asyncio.gather(*(client.publish(self.topic(type_), payload, qos=1, timeout=10)
                                     for _seq, type_, payload in rows))
            await self._unless_lost(client, batch)
            await batch  # raises if a publish failed
            if self._refused != refused_before:
                # The broker refused some of this batch: keep all of it and send it again
                # (a duplicate carries the same id; a loss would be silent).
                self.log.warning("mqtt_publish_refused", refused=self._refused - refused_before, kept=len(rows))
                await asyncio.sleep(0.5)
                continue
            await asyncio.to_thread(self.spool.ack, [r[0] for r in rows])
            self.published += len(rows)
