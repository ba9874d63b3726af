"""Syslog receivers: RFC 5424 over UDP, TCP (octet counting, RFC 6587) or TLS (RFC 5425); JSON or CEF body.

``syslog+udp://HOST:514``, ``syslog+tcp://HOST:601``, ``syslog+tls://HOST:6514``;
options ``format`` (json, cef) and ``hostname`` (what the messages say sent them),
in the query or as options; TLS takes ``ca_pem`` and a client certificate
(``cert_pem``, ``key_pem``). Each connection goes to an address checked by
:mod:`destination`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import ssl
from collections.abc import Mapping
from concurrent.futures import Executor
from urllib.parse import parse_qs, urlsplit, urlunsplit

from weightwarden.collector.outputs import tls as tlsctx
from weightwarden.collector.outputs.base import DeliveryError, Kind, OutputConfigError, OutputSpec, Receiver
from weightwarden.collector.outputs.destination import DestinationRefused, Target, resolve_async
from weightwarden.collector.outputs.message import Notification, syslog_line
from weightwarden.jsontypes import JsonObject
from weightwarden.mqtt import redact

TIMEOUT_S = 10.0
PORTS = {"udp": 514, "tcp": 601, "tls": 6514}


class SyslogReceiver(Receiver):
    def __init__(self, spec: OutputSpec, secrets: Mapping[str, str], _executor: Executor) -> None:
        parts = urlsplit(spec.url)
        self.name = spec.name
        self.transport = parts.scheme.split("+", 1)[1]
        self.host, self.port = parts.hostname or "", parts.port or PORTS[self.transport]
        self.allow_local = spec.allow_local
        self.body = str(spec.options.get("format", "json"))
        self.hostname = str(spec.options.get("hostname") or socket.gethostname())
        self.tls = tlsctx.context(spec.options, secrets) if self.transport == "tls" else None
        self.writer: asyncio.StreamWriter | None = None
        self.udp: socket.socket | None = None
        self.udp_target: Target | None = None

    async def send(self, note: Notification) -> None:
        line = syslog_line(note, self.hostname, self.body, str(os.getpid()))
        try:
            if self.transport == "udp":
                await self._send_udp(line)
                return
            writer = self.writer
            if writer is None or writer.is_closing():
                writer = self.writer = await self._connect()
            writer.write(f"{len(line)} ".encode() + line)
            await asyncio.wait_for(writer.drain(), TIMEOUT_S)
        except DestinationRefused as exc:
            await self.close()
            raise DeliveryError(f"syslog {self.transport} {self.host}:{self.port}: refused: {exc}") from None
        except (OSError, TimeoutError, ssl.SSLError) as exc:
            await self.close()
            raise DeliveryError(f"syslog {self.transport} {self.host}:{self.port}: {redact(repr(exc))}") from None

    async def _send_udp(self, line: bytes) -> None:
        if self.udp is None or self.udp_target is None:
            target = await resolve_async(self.host, self.port, self.allow_local, socket.SOCK_DGRAM)
            family = socket.AF_INET6 if ":" in target.addresses[0] else socket.AF_INET
            self.udp = socket.socket(family, socket.SOCK_DGRAM)
            self.udp.setblocking(False)
            self.udp_target = target
        await asyncio.get_running_loop().sock_sendto(self.udp, line, (self.udp_target.addresses[0], self.port))

    async def _connect(self) -> asyncio.StreamWriter:
        target = await resolve_async(self.host, self.port, self.allow_local)
        last: BaseException | None = None
        for address in target.addresses:  # the checked addresses only: the name is not resolved again
            try:
                _reader, writer = await asyncio.wait_for(asyncio.open_connection(
                    address, self.port, ssl=self.tls, server_hostname=self.host if self.tls else None), TIMEOUT_S)
                return writer
            except (OSError, TimeoutError) as exc:
                last = exc
        raise last if isinstance(last, (OSError, TimeoutError)) else OSError(f"no address of {self.host} answered")

    async def close(self) -> None:
        if self.writer is not None:
            writer, self.writer = self.writer, None
            writer.close()
            with contextlib.suppress(OSError, TimeoutError, ssl.SSLError):
                await asyncio.wait_for(writer.wait_closed(), 2)
        if self.udp is not None:
            self.udp.close()
            self.udp = None
            self.udp_target = None


def check(url: str, options: JsonObject) -> tuple[str, JsonObject]:
    parts = urlsplit(url)
    transport = parts.scheme.split("+", 1)[1] if "+" in parts.scheme else ""
    if transport not in PORTS:
        raise OutputConfigError(f"{redact(url)!r}: syslog transport must be syslog+udp, syslog+tcp or syslog+tls")
    if parts.username or parts.password:
        raise OutputConfigError(f"{redact(url)!r}: syslog takes no user or password")
    if not parts.hostname:
        raise OutputConfigError(f"{redact(url)!r}: no host")
    try:
        _ = parts.port
    except ValueError:
        raise OutputConfigError(f"{redact(url)!r}: bad port") from None
    query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
    merged = {**query, **options}
    if merged.get("format", "json") not in ("json", "cef"):
        raise OutputConfigError(f"{redact(url)!r}: format must be json or cef")
    if merged.get("hostname") is not None and (not isinstance(merged["hostname"], str) or
                                               not all(33 <= ord(c) <= 126 for c in merged["hostname"])):
        raise OutputConfigError("hostname: printable ASCII, no spaces (RFC 5424)")
    if transport != "tls" and any(merged.get(k) for k in ("ca_pem", "cert_pem", "key_pem")):
        raise OutputConfigError(f"{redact(url)!r}: certificates need syslog+tls://")
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "", "")), merged


KIND = Kind(name="syslog", schemes=("syslog+udp", "syslog+tcp", "syslog+tls"), plain=("format", "hostname"),
            secret=(), factory=SyslogReceiver, check=check, default_port=lambda scheme: PORTS[scheme.split("+")[1]])

__all__ = ["KIND", "SyslogReceiver"]
