"""Alert outputs with real receivers: each gets each state change exactly once; one that hangs delays nobody.

The dispatcher runs as it does inside ``weightwarden-collector run`` (two at once,
then a fresh one after a restart), against one SQLite database, while the
pipeline raises, escalates, resolves and reopens an alert.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import aiomqtt

from tests.collector.scenarios import MB, Stream
from tests.helpers.broker import Broker
from tests.helpers.console import make_cert
from tests.helpers.receivers import Hanging, SyslogListener, WebhookListener, parse_5424
from weightwarden.collector.ingest.pipeline import Pipeline
from weightwarden.collector.outputs import outbox
from weightwarden.collector.outputs.dispatch import Dispatcher
from weightwarden.collector.outputs.receivers import configure
from weightwarden.collector.outputs.vault import SecretBox
from weightwarden.collector.store.database import Store
from weightwarden.collector.web import triage

HOST = "gpu-out"
SECRET = "webhook-secret-for-tests"


def stages(now: float) -> list[Stream]:
    """Opened high, escalated to critical, (resolved by hand), reopened by a new upload."""
    s = Stream(host=HOST)
    s.started(now - 900)
    s.send(now - 800, 4242, 1000, address="198.18.7.7", port=443)  # a known destination: no first-contact bump
    s.read(now - 700, 4242, 200 * MB)
    s.send(now - 600, 4242, 30 * MB, address="198.18.7.7", port=443)
    first = list(s.events)
    s.send(now - 500, 4242, 80 * MB, address="198.18.7.7", port=443)
    second = s.events[len(first):]
    s.send(now - 100, 4242, 5 * MB, address="198.18.7.7", port=443)
    third = s.events[len(first) + len(second):]
    out = []
    for chunk in (first, second, third):
        part = Stream(host=HOST)
        part.events = list(chunk)
        out.append(part)
    return out


async def until(predicate: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.05)
    return bool(predicate())


def test_each_receiver_gets_each_state_change_once(tmp_path: Path, broker: Broker) -> None:
    asyncio.run(_scenario(tmp_path, broker))


async def _scenario(tmp_path: Path, broker: Broker) -> None:
    cert, key = make_cert(tmp_path)
    udp, tcp, tls = SyslogListener("udp"), SyslogListener("tcp"), SyslogListener("tcp", (cert, key))
    hook, hanging = WebhookListener(SECRET), Hanging()
    db = f"sqlite:///{tmp_path}/collector.db"
    store = Store(db)
    box = SecretBox.for_db(db)
    local = {"allow_local": True}  # the receivers listen on loopback: as `outputs add --allow-local` allows
    with store.tx() as conn:
        now = time.time()
        for name, url, options in (
                ("udp", f"syslog+udp://127.0.0.1:{udp.port}", local),
                ("tcp", f"syslog+tcp://127.0.0.1:{tcp.port}", local),
                ("tls", f"syslog+tls://127.0.0.1:{tls.port}", {**local, "format": "cef", "ca_pem": cert.read_text()}),
                ("hook", f"http://127.0.0.1:{hook.port}/alerts", {**local, "secret": SECRET}),
                ("hangs", f"http://127.0.0.1:{hanging.port}/alerts", local),
                ("mqtt", broker.url, local)):
            outbox.add_output(conn, configure(name, url, options, box, local_ok=True), now)
    mqtt_seen: list[tuple[str, dict[str, Any]]] = []

    async def subscribe(ready: asyncio.Event) -> None:
        async with aiomqtt.Client("127.0.0.1", broker.port, identifier="ww-test-alerts") as client:
            await client.subscribe("weightwarden/v1/alerts/#", qos=1)
            ready.set()
            async for message in client.messages:
                assert isinstance(message.payload, bytes)
                mqtt_seen.append((str(message.topic), json.loads(message.payload)))

    pipeline = Pipeline(store)
    first, second, third = stages(time.time())
    good: dict[str, list[Any]] = {"udp": udp.messages, "tcp": tcp.messages, "tls": tls.messages,
                                  "hook": hook.received, "mqtt": mqtt_seen}
    ready = asyncio.Event()
    sub = asyncio.create_task(subscribe(ready))
    await asyncio.wait_for(ready.wait(), 10)
    try:
        # Phase 1: two collectors' dispatchers share the outbox while the alert opens and escalates.
        stop = asyncio.Event()
        a, b = Dispatcher(store, "collector-a", poll_s=0.05), Dispatcher(store, "collector-b", poll_s=0.05)
        runs = [asyncio.create_task(a.run(stop)), asyncio.create_task(b.run(stop))]
        t0 = time.monotonic()
        await asyncio.to_thread(pipeline.ingest, first.messages())
        await asyncio.to_thread(pipeline.ingest, second.messages())
        assert await until(lambda: all(len(v) >= 2 for v in good.values()), 8), {k: len(v) for k, v in good.items()}
        took = time.monotonic() - t0
        # The hanging receiver holds its first notification (10 s timeout) and nobody else.
        assert took < 5, f"good receivers waited {took:.1f}s"
        stop.set()
        await asyncio.gather(*runs)

        # Phase 2: resolved by an analyst and reopened by a new upload while no collector dispatches;
        # a fresh dispatcher (a restarted collector) sends what is owed, and nothing twice.
        with store.tx() as conn:
            alert = store.alerts(host=HOST)[0]
            triage.act(conn, alert["id"], "resolve", "analyst", time.time(), comment="lab box", via="test")
        await asyncio.to_thread(pipeline.ingest, third.messages())
        stop = asyncio.Event()
        run = asyncio.create_task(Dispatcher(store, "collector-a2", poll_s=0.05).run(stop))
        assert await until(lambda: all(len(v) >= 4 for v in good.values()), 8), {k: len(v) for k, v in good.items()}
        await asyncio.sleep(0.5)  # anything extra would arrive now
        stop.set()
        await run
    finally:
        sub.cancel()
        for r in (udp, tcp, tls, hook, hanging):
            r.close()

    expected = ["open", "escalate", "resolve", "open"]
    syslog = {name: [parse_5424(m) for m in good[name]] for name in ("udp", "tcp", "tls")}
    for name, parsed in syslog.items():
        assert [p["msgid"] for p in parsed] == expected, name
        assert parsed[1]["pri"] == 16 * 8 + 2  # local0.crit for the escalation to critical
        assert 'attack="T1567"' in parsed[0]["sd"] and parsed[0]["app"] == "weightwarden-collector"
    assert json.loads(syslog["udp"][0]["body"])["alert"]["host"] == HOST
    assert syslog["tls"][1]["body"].startswith("CEF:0|weightwarden|collector|")
    assert "dst=198.18.7.7 dpt=443" in syslog["tls"][1]["body"] and "|10|" in syslog["tls"][1]["body"]
    assert [h["event"] for h in hook.received] == expected and all(h["signed"] for h in hook.received)
    assert len({h["delivery"] for h in hook.received}) == 4
    assert [d["doc"]["alert"]["severity"] for d in hook.received][:2] == ["high", "critical"]
    assert hook.received[0]["doc"]["attack"][0]["technique"] == "T1567"
    assert [t for t, _d in mqtt_seen] == [f"weightwarden/v1/alerts/{HOST}"] * 4
    assert [d["transition"] for _t, d in mqtt_seen] == expected
    with store.tx() as conn:
        counts = {(c["output"], c["state"]): c["count"] for c in outbox.delivery_counts(conn)}
    assert counts[("hook", "delivered")] == 4 and counts[("hangs", "pending")] == 4, counts
