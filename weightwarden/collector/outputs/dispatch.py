"""Deliver the outbox: one task per receiver, so a receiver that is down holds back only itself.

Runs inside ``weightwarden-collector run`` next to ingest. Database work goes
to a thread pool of its own and transports are bounded by timeouts, so a slow
receiver never takes threads or time from ingest. Receivers are re-read from
the database every few seconds: ``outputs add`` needs no restart.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Concatenate, ParamSpec, TypeVar

from sqlalchemy import Connection

from weightwarden import logs
from weightwarden.asyncutil import wait_for_stop
from weightwarden.collector.outputs import outbox
from weightwarden.collector.outputs.base import DeliveryError, OutputConfigError, Receiver
from weightwarden.collector.outputs.receivers import make_receiver
from weightwarden.collector.outputs.vault import SecretBox, SecretsError
from weightwarden.collector.store.database import Store

P = ParamSpec("P")
R = TypeVar("R")

POLL_S = 0.5
RELOAD_S = 5.0
SEND_TIMEOUT_S = 15.0


class Dispatcher:
    def __init__(self, store: Store, worker: str, poll_s: float = POLL_S, box: SecretBox | None = None) -> None:
        self.store = store
        self.box = box or SecretBox.for_db(store.url)
        self.reported: set[str] = set()  # unusable outputs already logged (by config digest): once each
        self.worker = worker
        self.poll_s = poll_s
        self.log = logs.get("collector.outputs")
        self.executor = ThreadPoolExecutor(max_workers=4, thread_name_prefix="ww-outputs")
        self.tasks: dict[str, tuple[str, asyncio.Task[None]]] = {}  # name -> (config digest, task)
        self.sent = 0
        self.failures = 0

    async def _db(self, fn: Callable[Concatenate[Connection, P], R], *args: P.args, **kwargs: P.kwargs) -> R:
        def work() -> R:
            with self.store.tx() as conn:
                return fn(conn, *args, **kwargs)
        return await asyncio.get_running_loop().run_in_executor(self.executor, work)

    async def run(self, stop: asyncio.Event) -> None:
        try:
            while not stop.is_set():
                try:
                    configured = await self._db(outbox.outputs)
                except Exception as exc:  # noqa: BLE001 - the database may be away; try again
                    self.log.warning("outputs_reload_failed", error=repr(exc))
                    configured = None
                if configured is not None:
                    self._reconcile(configured, stop)
                await wait_for_stop(stop, RELOAD_S)
        finally:
            for _digest, task in self.tasks.values():
                task.cancel()
            await asyncio.gather(*(t for _d, t in self.tasks.values()), return_exceptions=True)
            self.executor.shutdown(wait=False, cancel_futures=True)

    def _reconcile(self, configured: list[outbox.StoredOutput], stop: asyncio.Event) -> None:
        wanted = {o.name: o for o in configured if o.enabled}
        for name in list(self.tasks):
            digest, task = self.tasks[name]
            o = wanted.get(name)
            if o is None or repr(o.spec) != digest or task.done():
                task.cancel()
                del self.tasks[name]
        for name, o in wanted.items():
            if name in self.tasks:
                continue
            digest = repr(o.spec)
            try:
                if o.legacy:
                    raise OutputConfigError(f"output {name!r} was stored by an older collector (secrets in clear or "
                                            "files named): run `weightwarden-collector outputs migrate` "
                                            "(docs/outputs.md)")
                receiver = make_receiver(o.spec, self.box, self.executor)
            except (OutputConfigError, SecretsError, OSError, ValueError) as exc:
                if digest not in self.reported:
                    self.reported.add(digest)
                    self.log.error("output_unusable", output=name, error=str(exc))
                continue
            self.tasks[name] = (digest, asyncio.create_task(self._deliver(receiver, stop), name=f"output-{name}"))

    async def _deliver(self, receiver: Receiver, stop: asyncio.Event) -> None:
        backoff = 1.0
        try:
            while not stop.is_set():
                try:
                    notes = await self._db(outbox.claim, receiver.name, self.worker, time.time())
                except Exception as exc:  # noqa: BLE001
                    self.log.warning("outbox_claim_failed", output=receiver.name, error=repr(exc))
                    await wait_for_stop(stop, 2.0)
                    continue
                if not notes:
                    await wait_for_stop(stop, self.poll_s)
                    continue
                for i, note in enumerate(notes):
                    # Each send is bounded by SEND_TIMEOUT_S; renewing the lease first keeps a batch
                    # of slow sends from outliving it (another dispatcher would then send again).
                    if not await self._db(_renew, receiver.name, note["seq"], self.worker, time.time()):
                        continue
                    try:
                        await asyncio.wait_for(receiver.send(note), SEND_TIMEOUT_S)
                    except (DeliveryError, TimeoutError) as exc:
                        self.failures += 1
                        state = await self._db(outbox.failed, receiver.name, note["seq"], self.worker,
                                               str(exc) or "timed out", note["attempts"], time.time())
                        (self.log.error if state == "failed" else self.log.warning)(
                            "output_delivery_failed", output=receiver.name, notification=note["id"],
                            attempts=note["attempts"] + 1, gave_up=state == "failed", error=str(exc))
                        # The receiver is likely down: hand back the rest of the batch untouched
                        # and wait before trying again.
                        await self._db(_release, receiver.name, [n["seq"] for n in notes[i + 1:]], self.worker)
                        await wait_for_stop(stop, backoff)
                        backoff = min(backoff * 2, 60.0)
                        break
                    await self._db(outbox.delivered, receiver.name, note["seq"], self.worker, time.time())
                    self.sent += 1
                    backoff = 1.0
        finally:
            await receiver.close()


def _release(conn: Connection, output: str, seqs: list[int], worker: str) -> None:
    from sqlalchemy import text

    for seq in seqs:
        conn.execute(text("UPDATE alert_deliveries SET claimed_until = NULL WHERE notification_seq = :s "
                          "AND output = :o AND claimed_by = :w AND state = 'pending'"),
                     {"s": seq, "o": output, "w": worker})


def _renew(conn: Connection, output: str, seq: int, worker: str, now: float) -> bool:
    from sqlalchemy import text

    res = conn.execute(text("UPDATE alert_deliveries SET claimed_until = :u WHERE notification_seq = :s "
                            "AND output = :o AND claimed_by = :w AND state = 'pending'"),
                       {"u": now + outbox.LEASE_S, "s": seq, "o": output, "w": worker})
    return bool(res.rowcount)
