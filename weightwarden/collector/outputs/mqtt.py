"""MQTT receivers: each notification published with QoS 1 on ``weightwarden/v1/alerts/<host>``.

``mqtt[s]://[USER[:PASSWORD]@]HOST[:PORT][?keepalive=S]``. The output's account
is its own: the password comes from the URL (stored sealed), never from the
collector's credentials or a file; its client id is its own (random), never
one the URL chooses (a chosen id could knock an agent, or the collector, off
the broker). Audit entries go to ``weightwarden/v1/alerts/_audit`` (no host id
starts with ``_``). TLS takes ``ca_pem`` and a client certificate.
"""

from __future__ import annotations

import contextlib
import json
import secrets as random
from collections.abc import Mapping
from concurrent.futures import Executor
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit, urlunsplit

from weightwarden.collector.outputs import tls as tlsctx
from weightwarden.collector.outputs.base import DeliveryError, Kind, OutputConfigError, OutputSpec, Receiver
from weightwarden.collector.outputs.destination import DestinationRefused, connect_pinned, resolve_async
from weightwarden.collector.outputs.message import Notification, document, is_audit
from weightwarden.jsontypes import JsonObject
from weightwarden.mqtt import redact

ALERT_TOPIC = "weightwarden/v1/alerts"
AUDIT_TOPIC = f"{ALERT_TOPIC}/_audit"
TIMEOUT_S = 10.0


class MqttReceiver(Receiver):
    def __init__(self, spec: OutputSpec, secrets: Mapping[str, str], _executor: Executor) -> None:
        parts = urlsplit(spec.url)
        self.name = spec.name
        self.host, self.tls = parts.hostname or "", parts.scheme == "mqtts"
        self.port = parts.port or (8883 if self.tls else 1883)
        self.username = unquote(parts.username) if parts.username else None
        self.password = secrets.get("password")
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        self.keepalive = int(query.get("keepalive", 30))
        self.allow_local = spec.allow_local
        self.context = tlsctx.context(spec.options, secrets) if self.tls else None
        self.ident = f"weightwarden-output-{random.token_hex(8)}"
        self.client: Any = None

    async def _connect(self) -> Any:
        import aiomqtt

        target = await resolve_async(self.host, self.port, self.allow_local)
        client = aiomqtt.Client(self.host, self.port, username=self.username, password=self.password,
                                identifier=self.ident, protocol=aiomqtt.ProtocolVersion.V5, keepalive=self.keepalive,
                                tls_context=self.context, timeout=TIMEOUT_S)
        # paho connects by name; this connects to the address just checked instead (TLS still checks the name).
        client._client._create_socket_connection = lambda: connect_pinned(target, TIMEOUT_S)  # type: ignore[method-assign]
        await client.__aenter__()
        return client

    async def send(self, note: Notification) -> None:
        import aiomqtt

        body = json.dumps(document(note), default=str, separators=(",", ":"))
        topic = AUDIT_TOPIC if is_audit(note) else f"{ALERT_TOPIC}/{note['alert']['host']}"
        try:
            if self.client is None:
                self.client = await self._connect()
            await self.client.publish(topic, body, qos=1, timeout=TIMEOUT_S)
        except DestinationRefused as exc:
            await self.close()
            raise DeliveryError(f"mqtt {self.host}:{self.port}: refused: {exc}") from None
        except (aiomqtt.MqttError, OSError, TimeoutError) as exc:
            await self.close()
            text = repr(exc).replace(self.password, "***") if self.password else repr(exc)
            raise DeliveryError(f"mqtt {self.host}:{self.port}: {redact(text)}") from None

    async def close(self) -> None:
        if self.client is not None:
            client, self.client = self.client, None
            with contextlib.suppress(Exception):  # a broken connection is dropped either way
                await client.__aexit__(None, None, None)


def check(url: str, options: JsonObject) -> tuple[str, JsonObject]:
    try:
        parts = urlsplit(url)
        _ = parts.port
    except ValueError:
        raise OutputConfigError(f"{redact(url)!r}: bad URL or port") from None
    if not parts.hostname:
        raise OutputConfigError(f"{redact(url)!r}: no broker host")
    query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
    for key in query:
        if key != "keepalive":
            why = " (an output's client id is its own: a chosen one could knock an agent or the collector off " \
                  "the broker)" if key == "client_id" else ""
            raise OutputConfigError(f"{redact(url)!r}: option {key}= is not taken by an MQTT output{why}")
    if "keepalive" in query:
        try:
            keepalive = int(query["keepalive"])
        except ValueError:
            keepalive = 0
        if not 2 <= keepalive <= 3600:
            raise OutputConfigError(f"{redact(url)!r}: keepalive must be 2..3600 seconds")
    opts = dict(options)
    if parts.password is not None:
        opts["password"] = unquote(parts.password)
    if parts.scheme == "mqtt" and any(opts.get(k) for k in ("ca_pem", "cert_pem", "key_pem")):
        raise OutputConfigError(f"{redact(url)!r}: certificates need mqtts://")
    netloc = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
    if parts.port:
        netloc += f":{parts.port}"
    if parts.username:
        netloc = f"{quote(unquote(parts.username), safe='')}@{netloc}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, "")), opts


KIND = Kind(name="mqtt", schemes=("mqtt", "mqtts"), plain=(), secret=("password",), factory=MqttReceiver,
            check=check, default_port=lambda scheme: 8883 if scheme == "mqtts" else 1883)

__all__ = ["ALERT_TOPIC", "AUDIT_TOPIC", "KIND", "MqttReceiver"]
