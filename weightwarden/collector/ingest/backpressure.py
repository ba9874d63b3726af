"""Flow control between the broker and the database: memory stays bounded whatever arrives.

Three bounds hold together:

- the broker sends no packet larger than ``MAX_PACKET`` (MQTT v5 Maximum Packet Size on CONNECT;
  the broker's own ``max_packet_size`` refuses them from publishers), and no more than
  ``receive_maximum`` unacknowledged QoS 1 messages (MQTT v5 Receive Maximum): we acknowledge only
  after the commit, so that is all we can hold;
- the :class:`Inbox` counts messages and bytes from their arrival until their batch is stored;
- past its bounds the :class:`ReadGate` stops reading the broker's socket (QoS 0 floods included:
  TCP holds them, then the broker), and reads again when the inbox has room.

A batch is taken by bytes as well as by count, so parsing one (a payload can take 20 times its
size once parsed) stays within ``batch_max_bytes * 20``.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from weightwarden.collector.ingest.validate import MAX_PAYLOAD

# What a PUBLISH adds to its payload: fixed header, topic (<= ~100 bytes here), packet id, properties.
MAX_PACKET = MAX_PAYLOAD + 4096


@dataclass
class Held:
    topic: str
    payload: bytes
    ack: Callable[[], object] | None  # sends the PUBACK, on the connection the message came by
    at: float = field(default_factory=time.monotonic)


class Inbox:
    """Messages received and not yet stored, bounded in count and bytes. Owner: the service; paho's
    message callback puts (in the event loop), the ingest task takes batches and releases each once
    it is stored, which calls ``on_room`` (the gate's resume) when a full inbox has room again.

    Two lanes: messages that may decide an incident (weight reads, an upload from a host whose
    weights were just read, the agent's own alarms: ``Pipeline.urgent``) are taken before the bulk
    of samples, so an alert waits for at most the batch in hand, never for the whole backlog. Each
    lane keeps its order."""

    def __init__(self, max_messages: int, max_bytes: int) -> None:
        self.max_messages, self.max_bytes = max_messages, max_bytes
        self._urgent: deque[Held] = deque()
        self._queue: deque[Held] = deque()
        self._in_hand: deque[Held] = deque()
        self.held = 0  # queued and in hand
        self.held_bytes = 0
        self._ready = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self.on_room: Callable[[], None] | None = None  # called when a full inbox has room again

    def __len__(self) -> int:
        return len(self._queue) + len(self._urgent)

    @property
    def full(self) -> bool:
        return self.held >= self.max_messages or self.held_bytes >= self.max_bytes

    def put(self, item: Held, urgent: bool = False) -> None:
        (self._urgent if urgent else self._queue).append(item)
        self.held += 1
        self.held_bytes += len(item.payload)
        self._ready.set()
        if self.full:
            self._room.clear()

    async def wait_room(self) -> None:
        await self._room.wait()

    async def take(self, max_messages: int, max_bytes: int, timeout: float) -> list[Held]:
        """Everything queued, up to the limits (at least one message): batches grow with the backlog.
        The urgent lane's messages first, alone."""
        if not self._queue and not self._urgent:
            self._ready.clear()
            try:
                await asyncio.wait_for(self._ready.wait(), timeout)
            except TimeoutError:
                return []
        # The urgent lane's messages first, then the bulk's to fill the batch: they jump the queue, but
        # batches stay as large as the backlog makes them (a transaction per urgent message would cost
        # more than it saves), and the bulk is never starved.
        batch: list[Held] = []
        size = 0
        for lane in (self._urgent, self._queue):
            while lane and len(batch) < max_messages:
                nxt = len(lane[0].payload)
                if batch and size + nxt > max_bytes:
                    break
                batch.append(lane.popleft())
                size += nxt
        self._in_hand.extend(batch)
        return batch

    def release(self, batch: list[Held]) -> None:
        """The batch is stored (or given up): its memory is free, and reading may resume."""
        for item in batch:
            self.held -= 1
            self.held_bytes -= len(item.payload)
        done = {id(i) for i in batch}
        self._in_hand = deque(i for i in self._in_hand if id(i) not in done)
        # Some hysteresis, so reading does not stop and start at every batch.
        if self.held < self.max_messages * 3 // 4 and self.held_bytes < self.max_bytes * 3 // 4:
            self._room.set()
            if self.on_room is not None:
                self.on_room()

    def oldest_age(self) -> float:
        """Seconds the oldest message held has waited: how far behind the collector is."""
        oldest = [q[0].at for q in (self._in_hand, self._queue, self._urgent) if q]
        return time.monotonic() - min(oldest) if oldest else 0.0


class ReadGate:
    """Stops and restarts reading one aiomqtt client's socket.

    aiomqtt reads whenever the socket is readable; this takes its reader off the event loop while
    the inbox is full, and puts an equivalent one back (aiomqtt's own callback is not reachable: the
    same two steps, paho's loop_read until the TLS buffer is empty, and a broken connection reported
    to the client)."""

    def __init__(self, client: Any, loop: asyncio.AbstractEventLoop) -> None:
        self.client = client
        self.paho = client._client
        self.loop = loop
        self._sock: Any = None
        self.pauses = 0

    @property
    def paused(self) -> bool:
        return self._sock is not None

    def pause(self) -> None:
        sock = self.paho.socket()
        if sock is None or self._sock is not None:
            return
        self.loop.remove_reader(sock.fileno())
        self._sock = sock
        self.pauses += 1

    def resume(self) -> None:
        sock, self._sock = self._sock, None
        if sock is None or self.paho.socket() is not sock:
            return  # the connection changed meanwhile: the new one has its own reader
        self.loop.add_reader(sock.fileno(), self._read)

    def _read(self) -> None:
        try:
            while True:
                self.paho.loop_read()
                sock = self.paho.socket()
                if sock is not None and hasattr(sock, "pending") and sock.pending() > 0:
                    continue
                break
        except Exception as exc:  # noqa: BLE001 - a broken connection: aiomqtt's own handling
            disconnected = self.client._disconnected
            if not disconnected.done():
                disconnected.set_exception(exc)


@dataclass
class BatchSizer:
    """How many messages the next batch may take: as many as the database stores in ``target_s`` at
    the cost per message of recent batches. An incident's messages jump the queue but wait for the
    batch in hand, so that batch's length bounds their wait; on PostgreSQL a 5,000-message batch
    takes seconds. Pure: the service reports each stored batch (``observe``)."""

    target_s: float = 0.5
    floor: int = 200  # batches never smaller: a transaction per few messages would cost more than it saves
    ceiling: int = 5_000
    per_message_s: float | None = None  # moving average; None until a batch was stored

    def limit(self) -> int:
        if self.per_message_s is None or self.per_message_s <= 0:
            return self.ceiling
        return max(self.floor, min(self.ceiling, int(self.target_s / self.per_message_s)))

    def observe(self, messages: int, seconds: float) -> None:
        if messages <= 0 or seconds < 0:
            return
        cost = seconds / messages
        # Batches of a few messages cost mostly their commit: they weigh less in the average.
        weight = 0.3 * min(1.0, messages / self.floor)
        self.per_message_s = cost if self.per_message_s is None else \
            (1 - weight) * self.per_message_s + weight * cost
