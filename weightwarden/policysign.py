"""Signed policy envelopes, shared by the publisher (collector) and the agents. Pure, apart from reading keys.

A published policy is one retained MQTT message per host group on
``weightwarden/policy/v1/<hosts glob>``, holding a JSON envelope::

    {"format": "weightwarden-policy/v1", "hosts": "gpu-*", "version": 1718000000,
     "key_id": "3f2a9c1d0b7e4a55", "published_at": 1718000000.5,
     "policy": "<the policy YAML, verbatim>", "signature": "<base64 Ed25519>"}

The signature covers every other field (canonical JSON: sorted keys, no
spaces), so neither the policy, nor the host group, nor the version can be
changed or moved to another group's topic without the private key. ``key_id``
(the first 16 hex digits of the SHA-256 of the raw 32-byte public key) names
the key that signed, so an agent can trust several keys at once: that is how
keys are rotated (docs/policies.md).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import os
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

FORMAT = "weightwarden-policy/v1"
TOPIC_ROOT = "weightwarden/policy/v1"
MAX_ENVELOPE = 1 << 20
# Host ids are [A-Za-z0-9_.-]; a group is a glob over them. None of these is special in an MQTT topic.
HOSTS_GLOB = re.compile(r"[A-Za-z0-9_.*?!\[\]-]{1,128}")
MAX_VERSION = 2**62
FIELDS = {"format", "hosts", "version", "key_id", "published_at", "policy", "signature"}


class SignedBody(TypedDict):
    """What the signature covers (``canonical``): everything in the envelope but the signature."""

    format: str
    hosts: str
    version: int
    key_id: str
    published_at: float
    policy: str


class EnvelopeError(ValueError):
    """A message that is not a validly signed policy; the text says why."""


class KeyFileError(ValueError):
    """A key file that cannot be used."""


@dataclass(frozen=True)
class Envelope:
    hosts: str
    version: int
    key_id: str
    published_at: float
    policy: str
    signature: str

    def body(self) -> SignedBody:
        return {"format": FORMAT, "hosts": self.hosts, "version": self.version, "key_id": self.key_id,
                "published_at": self.published_at, "policy": self.policy}

    def to_json(self) -> bytes:
        return json.dumps({**self.body(), "signature": self.signature}).encode()


def canonical(body: Mapping[str, object]) -> bytes:
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def key_id(key: Ed25519PublicKey) -> str:
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def topic(hosts: str) -> str:
    check_hosts(hosts)
    return f"{TOPIC_ROOT}/{hosts}"


def check_hosts(hosts: str) -> str:
    if not HOSTS_GLOB.fullmatch(hosts):
        raise EnvelopeError(f"not a host group: {hosts[:60]!r} (a glob over host ids, e.g. gpu-*, gpu-0[1-4], *)")
    return hosts


# -- keys -----------------------------------------------------------------------


def generate_key(prefix: Path) -> tuple[Path, Path, str]:
    """PREFIX.key (PKCS#8 PEM, mode 0600) and PREFIX.pub (SubjectPublicKeyInfo PEM); returns the key id too."""
    key = Ed25519PrivateKey.generate()
    private = prefix.with_name(prefix.name + ".key")
    public = prefix.with_name(prefix.name + ".pub")
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    fd = os.open(private, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                     serialization.PublicFormat.SubjectPublicKeyInfo))
    return private, public, key_id(key.public_key())


def load_private_key(path: str | Path) -> Ed25519PrivateKey:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise KeyFileError(f"cannot read private key {path}: {exc.strerror}") from None
    try:
        if data.startswith(b"-----BEGIN OPENSSH PRIVATE KEY"):
            key: object = serialization.load_ssh_private_key(data, None)
        else:
            key = serialization.load_pem_private_key(data, None)
    except (ValueError, TypeError) as exc:
        raise KeyFileError(f"{path}: not an unencrypted PEM or OpenSSH private key ({exc})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"{path}: not an Ed25519 key")
    return key


def load_public_key(path: str | Path) -> Ed25519PublicKey:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise KeyFileError(f"cannot read public key {path}: {exc.strerror}") from None
    try:
        if data.startswith(b"ssh-ed25519 "):
            key: object = serialization.load_ssh_public_key(data.strip())
        else:
            key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError, binascii.Error) as exc:
        raise KeyFileError(f"{path}: not a PEM or OpenSSH public key ({exc})") from None
    if not isinstance(key, Ed25519PublicKey):
        raise KeyFileError(f"{path}: not an Ed25519 key")
    return key


def trusted_keys(paths: list[str]) -> dict[str, Ed25519PublicKey]:
    return {key_id(k): k for k in (load_public_key(p) for p in paths)}


# -- envelopes ------------------------------------------------------------------


def sign(policy: str, hosts: str, version: int, key: Ed25519PrivateKey, published_at: float | None = None) -> Envelope:
    check_hosts(hosts)
    if not 1 <= version <= MAX_VERSION:
        raise EnvelopeError(f"version must be 1..2^62, got {version}")
    env = Envelope(hosts, version, key_id(key.public_key()), float(published_at or time.time()), policy, "")
    signature = base64.b64encode(key.sign(canonical(env.body()))).decode()
    return Envelope(env.hosts, env.version, env.key_id, env.published_at, env.policy, signature)


def parse(payload: bytes) -> Envelope:
    """The envelope's fields, checked for shape (not yet for the signature)."""
    if len(payload) > MAX_ENVELOPE:
        raise EnvelopeError(f"message of {len(payload):,} bytes is over the {MAX_ENVELOPE:,}-byte limit")
    try:
        doc = json.loads(payload)
    except (ValueError, RecursionError):
        raise EnvelopeError("not JSON") from None
    if not isinstance(doc, dict) or set(doc) != FIELDS:
        got = sorted(doc)[:10] if isinstance(doc, dict) else type(doc).__name__
        raise EnvelopeError(f"not a signed policy envelope (fields {got})")
    if doc["format"] != FORMAT:
        raise EnvelopeError(f"format {str(doc['format'])[:40]!r} is not {FORMAT}")
    types: dict[str, type | tuple[type, ...]] = {"hosts": str, "version": int, "key_id": str,
                                                 "published_at": (int, float), "policy": str, "signature": str}
    for name, kind in types.items():
        if not isinstance(doc[name], kind) or isinstance(doc[name], bool):
            raise EnvelopeError(f"field {name!r} has the wrong type")
    if not 1 <= doc["version"] <= MAX_VERSION:
        raise EnvelopeError("version out of range")
    if not math.isfinite(float(doc["published_at"])):
        raise EnvelopeError("published_at is not a time")
    check_hosts(doc["hosts"])
    return Envelope(doc["hosts"], doc["version"], doc["key_id"], float(doc["published_at"]), doc["policy"],
                    doc["signature"])


def verify(env: Envelope, trusted: dict[str, Ed25519PublicKey]) -> None:
    key = trusted.get(env.key_id)
    if key is None:
        raise EnvelopeError(f"signed with key {env.key_id[:16]!r}, which this agent does not trust "
                            f"(trusted: {', '.join(sorted(trusted)) or 'none'})")
    try:
        signature = base64.b64decode(env.signature, validate=True)
        key.verify(signature, canonical(env.body()))
    except (InvalidSignature, binascii.Error, ValueError):
        raise EnvelopeError(f"bad signature (key {env.key_id}): the message was altered or not signed by that key") \
            from None
