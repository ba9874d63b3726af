"""Webhooks: a JSON POST per notification, signed with HMAC-SHA256 when the output has a ``secret``.

``https://HOST/PATH`` (or ``http://``). Secrets are the output's own, each
stored sealed: ``secret`` (the HMAC key), a password given in the URL
(``https://user:password@host/...``: sent as HTTP Basic authentication; the
stored URL keeps the user only) and the URL's query string (tokens often live
there). TLS takes ``ca_pem`` and a client certificate.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import http.client
import json
import socket
import ssl
import time
from collections.abc import Mapping
from concurrent.futures import Executor
from urllib.parse import quote, unquote, urlsplit, urlunsplit

from weightwarden.collector.outputs import tls as tlsctx
from weightwarden.collector.outputs.base import DeliveryError, Kind, OutputConfigError, OutputSpec, Receiver
from weightwarden.collector.outputs.destination import DestinationRefused, Target, connect_pinned, resolve
from weightwarden.collector.outputs.message import Notification, document
from weightwarden.jsontypes import JsonObject
from weightwarden.mqtt import redact

TIMEOUT_S = 10.0


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """``sha256=HEX`` of HMAC-SHA256 over ``TIMESTAMP.BODY``: receivers check it and the timestamp's age."""
    return "sha256=" + hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


class _PinnedHTTP(http.client.HTTPConnection):
    """HTTP to an address already checked; the Host header still names the host."""

    def __init__(self, target: Target) -> None:
        super().__init__(target.host, target.port, timeout=TIMEOUT_S)
        self.target = target

    def connect(self) -> None:
        self.sock = connect_pinned(self.target, TIMEOUT_S)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class _PinnedHTTPS(http.client.HTTPSConnection):
    """HTTPS to an address already checked; SNI and the certificate check still use the host's name."""

    def __init__(self, target: Target, context: ssl.SSLContext) -> None:
        super().__init__(target.host, target.port, timeout=TIMEOUT_S, context=context)
        self.target, self.context = target, context

    def connect(self) -> None:
        sock = connect_pinned(self.target, TIMEOUT_S)
        self.sock = self.context.wrap_socket(sock, server_hostname=self.target.host)


class WebhookReceiver(Receiver):
    def __init__(self, spec: OutputSpec, secrets: Mapping[str, str], executor: Executor) -> None:
        self.name, self.executor = spec.name, executor
        self.parts = urlsplit(spec.url)
        self.allow_local = spec.allow_local
        self.secret = secrets.get("secret", "")
        self.query = secrets.get("query", "")
        self.auth = None
        if self.parts.username:
            self.auth = "Basic " + base64.b64encode(
                f"{unquote(self.parts.username)}:{secrets.get('password', '')}".encode()).decode()
        self.tls = tlsctx.context(spec.options, secrets) if self.parts.scheme == "https" else None
        self.where = f"{self.parts.hostname}:{self.parts.port or (443 if self.tls else 80)}"

    def _post(self, body: bytes, headers: dict[str, str]) -> int:
        target = resolve(self.parts.hostname or "", self.parts.port or (443 if self.tls else 80), self.allow_local)
        conn: http.client.HTTPConnection = _PinnedHTTPS(target, self.tls) if self.tls is not None else \
            _PinnedHTTP(target)
        try:
            path = (self.parts.path or "/") + (f"?{self.query}" if self.query else "")
            conn.request("POST", path, body=body, headers=headers)
            resp = conn.getresponse()
            resp.read(65536)
            return resp.status
        finally:
            conn.close()

    async def send(self, note: Notification) -> None:
        body = json.dumps(document(note), default=str, separators=(",", ":")).encode()
        ts = str(int(time.time()))
        headers = {"Content-Type": "application/json", "User-Agent": "weightwarden-collector",
                   "X-Weightwarden-Delivery": note["id"], "X-Weightwarden-Event": note["transition"],
                   "X-Weightwarden-Timestamp": ts}
        if self.secret:
            headers["X-Weightwarden-Signature"] = sign(self.secret, ts, body)
        if self.auth:
            headers["Authorization"] = self.auth
        try:
            status = await asyncio.get_running_loop().run_in_executor(self.executor, self._post, body, headers)
        except DestinationRefused as exc:
            raise DeliveryError(f"webhook {self.where}: refused: {exc}") from None
        except (OSError, http.client.HTTPException) as exc:
            # The exception's text may repeat the URL it was given: never its secrets.
            raise DeliveryError(f"webhook {self.where}: {self._clean(repr(exc))}") from None
        if not 200 <= status < 300:
            raise DeliveryError(f"webhook {self.where}: HTTP {status}")

    def _clean(self, text: str) -> str:
        for secret in (self.query, self.secret):
            if secret:
                text = text.replace(secret, "***")
        return redact(text)

    async def close(self) -> None:
        return None


def check(url: str, options: JsonObject) -> tuple[str, JsonObject]:
    try:
        parts = urlsplit(url)
        _ = parts.port
    except ValueError:
        raise OutputConfigError(f"{redact(url)!r}: bad URL or port") from None
    if not parts.hostname:
        raise OutputConfigError(f"{redact(url)!r}: no host")
    if parts.fragment:
        raise OutputConfigError(f"{redact(url)!r}: a webhook URL has no #fragment")
    opts = dict(options)
    if parts.password is not None:
        opts["password"] = unquote(parts.password)
    if parts.query:
        opts["query"] = parts.query
    netloc = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
    if parts.port:
        netloc += f":{parts.port}"
    if parts.username:
        netloc = f"{quote(unquote(parts.username), safe='')}@{netloc}"
    if parts.scheme == "http" and any(opts.get(k) for k in ("ca_pem", "cert_pem", "key_pem")):
        raise OutputConfigError(f"{redact(url)!r}: certificates need https://")
    return urlunsplit((parts.scheme, netloc, parts.path, "", "")), opts


KIND = Kind(name="webhook", schemes=("http", "https"), plain=(), secret=("secret", "password", "query"),
            factory=WebhookReceiver, check=check, default_port=lambda scheme: 443 if scheme == "https" else 80)

__all__ = ["KIND", "WebhookReceiver", "sign"]
