"""Receivers: where alert notifications go. One small interface, three transports.

URLs (``weightwarden-collector outputs add NAME URL``):
  syslog+udp://HOST:514      RFC 5424, one datagram per message
  syslog+tcp://HOST:601      RFC 5424 with octet-counting framing (RFC 6587)
  syslog+tls://HOST:6514     the same over TLS (RFC 5425); ?ca=FILE&cert=FILE&key=FILE
  ... &format=cef            a CEF body instead of JSON
  https://HOST/PATH          webhook: JSON POST signed with HMAC-SHA256 (secret option)
  mqtt[s]://HOST:PORT        publish on weightwarden/v1/alerts/<host>, QoS 1
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import http.client
import json
import os
import socket
import ssl
import time
from concurrent.futures import Executor
from typing import Any, Protocol
from urllib.parse import parse_qs, urlsplit

from weightwarden.collector.outputs.message import document, syslog_line

ALERT_TOPIC = "weightwarden/v1/alerts"
TIMEOUT_S = 10.0


class DeliveryError(Exception):
    """The receiver did not take the notification; the outbox retries it later."""


class OutputConfigError(ValueError):
    """An output URL or option that cannot work; the message says which."""


class Receiver(Protocol):
    name: str

    async def send(self, note: dict[str, Any]) -> None: ...

    async def close(self) -> None: ...


def _tls_context(options: dict[str, Any]) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=options.get("ca") or None)
    if options.get("cert"):
        ctx.load_cert_chain(options["cert"], options.get("key") or None)
    return ctx


class SyslogReceiver:
    def __init__(self, name: str, transport: str, host: str, port: int, options: dict[str, Any]) -> None:
        self.name, self.transport, self.host, self.port = name, transport, host, port
        self.body = options.get("format", "json")
        self.hostname = options.get("hostname") or socket.gethostname()
        self.tls = _tls_context(options) if transport == "tls" else None
        self.writer: asyncio.StreamWriter | None = None
        self.udp: socket.socket | None = None

    async def send(self, note: dict[str, Any]) -> None:
        line = syslog_line(note, self.hostname, self.body, str(os.getpid()))
        try:
            if self.transport == "udp":
                if self.udp is None:
                    family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
                    self.udp = socket.socket(family, socket.SOCK_DGRAM)
                    self.udp.setblocking(False)
                await asyncio.get_running_loop().sock_sendto(self.udp, line, (self.host, self.port))
                return
            writer = self.writer
            if writer is None or writer.is_closing():
                writer = self.writer = await self._connect()
            writer.write(f"{len(line)} ".encode() + line)
            await asyncio.wait_for(writer.drain(), TIMEOUT_S)
        except (OSError, TimeoutError, ssl.SSLError) as exc:
            await self.close()
            raise DeliveryError(f"syslog {self.transport} {self.host}:{self.port}: {exc!r}") from None

    async def _connect(self) -> asyncio.StreamWriter:
        _reader, writer = await asyncio.wait_for(asyncio.open_connection(self.host, self.port, ssl=self.tls), TIMEOUT_S)
        return writer

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            try:
                await asyncio.wait_for(self.writer.wait_closed(), 2)
            except (OSError, TimeoutError, ssl.SSLError):
                pass
            self.writer = None
        if self.udp is not None:
            self.udp.close()
            self.udp = None


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """``sha256=HEX`` of HMAC-SHA256 over ``TIMESTAMP.BODY``: receivers check it and the timestamp's age."""
    return "sha256=" + hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


class WebhookReceiver:
    def __init__(self, name: str, url: str, options: dict[str, Any], executor: Executor) -> None:
        self.name, self.url, self.executor = name, url, executor
        self.secret = str(options.get("secret") or "")
        self.parts = urlsplit(url)
        self.tls = _tls_context(options) if self.parts.scheme == "https" else None

    def _post(self, body: bytes, headers: dict[str, str]) -> int:
        host = self.parts.hostname or ""
        conn: http.client.HTTPConnection
        if self.tls is not None:
            conn = http.client.HTTPSConnection(host, self.parts.port or 443, timeout=TIMEOUT_S, context=self.tls)
        else:
            conn = http.client.HTTPConnection(host, self.parts.port or 80, timeout=TIMEOUT_S)
        try:
            path = (self.parts.path or "/") + (f"?{self.parts.query}" if self.parts.query else "")
            conn.request("POST", path, body=body, headers=headers)
            resp = conn.getresponse()
            resp.read(65536)
            return resp.status
        finally:
            conn.close()

    async def send(self, note: dict[str, Any]) -> None:
        body = json.dumps(document(note), default=str, separators=(",", ":")).encode()
        ts = str(int(time.time()))
        headers = {"Content-Type": "application/json", "User-Agent": "weightwarden-collector",
                   "X-Weightwarden-Delivery": note["id"], "X-Weightwarden-Event": note["transition"],
                   "X-Weightwarden-Timestamp": ts}
        if self.secret:
            headers["X-Weightwarden-Signature"] = sign(self.secret, ts, body)
        try:
            status = await asyncio.get_running_loop().run_in_executor(self.executor, self._post, body, headers)
        except (OSError, http.client.HTTPException) as exc:
            raise DeliveryError(f"webhook {self.parts.netloc}: {exc!r}") from None
        if not 200 <= status < 300:
            raise DeliveryError(f"webhook {self.parts.netloc}: HTTP {status}")

    async def close(self) -> None:
        return None


class MqttReceiver:
    def __init__(self, name: str, url: str) -> None:
        from weightwarden.mqtt import MqttSettings, MqttURLError

        self.name = name
        try:
            self.settings = MqttSettings.from_url(url)
        except MqttURLError as exc:
            raise OutputConfigError(str(exc)) from None
        self.client: Any = None

    async def send(self, note: dict[str, Any]) -> None:
        import aiomqtt

        s = self.settings
        body = json.dumps(document(note), default=str, separators=(",", ":"))
        try:
            if self.client is None:
                client = aiomqtt.Client(s.host, s.port, username=s.username, password=s.password,
                                        identifier=s.client_id, protocol=aiomqtt.ProtocolVersion.V5,
                                        keepalive=s.keepalive, tls_context=s.ssl_context() if s.tls else None,
                                        timeout=TIMEOUT_S)
                await client.__aenter__()
                self.client = client
            await self.client.publish(f"{ALERT_TOPIC}/{note['alert']['host']}", body, qos=1, timeout=TIMEOUT_S)
        except (aiomqtt.MqttError, OSError, TimeoutError) as exc:
            await self.close()
            raise DeliveryError(f"mqtt {s.host}:{s.port}: {exc!r}") from None

    async def close(self) -> None:
        if self.client is not None:
            client, self.client = self.client, None
            try:
                await client.__aexit__(None, None, None)
            except Exception:  # noqa: BLE001 - a broken connection is dropped either way
                pass


SYSLOG_KEYS = {"format", "ca", "cert", "key", "hostname"}
WEBHOOK_KEYS = {"secret", "ca", "cert", "key"}


def check(url: str, options: dict[str, Any]) -> dict[str, Any]:
    """Validate an output before it is stored; returns the options, or raises OutputConfigError."""
    parts = urlsplit(url)
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    if parts.scheme.startswith("syslog+"):
        options = {**query, **options}
        unknown = set(options) - SYSLOG_KEYS
        if parts.scheme[7:] not in ("udp", "tcp", "tls"):
            raise OutputConfigError(f"{url!r}: syslog transport must be syslog+udp, syslog+tcp or syslog+tls")
        if options.get("format", "json") not in ("json", "cef"):
            raise OutputConfigError(f"{url!r}: format must be json or cef")
    elif parts.scheme in ("http", "https"):
        unknown = set(options) - WEBHOOK_KEYS
    elif parts.scheme in ("mqtt", "mqtts"):
        MqttReceiver("check", url)
        unknown = set()
    else:
        raise OutputConfigError(f"{url!r}: use syslog+udp://, syslog+tcp://, syslog+tls://, http(s):// or mqtt(s)://")
    if unknown:
        raise OutputConfigError(f"{url!r}: unknown option(s) {', '.join(sorted(unknown))}")
    if not parts.hostname:
        raise OutputConfigError(f"{url!r}: no host")
    try:
        _port = parts.port
    except ValueError:
        raise OutputConfigError(f"{url!r}: bad port") from None
    for key in ("ca", "cert", "key"):
        if options.get(key) and not os.access(options[key], os.R_OK):
            raise OutputConfigError(f"{url!r}: cannot read {key} file {options[key]}")
    return options


def make_receiver(name: str, url: str, options: dict[str, Any], executor: Executor) -> Receiver:
    options = check(url, options)
    parts = urlsplit(url)
    if parts.scheme.startswith("syslog+"):
        transport = parts.scheme[7:]
        default = {"udp": 514, "tcp": 601, "tls": 6514}[transport]
        return SyslogReceiver(name, transport, parts.hostname or "", parts.port or default, options)
    if parts.scheme in ("http", "https"):
        return WebhookReceiver(name, url, options, executor)
    return MqttReceiver(name, url)
