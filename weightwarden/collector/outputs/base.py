"""The one interface every alert receiver implements, and what an output is made of.

A receiver kind (syslog, webhook, MQTT) is one module that builds a
:class:`Kind` and registers it (:mod:`receivers` holds the registry); the
shared conformance test (``tests/collector/web/test_receiver_conformance.py``)
runs every registered kind through the same checks. A kind says:

- which URL schemes it takes, and which options (each plain or secret);
- how to check a URL and its options before they are stored (``check``):
  nothing that names a local file, no password left in the URL;
- how to make the :class:`Receiver` that delivers a notification.

What is stored (:class:`OutputSpec`) never holds a secret in clear: secrets
are sealed (:mod:`secrets`) and shown nowhere, not even to admins.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping
from concurrent.futures import Executor
from dataclasses import dataclass, field
from urllib.parse import SplitResult, urlsplit

from weightwarden.collector.outputs.message import Notification
from weightwarden.jsontypes import JsonObject, JsonValue
from weightwarden.mqtt import redact

# Options every kind takes. ``allow_local`` lets an output reach loopback, link-local, metadata and this
# host's own addresses: only `outputs add --allow-local` on the collector host sets it (never the API).
COMMON_PLAIN = ("allow_local", "ca_pem", "cert_pem")
COMMON_SECRET = ("key_pem",)
# Options that used to name files on the collector host: refused, each with what to give instead.
FILE_OPTIONS = {"ca": "--ca FILE (the CLI reads it; its contents are stored)",
                "cert": "--cert FILE (the CLI reads it)", "key": "--key FILE (the CLI reads it; stored encrypted)",
                "password_file": "the password in the URL (user:password@, stored encrypted)",
                "secret_file": "--secret-file FILE (the CLI reads it; stored encrypted)"}


class DeliveryError(Exception):
    """The receiver did not take the notification; the outbox retries it later. The message names no secret."""


class OutputConfigError(ValueError):
    """An output URL or option that cannot work, or is not allowed; the message says which and why."""


@dataclass(frozen=True)
class OutputSpec:
    """An output as stored: its URL with no password in it, plain options, and sealed secrets."""

    name: str
    url: str
    options: Mapping[str, JsonValue] = field(default_factory=dict)
    secrets: Mapping[str, str] = field(default_factory=dict)  # option -> sealed value
    audit: bool = False  # also send the audit trail

    @property
    def parts(self) -> SplitResult:
        return urlsplit(self.url)

    @property
    def allow_local(self) -> bool:
        return bool(self.options.get("allow_local"))

    def shown(self) -> JsonObject:
        """What the CLI, the API and the admin page show: secrets by name only."""
        return {"name": self.name, "url": redact(self.url), "options": dict(self.options),
                "secrets": [*sorted(self.secrets)], "audit": self.audit}


class Receiver(abc.ABC):
    """Delivers notifications to one place. ``send`` raises :class:`DeliveryError` (its message
    redacted) when the receiver did not take it; ``close`` may be called any number of times."""

    name: str

    @abc.abstractmethod
    async def send(self, note: Notification) -> None: ...

    @abc.abstractmethod
    async def close(self) -> None: ...


# A receiver's factory: the stored spec, its secrets opened, and the executor for blocking work.
Factory = Callable[[OutputSpec, Mapping[str, str], Executor], Receiver]


@dataclass(frozen=True)
class Kind:
    """One kind of receiver, as registered."""

    name: str
    schemes: tuple[str, ...]
    plain: tuple[str, ...]  # options stored as given
    secret: tuple[str, ...]  # options stored sealed
    factory: Factory
    # Kind-specific checks of (URL parts, options); returns the URL to store (no password in it) and
    # the options, with anything secret the URL carried moved into the options.
    check: Callable[[str, JsonObject], tuple[str, JsonObject]]
    default_port: Callable[[str], int]

    @property
    def options(self) -> tuple[str, ...]:
        return (*self.plain, *self.secret, *COMMON_PLAIN, *COMMON_SECRET)

    @property
    def secret_options(self) -> tuple[str, ...]:
        return (*self.secret, *COMMON_SECRET)


__all__ = ["COMMON_PLAIN", "COMMON_SECRET", "FILE_OPTIONS", "DeliveryError", "Factory", "Kind", "OutputConfigError",
           "OutputSpec", "Receiver"]
