"""The registry of receiver kinds: an output URL's scheme names its kind; a kind is one module.

URLs (``weightwarden-collector outputs add NAME URL``):
  syslog+udp://HOST:514      RFC 5424, one datagram per message              (outputs/syslog.py)
  syslog+tcp://HOST:601      RFC 5424 with octet-counting framing (RFC 6587)
  syslog+tls://HOST:6514     the same over TLS (RFC 5425)
  ... ?format=cef            a CEF body instead of JSON
  https://HOST/PATH          webhook: JSON POST signed with HMAC-SHA256       (outputs/webhook.py)
  mqtt[s]://HOST:PORT        publish on weightwarden/v1/alerts/<host>, QoS 1  (outputs/mqtt.py)

Adding a kind: a module that builds a :class:`~base.Kind` (``KIND``), named in ``BUILT_IN`` below; the
conformance test then runs it like the others (and fails until it has a harness). Kinds import only
the layer below them (base, destination, tls, message), never this registry: no cycle.

:func:`configure` is the one way an output is made, from the CLI, the API or the admin page: it checks
the URL and options (no local file, no password in the URL, no destination on this host unless the CLI
said ``--allow-local``), and seals the secrets. :func:`make_receiver` opens them again, in ``run`` only.
"""

from __future__ import annotations

from collections.abc import Mapping
from concurrent.futures import Executor
from typing import Any
from urllib.parse import parse_qs, urlsplit

from weightwarden.collector.outputs import mqtt, syslog, webhook
from weightwarden.collector.outputs.base import (
    FILE_OPTIONS,
    DeliveryError,
    Kind,
    OutputConfigError,
    OutputSpec,
    Receiver,
)
from weightwarden.collector.outputs.destination import DestinationRefused, check_literal
from weightwarden.collector.outputs.tls import check_pem
from weightwarden.collector.outputs.vault import SecretBox, SecretsError
from weightwarden.mqtt import redact

KINDS: dict[str, Kind] = {}  # by name
_BY_SCHEME: dict[str, Kind] = {}
ALERT_TOPIC = mqtt.ALERT_TOPIC


def register(kind: Kind) -> Kind:
    for scheme in kind.schemes:
        if scheme in _BY_SCHEME:
            raise ValueError(f"scheme {scheme!r} is already {_BY_SCHEME[scheme].name}'s")
    KINDS[kind.name] = kind
    for scheme in kind.schemes:
        _BY_SCHEME[scheme] = kind
    return kind


def kind_of(url: str) -> Kind:
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    kind = _BY_SCHEME.get(scheme)
    if kind is None:
        raise OutputConfigError(f"{redact(url)!r}: use " + ", ".join(f"{s}://" for s in sorted(_BY_SCHEME)))
    return kind


def refuse_files(url: str, options: Mapping[str, Any]) -> None:
    """Options that name a file on the collector host are refused: an output must not read it."""
    query = parse_qs(urlsplit(url).query)
    for key, instead in FILE_OPTIONS.items():
        if key in options or key in query:
            raise OutputConfigError(f"{redact(url)!r}: {key}= names a file on the collector host, which an output "
                                    f"may not read; give {instead}")


def configure(name: str, url: str, options: Mapping[str, Any], box: SecretBox, *, local_ok: bool = False,
              audit: bool = False) -> OutputSpec:
    """Check an output and seal its secrets; the result is what is stored.

    ``local_ok``: the caller is the CLI on the collector host, which may set ``allow_local``; the
    API and the admin page may not (an admin on the network must not aim the collector at itself)."""
    if not isinstance(url, str) or not url:
        raise OutputConfigError("an output needs a URL")
    if not isinstance(options, Mapping):
        raise OutputConfigError("options must be an object")
    kind = kind_of(url)
    refuse_files(url, options)
    stored_url, opts = kind.check(url, dict(options))
    unknown = set(opts) - set(kind.options)
    if unknown:
        raise OutputConfigError(f"{redact(url)!r}: unknown option(s) {', '.join(sorted(unknown))}; "
                                f"{kind.name} takes {', '.join(sorted(kind.options))}")
    if opts.get("allow_local") not in (None, False, True):
        raise OutputConfigError("allow_local is true or false")
    if opts.get("allow_local") and not local_ok:
        raise OutputConfigError("allow_local can only be set by `weightwarden-collector outputs add --allow-local` "
                                "on the collector host, not over the network")
    if not opts.get("allow_local"):
        opts.pop("allow_local", None)
    for key, marker in (("ca_pem", "-----BEGIN CERTIFICATE-----"), ("cert_pem", "-----BEGIN CERTIFICATE-----"),
                        ("key_pem", "PRIVATE KEY-----")):
        if opts.get(key):
            check_pem(opts[key], key, marker)
    if bool(opts.get("cert_pem")) != bool(opts.get("key_pem")):
        raise OutputConfigError("a client certificate needs both cert_pem and key_pem")
    host = urlsplit(stored_url).hostname or ""
    try:
        check_literal(host, bool(opts.get("allow_local")))
    except DestinationRefused as exc:
        raise OutputConfigError(f"{redact(url)!r}: {exc}") from None
    plain = {k: v for k, v in opts.items() if k not in kind.secret_options and v not in (None, "")}
    sealed: dict[str, str] = {}
    for key in kind.secret_options:
        value = opts.get(key)
        if value in (None, ""):
            continue
        if not isinstance(value, str):
            raise OutputConfigError(f"{key} must be text")
        try:
            sealed[key] = box.seal(value, name, key)
        except SecretsError as exc:
            raise OutputConfigError(str(exc)) from None
    return OutputSpec(name, stored_url, plain, sealed, audit)


def open_secrets(spec: OutputSpec, box: SecretBox) -> dict[str, str]:
    return {key: box.open(value, spec.name, key) for key, value in spec.secrets.items()}


def make_receiver(spec: OutputSpec, box: SecretBox, executor: Executor) -> Receiver:
    """The receiver of a stored output (raises OutputConfigError or SecretsError when it cannot be used)."""
    kind = kind_of(spec.url)
    refuse_files(spec.url, spec.options)
    unknown = set(spec.options) - set(kind.options)
    if unknown:
        raise OutputConfigError(f"output {spec.name!r} has option(s) this collector does not take: "
                                f"{', '.join(sorted(unknown))} (re-add it: docs/outputs.md)")
    return kind.factory(spec, open_secrets(spec, box), executor)


BUILT_IN = (syslog.KIND, webhook.KIND, mqtt.KIND)
for _kind in BUILT_IN:
    register(_kind)

__all__ = ["ALERT_TOPIC", "BUILT_IN", "KINDS", "DeliveryError", "OutputConfigError", "Receiver", "configure", "kind_of",
           "make_receiver", "open_secrets", "register"]
