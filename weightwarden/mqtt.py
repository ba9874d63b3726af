"""MQTT connection settings shared by the agent's sink and the collector.

URL: mqtt[s]://[USER[:PASS]@]HOST[:PORT][?keepalive=S&replay=S&ca=F&cert=F&key=F&password_file=F&client_id=ID]
A password is best given by file: ``password_file=`` or systemd's
LoadCredential=mqtt-password (read from $CREDENTIALS_DIRECTORY), never an
environment variable. Errors never echo a password.
"""

from __future__ import annotations

import os
import re
import ssl
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit


class MqttURLError(ValueError):
    """A broker URL that cannot be used; the message names the problem (never a password)."""


TOPIC_ROOT = "weightwarden/v1"
# user:password@ up to the last @ before the path (urlsplit splits there too, so an unescaped @ in a
# password is hidden with the rest of it).
_USERINFO = re.compile(r"(?P<scheme>^[A-Za-z][A-Za-z0-9+.-]*://)?(?P<user>[^/@:?#]*):[^/?#]*@")


def redact(url: str) -> str:
    """``url`` with the password of its user part (and any password= option) replaced by ***: what
    every message about a URL shows. Works on strings that do not parse as URLs, too."""
    out = _USERINFO.sub(lambda m: f"{m.group('scheme') or ''}{m.group('user')}:***@", url, count=1)
    return re.sub(r"(?i)([?&](?:password|pass|pw)=)[^&#]*", r"\1***", out)
QUERY_KEYS = {"keepalive", "replay", "ca", "cert", "key", "password_file", "client_id", "insecure"}


def _readable(path: str, what: str) -> str:
    try:
        with Path(path).open("rb"):
            pass
    except OSError as exc:
        raise MqttURLError(f"cannot read {what} {path}: {exc.strerror}") from None
    return path


def _seconds(url: str, query: dict[str, str], key: str, default: float, low: float, high: float,
             whole: bool = False) -> float:
    try:
        value = (int if whole else float)(query.get(key, default))
    except ValueError:
        raise MqttURLError(f"{redact(url)!r}: {key} must be {'whole ' if whole else ''}seconds") from None
    if not low <= value <= high:  # also refuses nan
        raise MqttURLError(f"{redact(url)!r}: {key} must be {low}..{high} seconds")
    return value


@dataclass(frozen=True)
class MqttSettings:
    host: str
    port: int
    tls: bool
    username: str | None = None
    password: str | None = None
    ca: str | None = None
    cert: str | None = None
    key: str | None = None
    keepalive: int = 30
    client_id: str | None = None
    insecure: bool = False
    replay: float = 30.0

    @classmethod
    def from_url(cls, url: str) -> MqttSettings:
        try:
            parts = urlsplit(url)
        except ValueError as exc:  # an unbalanced [ in the host, say
            raise MqttURLError(f"{redact(url)!r}: {exc}") from None
        if parts.scheme not in ("mqtt", "mqtts"):
            raise MqttURLError(f"{redact(url)!r}: scheme must be mqtt:// or mqtts://")
        if not parts.hostname:
            raise MqttURLError(f"{redact(url)!r}: no broker host")
        try:
            port = parts.port or (8883 if parts.scheme == "mqtts" else 1883)
        except ValueError:
            raise MqttURLError(f"{redact(url)!r}: bad port") from None
        query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        unknown = set(query) - QUERY_KEYS
        if unknown:
            raise MqttURLError(f"{redact(url)!r}: unknown option(s) {', '.join(sorted(unknown))}; known: "
                               f"{', '.join(sorted(QUERY_KEYS))}")
        keepalive = int(_seconds(url, query, "keepalive", 30, 2, 3600, whole=True))
        replay = _seconds(url, query, "replay", 30, 0, 86400)
        password = unquote(parts.password) if parts.password else None
        if "password_file" in query:
            try:
                password = Path(_readable(query["password_file"], "password file")).read_text().strip()
            except OSError as exc:
                raise MqttURLError(f"cannot read password file: {exc}") from None
        elif password is None and os.environ.get("CREDENTIALS_DIRECTORY"):
            cred = Path(os.environ["CREDENTIALS_DIRECTORY"]) / "mqtt-password"
            if cred.exists():
                password = cred.read_text().strip()
        tls = parts.scheme == "mqtts"
        for opt in ("ca", "cert", "key"):
            if opt in query:
                if not tls:
                    raise MqttURLError(f"{redact(url)!r}: {opt}= needs mqtts://")
                _readable(query[opt], f"{opt} file")
        if ("cert" in query) != ("key" in query):
            raise MqttURLError(f"{redact(url)!r}: a client certificate needs both cert= and key=")
        settings = cls(parts.hostname, port, tls, unquote(parts.username) if parts.username else None, password,
                       query.get("ca"), query.get("cert"), query.get("key"), keepalive, query.get("client_id"),
                       query.get("insecure") in ("1", "true", "yes"), replay)
        if tls:
            settings.ssl_context()  # a bad certificate fails now, at start, not at first connect
        return settings

    def ssl_context(self) -> ssl.SSLContext:
        try:
            ctx = ssl.create_default_context(cafile=self.ca)
            if self.cert and self.key:
                ctx.load_cert_chain(self.cert, self.key)
        except (ssl.SSLError, OSError) as exc:
            raise MqttURLError(f"TLS setup failed: {exc}") from None
        if self.insecure:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        return ctx
