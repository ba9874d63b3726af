"""Every registered receiver kind passes the same checks (outputs/receivers.py: the registry).

Per kind, a harness gives a real receiver on loopback (a syslog listener, a webhook server, Mosquitto)
and how to read what it got. Each kind must: refuse options that name files on the collector host;
refuse loopback, link-local and metadata destinations unless the CLI allowed them (never over the
API); check the address again when it connects (a stored name that now resolves to this host is
refused, nothing is sent); deliver an alert notification and an audit entry; keep its secrets sealed
and out of what it shows and what its errors say; close twice. A kind added without a harness fails
here.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.broker import Broker, free_port
from tests.helpers.console import make_cert
from tests.helpers.netns import wait_for
from tests.helpers.receivers import SyslogListener, WebhookListener, parse_5424
from tests.helpers.subscriber import Subscriber
from weightwarden.collector.outputs.base import FILE_OPTIONS, DeliveryError, OutputConfigError, OutputSpec
from weightwarden.collector.outputs.message import Notification
from weightwarden.collector.outputs.receivers import KINDS, configure, make_receiver
from weightwarden.collector.outputs.vault import SecretBox

SECRET = "conformance-secret-3f9a"


@dataclass
class Harness:
    url: str  # on loopback
    options: dict[str, Any]  # including a secret
    secret: str  # text of that secret that must show nowhere
    received: Callable[[], list[dict[str, Any]]]  # documents received so far (JSON bodies)
    close: Callable[[], None]


def _syslog(tmp: Path) -> Harness:
    """Over TLS with a client certificate: its private key is the secret."""
    server = make_cert(tmp)
    client_dir = tmp / "client"
    client_dir.mkdir()
    cert, key = make_cert(client_dir)
    listener = SyslogListener("tcp", server)
    key_pem = key.read_text()
    return Harness(f"syslog+tls://127.0.0.1:{listener.port}",
                   {"format": "json", "ca_pem": server[0].read_text(), "cert_pem": cert.read_text(), "key_pem": key_pem},
                   key_pem.splitlines()[1], lambda: [json.loads(parse_5424(m)["body"]) for m in listener.messages],
                   listener.close)


def _webhook(_tmp: Path) -> Harness:
    listener = WebhookListener(SECRET)

    def received() -> list[dict[str, Any]]:
        assert all(r["signed"] for r in listener.received), "a delivery was not signed with the output's secret"
        return [r["doc"] for r in listener.received]
    return Harness(f"http://127.0.0.1:{listener.port}/hook?token={SECRET}", {"secret": SECRET}, SECRET, received,
                   listener.close)


def _mqtt(tmp: Path) -> Harness:
    broker = Broker(tmp / "broker").start()
    sub = Subscriber("127.0.0.1", broker.port, "weightwarden/v1/alerts/#", client_id="conformance-sub")

    def close() -> None:
        sub.close()
        broker.stop()
    return Harness(f"mqtt://alerts:{SECRET}@127.0.0.1:{broker.port}", {}, SECRET, sub.events, close)


HARNESSES: dict[str, Callable[[Path], Harness]] = {"syslog": _syslog, "webhook": _webhook, "mqtt": _mqtt}


def note(kind: str = "exfiltration") -> Notification:
    return {"seq": 1, "id": "n-conf-1", "attempts": 0, "transition": "open", "alert": {
        "id": "a1", "key": "k1", "host": "gpu-conf", "kind": kind, "severity": "high", "state": "open",
        "title": "t", "explanation": "e", "first_ts": 1.0, "last_ts": 2.0, "count": 1, "assignee": None,
        "evidence": {"destinations": [{"address": "198.18.0.9", "port": 443}], "process": {"pid": 1}}}}


def audit_note() -> Notification:
    return {"seq": 2, "id": "audit-n-conf-2", "attempts": 0, "transition": "audit", "audit": {
        "id": 7, "ts": 3.0, "user": "alice", "action": "output_add", "target": "siem", "source": "198.18.0.1",
        "via": "api:token", "outcome": "ok", "detail": None, "comment": None, "alert_key": None, "alert_id": None}}


def test_every_kind_has_a_harness() -> None:
    assert set(KINDS) == set(HARNESSES), "a receiver kind needs a harness here (and passes the checks below)"


@pytest.fixture(params=sorted(KINDS))
def kind(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, Harness, SecretBox]]:
    harness = HARNESSES[request.param](tmp_path)
    try:
        yield request.param, harness, SecretBox(tmp_path / "outputs.key")
    finally:
        harness.close()


def test_conformance(kind: tuple[str, Harness, SecretBox], tmp_path: Path) -> None:
    name, h, box = kind
    scheme = h.url.split("://", 1)[0]

    # No option names a file on the collector host: not as an option, not in the URL.
    for key in FILE_OPTIONS:
        with pytest.raises(OutputConfigError, match=f"{key}= names a file"):
            configure("o", h.url, {**h.options, key: "/etc/shadow", "allow_local": True}, box, local_ok=True)
        joined = "&" if "?" in h.url else "?"
        with pytest.raises(OutputConfigError, match=f"{key}= names a file"):
            configure("o", f"{h.url}{joined}{key}=/etc/shadow", {**h.options, "allow_local": True}, box, local_ok=True)

    # Nothing on this host, link-local or metadata without the CLI's --allow-local; never over the API.
    with pytest.raises(OutputConfigError, match="loopback"):
        configure("o", h.url, h.options, box)
    with pytest.raises(OutputConfigError, match="only be set by"):
        configure("o", h.url, {**h.options, "allow_local": True}, box, local_ok=False)
    for host, why in (("169.254.169.254", "metadata"), ("[fe80::1]", "link-local"), ("[::ffff:127.0.0.1]", "loopback"),
                      ("0.0.0.0", "unspecified"), ("localhost", "loopback")):
        with pytest.raises(OutputConfigError, match=why):
            configure("o", f"{scheme}://{host}:{free_port()}/x", {}, box)

    # Stored, its secrets are sealed and shown by name only.
    spec = configure(name, h.url, {**h.options, "allow_local": True}, box, local_ok=True, audit=True)
    stored = json.dumps({"url": spec.url, "options": dict(spec.options), "secrets": dict(spec.secrets)})
    shown = json.dumps(spec.shown())
    assert h.secret not in stored and h.secret not in shown, (stored, shown)
    assert spec.secrets, f"{name}: the secret given was not kept as a secret"

    async def deliver() -> None:
        with ThreadPoolExecutor(2) as pool:
            receiver = make_receiver(spec, box, pool)
            try:
                await receiver.send(note())
                await receiver.send(audit_note())
            finally:
                await receiver.close()
                await receiver.close()

            # A stored name that resolves to this host now (rebinding, or a config from before) is
            # refused when the receiver connects: nothing is sent, and the error names no secret.
            port = int(h.url.rsplit(":", 1)[1].split("/", 1)[0])
            moved = OutputSpec(name, spec.url.replace("127.0.0.1", "localhost"), {
                k: v for k, v in spec.options.items() if k != "allow_local"}, spec.secrets, spec.audit)
            assert str(port) in moved.url
            receiver = make_receiver(moved, box, pool)
            try:
                with pytest.raises(DeliveryError, match="refused") as refused:
                    await receiver.send(note())
                assert h.secret not in str(refused.value)
            finally:
                await receiver.close()
    asyncio.run(deliver())
    assert wait_for(lambda: len(h.received()) >= 2, 10), h.received()
    time.sleep(0.3)  # anything more would arrive now
    docs = h.received()
    assert [d["schema"] for d in docs] == ["weightwarden/v1/alert-notification", "weightwarden/v1/audit-event"], docs
    assert docs[0]["alert"]["id"] == "a1" and docs[1]["audit"]["action"] == "output_add"

    # An error about an unreachable receiver names no secret.
    closed = configure(name, h.url.replace(f":{port_of(h.url)}", f":{free_port()}"),
                       {**h.options, "allow_local": True}, box, local_ok=True)

    async def fail() -> str:
        with ThreadPoolExecutor(1) as pool:
            receiver = make_receiver(closed, box, pool)
            try:
                await receiver.send(note())
            except DeliveryError as exc:
                return str(exc)
            finally:
                await receiver.close()
        return ""
    error = asyncio.run(fail())
    assert error and h.secret not in error, error


def port_of(url: str) -> int:
    return int(url.split("://", 1)[1].split("/", 1)[0].split("?", 1)[0].rsplit(":", 1)[1])

