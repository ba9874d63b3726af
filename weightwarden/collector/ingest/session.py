"""The collector's broker session: its client id, and telling a takeover from a reconnect.

The session's client id is not guessable: ``weightwarden-collector-<hostname>-``
and 16 random hex digits, made on the first run and kept in the database, so it
survives restarts (``--client-id`` chooses one instead). Another client that
connects with it takes the session over, and with it the messages queued for
this collector: that is a security event, not a reconnect. The collector raises
a ``collector_session_taken_over`` alert (and logs it) when the broker says so
(MQTT v5 reason 0x8E), or when the broker closed the connection while it kept
running (its ``$SYS/broker/uptime`` went on: Mosquitto 2.0 closes a taken-over
session without a reason). The shipped broker configurations bind client ids
to credentials, so only the collector's own credentials can do it
(docs/events.md).
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import socket
import time
from dataclasses import dataclass
from typing import Any

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from sqlalchemy import text
from structlog.typing import FilteringBoundLogger

from weightwarden.collector.ingest.backpressure import MAX_PACKET
from weightwarden.collector.ingest.pipeline import Pipeline
from weightwarden.collector.store.database import Store
from weightwarden.mqtt import MqttSettings

UPTIME_TOPIC = "$SYS/broker/uptime"  # Mosquitto's, every sys_interval (10 s): did the broker restart?
SESSION_EXPIRY_S = 300
TAKEN_OVER = 0x8E  # MQTT v5 DISCONNECT reason: "Session taken over"


@dataclass
class Closed:
    """A connection the broker ended itself: when, the broker's uptime then, how often it publishes it."""

    at: float
    uptime: tuple[float, float]
    interval: float | None
    unreachable: bool = False  # a reconnect failed since: the broker (or the network) was down


def reason(exc: BaseException) -> int | None:
    """The MQTT v5 reason code of a disconnection, when the broker gave one."""
    rc = getattr(exc, "rc", None)
    try:
        return int(getattr(rc, "value", rc)) if rc is not None else None
    except (TypeError, ValueError):
        return None


def client_id(store: Store, hostname: str) -> str:
    """This host's collector session id: made once (random, not guessable), then kept in the database."""
    key = f"collector_client_id:{hostname}"
    with store.tx() as conn:
        found = conn.execute(text("SELECT value FROM meta WHERE key = :k"), {"k": key}).scalar()
        if found:
            return str(found)
        made = f"weightwarden-collector-{hostname[:40]}-{secrets.token_hex(8)}"
        conn.execute(text("INSERT INTO meta(key, value) VALUES (:k, :v) ON CONFLICT (key) DO NOTHING"),
                     {"k": key, "v": made})
        return str(conn.execute(text("SELECT value FROM meta WHERE key = :k"), {"k": key}).scalar())


def session_client(s: MqttSettings, ident: str, receive_max: int) -> aiomqtt.Client:
    """A client for the collector's persistent session (clean_start off, a stable id)."""
    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    # A persistent session: if the connection drops, the broker keeps queueing QoS 1 messages
    # for us and hands them over when we are back.
    props.SessionExpiryInterval = SESSION_EXPIRY_S
    # The broker sends nothing bigger than we accept (bigger cannot be stored anyway), and no more
    # unacknowledged messages than the inbox holds.
    props.MaximumPacketSize = MAX_PACKET
    props.ReceiveMaximum = min(65535, receive_max)
    return aiomqtt.Client(
        s.host, s.port, username=s.username, password=s.password, identifier=ident,
        protocol=aiomqtt.ProtocolVersion.V5, keepalive=s.keepalive, clean_start=False,
        properties=props, tls_context=s.ssl_context() if s.tls else None, timeout=10,
    )


class TakeoverWatch:
    """Mixed into the service: notes how each connection ended, and raises the alert when the session
    was taken over. The service sets these attributes."""

    broker: MqttSettings
    name: str
    ident: str
    log: FilteringBoundLogger
    pipeline: Pipeline
    takeovers: int
    closed_by_broker: bool
    uptime: tuple[float, float] | None
    uptime_seen: asyncio.Event

    def _watch_end_of_stream(self, paho_client: Any) -> None:
        """Note when the broker closes the connection itself (a read returns end of stream), as opposed
        to a timeout or a reset: paho reports all of them alike."""
        self.closed_by_broker = False
        recv = paho_client._sock_recv

        def watched(size: int) -> bytes:
            data: bytes = recv(size)
            if not data:
                self.closed_by_broker = True
            return data
        paho_client._sock_recv = watched

    async def _judge_silent_close(self, closed: Closed) -> None:
        """The broker ended our connection without a reason and took us back at the first attempt. If it
        kept running meanwhile (its uptime went on), it closed us on purpose, and what Mosquitto closes
        that way is a session another client took over."""
        try:
            await asyncio.wait_for(self.uptime_seen.wait(), 5.0)
        except TimeoutError:
            self.log.warning("collector_disconnected_by_broker", reason=f"the broker's {UPTIME_TOPIC} is not "
                             "readable: a takeover cannot be told from a restart (allow this collector to read it)")
            return
        assert self.uptime is not None
        up_before, seen_before = closed.uptime
        up_now, seen_now = self.uptime
        # The uptime we read is the broker's last publication: up to one interval old. A restart sets it
        # back to 0, which no interval of staleness hides once the broker was up for longer than that.
        slack = (closed.interval or 10.0) + 1.0
        if up_before < slack + 2:
            self.log.warning("collector_disconnected_by_broker", reason="the broker had just started: a takeover "
                             "cannot be told from a restart")
            return
        if up_now >= up_before + (seen_now - seen_before) - slack:
            await self._taken_over(f"the broker closed the connection and took it back at once while it kept "
                                   f"running (up {up_before:.0f} s before, {up_now:.0f} s "
                                   f"{seen_now - closed.at:.1f} s later): Mosquitto does that to a session another "
                                   "client takes over")

    async def _taken_over(self, how: str) -> None:
        self.takeovers += 1
        s = self.broker
        self.log.error("collector_session_taken_over", collector=self.name, broker=f"{s.host}:{s.port}", how=how,
                       times=self.takeovers)
        try:
            await asyncio.to_thread(self._raise_takeover_alert, how)
        except Exception as exc:  # noqa: BLE001 - the log line above stands; the database may be away
            self.log.error("collector_alert_failed", error=repr(exc)[:300])

    def _raise_takeover_alert(self, how: str) -> None:
        s = self.broker
        host = f"collector@{socket.gethostname()}"
        digest = hashlib.sha256(self.ident.encode()).hexdigest()[:8]
        now = time.time()
        with self.pipeline.store.tx() as conn:
            self.pipeline.store.collector_alert(
                conn, f"collector_session_taken_over:{self.name}", host, "collector_session_taken_over", "high",
                f"Collector {self.name}'s broker session was taken over",
                f"Another client connected to the broker at {s.host}:{s.port} with this collector's client id "
                f"(the one ending in a hash {digest}) and took its session over: {how}. The messages the broker "
                "held for this collector may have gone to that client or been dropped: expect sequence gaps from "
                "the agents, and look in the broker's log for the address that connected with this id. Only "
                "this collector's broker credentials can do this where the broker binds client ids to them "
                "(docs/events.md); elsewhere, anyone who learns the id can.",
                {"collector": self.name, "broker": f"{s.host}:{s.port}", "how": how, "times": self.takeovers},
                now)

