"""Output secrets, sealed with a key that lives beside the collector, not in its database.

A webhook's HMAC key, a receiver's password, a client certificate's private
key: each is given once (``outputs add``, the API, the admin page), sealed
here with AES-256-GCM, and opened only by the dispatcher in ``run`` when it
connects. A copy of the database alone opens nothing; nothing shows a secret
again (the API, the CLI and the admin page list secrets by name).

The key is 32 random bytes (64 hex digits) in one file, found in this order:

1. ``$WEIGHTWARDEN_OUTPUTS_KEY`` (a path);
2. ``$CREDENTIALS_DIRECTORY/outputs-key`` (systemd ``LoadCredential=outputs-key:/etc/...``);
3. beside a SQLite database: ``DIR/outputs.key`` for ``sqlite:///DIR/collector.db``;
4. ``/var/lib/weightwarden-collector/outputs.key`` (the unit's state directory).

The first command that needs to seal a secret makes the file (mode 0600, never
overwritten); collectors sharing a PostgreSQL need the same file (copy it, or
give it as a credential). A key readable by others is refused. Each sealed
value names its key (the first 8 hex digits of the key's SHA-256) and is bound
to its output and option (AES-GCM associated data), so a sealed value moved
to another output does not open.
"""

from __future__ import annotations

import base64
import hashlib
import os
import secrets
import stat
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

ENV = "WEIGHTWARDEN_OUTPUTS_KEY"
CREDENTIAL = "outputs-key"
DEFAULT_DIR = Path("/var/lib/weightwarden-collector")
PREFIX = "aesgcm1"


class SecretsError(ValueError):
    """No usable key, or a sealed value that does not open with it; the message says which and what to do."""


def key_path(db_url: str | None) -> Path:
    if os.environ.get(ENV):
        return Path(os.environ[ENV])
    creds = os.environ.get("CREDENTIALS_DIRECTORY")
    if creds and (Path(creds) / CREDENTIAL).exists():
        return Path(creds) / CREDENTIAL
    if db_url and db_url.startswith("sqlite:///") and not db_url.startswith("sqlite:///:memory:"):
        return Path(db_url[len("sqlite:///"):].split("?", 1)[0]).resolve().parent / "outputs.key"
    return DEFAULT_DIR / "outputs.key"


def _read_key(path: Path) -> bytes:
    try:
        st = path.stat()
        raw = path.read_text().strip()
    except OSError as exc:
        raise SecretsError(f"cannot read the outputs key {path}: {exc.strerror}") from None
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise SecretsError(f"the outputs key {path} is readable by others (mode {stat.S_IMODE(st.st_mode):04o}): "
                           f"chmod 600 {path}")
    try:
        key = bytes.fromhex(raw)
    except ValueError:
        key = b""
    if len(key) != 32:
        raise SecretsError(f"the outputs key {path} is not 64 hex digits")
    return key


class SecretBox:
    """Seals and opens output secrets with one key file (see the module's notes)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._key: bytes | None = None

    @classmethod
    def for_db(cls, db_url: str | None) -> SecretBox:
        return cls(key_path(db_url))

    def key(self, create: bool) -> bytes:
        if self._key is None:
            if create and not self.path.exists():
                self._create()
            self._key = _read_key(self.path)
        return self._key

    def _create(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return  # another command made it first: use that one
        except OSError as exc:
            raise SecretsError(f"cannot create the outputs key {self.path}: {exc.strerror} "
                               f"(set ${ENV} to a file this user may write)") from None
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_hex(32) + "\n")

    @property
    def key_id(self) -> str:
        return hashlib.sha256(self.key(create=False)).hexdigest()[:8]

    def seal(self, value: str, output: str, option: str) -> str:
        key = self.key(create=True)
        nonce = os.urandom(12)
        sealed = AESGCM(key).encrypt(nonce, value.encode(), f"{output}\0{option}".encode())
        kid = hashlib.sha256(key).hexdigest()[:8]
        return f"{PREFIX}:{kid}:{base64.urlsafe_b64encode(nonce + sealed).decode()}"

    def open(self, sealed: str, output: str, option: str) -> str:
        try:
            prefix, kid, blob = sealed.split(":", 2)
        except ValueError:
            raise SecretsError(f"output {output!r}: its {option} is not sealed (re-add the output)") from None
        if prefix != PREFIX:
            raise SecretsError(f"output {output!r}: its {option} is sealed in an unknown way ({prefix!r})")
        key = self.key(create=False)
        if hashlib.sha256(key).hexdigest()[:8] != kid:
            raise SecretsError(f"output {output!r}: its {option} was sealed with another key (id {kid}) than "
                               f"{self.path} (id {self.key_id}): give every collector the same outputs key")
        raw = base64.urlsafe_b64decode(blob.encode())
        try:
            return AESGCM(key).decrypt(raw[:12], raw[12:], f"{output}\0{option}".encode()).decode()
        except InvalidTag:
            raise SecretsError(f"output {output!r}: its {option} does not open (altered, or moved from another "
                               "output): re-add the output") from None


__all__ = ["SecretBox", "SecretsError", "key_path"]
