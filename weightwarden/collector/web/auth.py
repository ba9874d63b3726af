"""Users, roles, passwords, API tokens and console sessions, kept in the collector's database.

Passwords are hashed with argon2id (memory-hard; argon2-cffi's defaults follow
RFC 9106's second recommended set: 64 MiB a hash). Tokens and session ids are
256-bit random values: only their SHA-256 is stored, so a copy of the database
opens nothing.

Wrong passwords make the account (and the address) back off, counted in the
database before each password is checked (:mod:`limits`); an attempt made while
backing off is refused without checking its password. At most ``HASH_SLOTS``
passwords are hashed at once in a process, so unauthenticated requests cannot
make it use more than ``HASH_SLOTS`` x 64 MiB for hashing, however many arrive.
Every login, failure and backoff is written to the audit trail.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypedDict, cast

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from sqlalchemy import Connection, text

from weightwarden.collector.store import audit
from weightwarden.collector.web import limits

if TYPE_CHECKING:
    from weightwarden.collector.store.database import Store

ROLES = ("viewer", "analyst", "admin")
# What each role may do; each role has everything of the ones before it.
PERMISSIONS = {"viewer": {"read"}, "analyst": {"read", "triage"}, "admin": {"read", "triage", "admin"}}
MIN_PASSWORD = 8
MAX_PASSWORD = 1024  # argon2 takes any length; a megabyte "password" is only a way to burn CPU
HASH_SLOTS = 2  # passwords hashed at once per process (each takes 64 MiB for ~0.1 s)
HASH_WAIT_S = 20.0  # a login waits this long for a slot, then is told to try again
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")
TOKEN_PREFIX = "wwt"

_hasher = PasswordHasher()
# Verified against when the user does not exist, so an unknown name costs what a wrong password costs.
_DUMMY = _hasher.hash(secrets.token_hex(16))
_slots = threading.BoundedSemaphore(HASH_SLOTS)


class AuthError(ValueError):
    """A user or token request that cannot be done; the message says why."""


class Busy(AuthError):
    """Every hashing slot stayed taken for HASH_WAIT_S: try again (503)."""


@contextmanager
def hashing() -> Iterator[None]:
    """One of HASH_SLOTS, for one argon2 computation (a login's check, a new password's hash)."""
    if not _slots.acquire(timeout=HASH_WAIT_S):
        raise Busy("the server is busy checking passwords: try again in a moment")
    try:
        yield
    finally:
        _slots.release()


@dataclass(frozen=True)
class Principal:
    name: str
    role: str
    via: str  # "session", "token" or "cli"
    csrf: str | None = None  # set for console sessions only

    def may(self, permission: str) -> bool:
        return permission in PERMISSIONS.get(self.role, set())


@dataclass(frozen=True)
class LoginResult:
    principal: Principal | None
    refused_for: float = 0.0  # > 0: backing off; the password was not checked
    reason: str = ""


def _sha(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def check_name(name: str) -> str:
    if not NAME.match(name):
        raise AuthError(f"user name {name!r}: letters, digits and _ . @ - only, at most 64, starting with a letter or digit")
    return name


def check_role(role: str) -> str:
    if role not in ROLES:
        raise AuthError(f"role {role!r}: one of {', '.join(ROLES)}")
    return role


def hash_password(password: str) -> str:
    if len(password) < MIN_PASSWORD:
        raise AuthError(f"password too short: at least {MIN_PASSWORD} characters")
    if len(password) > MAX_PASSWORD:
        raise AuthError(f"password too long: at most {MAX_PASSWORD} characters")
    with hashing():
        return _hasher.hash(password)


# -- users -------------------------------------------------------------------


def add_user(conn: Connection, name: str, role: str, password: str, now: float) -> None:
    check_name(name)
    check_role(role)
    if conn.execute(text("SELECT 1 FROM users WHERE name = :n"), {"n": name}).first():
        raise AuthError(f"user {name!r} exists (set a password with 'users passwd', a role with 'users role')")
    conn.execute(text("INSERT INTO users(name, role, password_hash, created_at, failed_logins) "
                      "VALUES (:n, :r, :h, :t, 0)"), {"n": name, "r": role, "h": hash_password(password), "t": now})


def set_password(conn: Connection, name: str, password: str) -> bool:
    res = conn.execute(text("UPDATE users SET password_hash = :h, failed_logins = 0, locked_until = NULL "
                            "WHERE name = :n"), {"h": hash_password(password), "n": name})
    if res.rowcount:
        end_sessions(conn, name)
        limits.clear_user(conn, name)
    return bool(res.rowcount)


def set_role(conn: Connection, name: str, role: str) -> bool:
    check_role(role)
    return bool(conn.execute(text("UPDATE users SET role = :r WHERE name = :n"), {"r": role, "n": name}).rowcount)


def unlock(conn: Connection, name: str) -> bool:
    """End the account's backoff (and any lock an older collector set)."""
    limits.clear_user(conn, name)
    return bool(conn.execute(text("UPDATE users SET failed_logins = 0, locked_until = NULL WHERE name = :n"),
                             {"n": name}).rowcount)


def remove_user(conn: Connection, name: str, now: float) -> bool:
    end_sessions(conn, name)
    conn.execute(text("UPDATE api_tokens SET revoked_at = :t WHERE user_name = :n AND revoked_at IS NULL"),
                 {"t": now, "n": name})
    return bool(conn.execute(text("DELETE FROM users WHERE name = :n"), {"n": name}).rowcount)


class UserInfo(TypedDict):
    name: str
    role: str
    created_at: float
    last_login: float | None
    failed_logins: int
    locked_until: float | None


class TokenInfo(TypedDict):
    id: str
    user: str
    label: str | None
    created_at: float
    expires_at: float | None
    last_used: float | None
    revoked_at: float | None


def users(conn: Connection, now: float | None = None) -> list[UserInfo]:
    """Users; ``locked_until``: until when logins to the account back off (from some address, or all)."""
    import time

    now = time.time() if now is None else now
    rows = [cast(UserInfo, dict(r)) for r in conn.execute(text("SELECT name, role, created_at, last_login FROM users "
                                                               "ORDER BY name")).mappings()]
    waits: dict[str, tuple[int, float | None]] = {}
    for key, failures, blocked in conn.execute(text(
            "SELECT key, failures, blocked_until FROM login_limits WHERE key LIKE 'user:%' OR key LIKE 'pair:%'")):
        name = str(key)[5:] if str(key).startswith("user:") else str(key)[5:].rsplit("|", 1)[0]
        count, until = waits.get(name, (0, None))
        if str(key).startswith("user:"):
            count = int(failures)
        if blocked is not None and float(blocked) > now:
            until = max(until or 0.0, float(blocked))
        waits[name] = (count, until)
    for r in rows:
        r["failed_logins"], r["locked_until"] = waits.get(r["name"], (0, None))
    return rows


def login(store: Store, name: str, password: str, address: str, now: float, via: str = "console") -> LoginResult:
    """Check a password, within the limits; every outcome but a refusal is audited.

    Three short transactions: take a place in the counts (and read the account), check the password
    holding no database lock (it takes ~0.1 s), then record the outcome."""
    name = name[:200]
    with store.tx() as conn:
        reservation = limits.reserve(conn, name, address, now)
        row = None if reservation.refused_for else conn.execute(text(
            "SELECT name, role, password_hash FROM users WHERE name = :n"), {"n": name}).mappings().first()
        if secrets.randbelow(100) == 0:
            limits.sweep(conn, now)
    if reservation.refused_for:
        return LoginResult(None, refused_for=reservation.refused_for,
                           reason="too many failed logins for this name or from this address: try again later")
    ok = False
    try:
        with hashing():
            if row is None or len(password) > MAX_PASSWORD:
                _hasher.verify(_DUMMY, password[:MAX_PASSWORD])
            else:
                ok = _hasher.verify(row["password_hash"], password)
    except (VerifyMismatchError, InvalidHashError, VerificationError):
        ok = False
    new_hash = None
    if ok and row is not None and _hasher.check_needs_rehash(row["password_hash"]):
        with hashing():
            new_hash = _hasher.hash(password)
    with store.tx() as conn:
        if ok and row is not None:
            limits.succeeded(conn, reservation, now)
            conn.execute(text("UPDATE users SET last_login = :t" + (", password_hash = :h" if new_hash else "") +
                              " WHERE name = :n"), {"t": now, "n": name, "h": new_hash})
            audit.record(conn, user=name, action="login", via=via, source=address, now=now)
            return LoginResult(Principal(row["name"], row["role"], "password"))
        audit.record(conn, user=name, action="login_failed", via=via, source=address, outcome="failed", now=now,
                     detail=None if row is not None else "no such user")
        if reservation.started_backoff:
            audit.record(conn, user=name, action="login_backoff", via=via, source=address, outcome="refused",
                         now=now, detail="further attempts for this name or from this address wait (5 s, doubling)")
    return LoginResult(None, reason="unknown user or wrong password")


def token_refused(store: Store, address: str, now: float, via: str) -> float:
    """A Bearer token that opens nothing: counted against the address (and audited, while it is not backing
    off). Returns how long the address backs off (0: it does not)."""
    key = limits.keys("", address)["addr"]
    with store.tx() as conn:
        reservation = limits.reserve_keys(conn, {"addr": key}, now)
        if not reservation.refused_for:
            audit.record(conn, user="?", action="token_refused", via=via, source=address, outcome="failed", now=now)
    return reservation.refused_for


# -- API tokens ------------------------------------------------------------------


def create_token(conn: Connection, user: str, label: str | None, expires_at: float | None, now: float) -> tuple[str, str]:
    """A new token for ``user``: (token id, the token). The token itself is shown once and never stored."""
    if not conn.execute(text("SELECT 1 FROM users WHERE name = :n"), {"n": user}).first():
        raise AuthError(f"no user {user!r} (add one with 'users add')")
    token_id = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    conn.execute(text("INSERT INTO api_tokens(id, user_name, label, token_hash, created_at, expires_at) "
                      "VALUES (:i, :u, :l, :h, :t, :e)"),
                 {"i": token_id, "u": user, "l": label, "h": _sha(secret), "t": now, "e": expires_at})
    return token_id, f"{TOKEN_PREFIX}_{token_id}_{secret}"


def token_principal(conn: Connection, token: str, now: float) -> Principal | None:
    parts = token.split("_", 2)
    if len(parts) != 3 or parts[0] != TOKEN_PREFIX:
        return None
    row = conn.execute(text(
        "SELECT t.token_hash, t.expires_at, t.revoked_at, t.last_used, u.name, u.role FROM api_tokens t "
        "JOIN users u ON u.name = t.user_name WHERE t.id = :i"), {"i": parts[1]}).mappings().first()
    if row is None or not hmac.compare_digest(row["token_hash"], _sha(parts[2])):
        return None
    if row["revoked_at"] is not None or (row["expires_at"] is not None and row["expires_at"] <= now):
        return None
    if row["last_used"] is None or now - row["last_used"] > 60:  # a write a minute at most per token
        conn.execute(text("UPDATE api_tokens SET last_used = :t WHERE id = :i"), {"t": now, "i": parts[1]})
    return Principal(row["name"], row["role"], "token")


def revoke_token(conn: Connection, token_id: str, now: float) -> bool:
    return bool(conn.execute(text("UPDATE api_tokens SET revoked_at = :t WHERE id = :i AND revoked_at IS NULL"),
                             {"t": now, "i": token_id}).rowcount)


def tokens(conn: Connection) -> list[TokenInfo]:
    rows = conn.execute(text("SELECT id, user_name AS user, label, created_at, expires_at, last_used, revoked_at "
                             "FROM api_tokens ORDER BY created_at")).mappings()
    return [cast(TokenInfo, dict(r)) for r in rows]


# -- console sessions ----------------------------------------------------------------


def create_session(conn: Connection, user: str, ttl_s: float, now: float) -> tuple[str, str]:
    """(session id for the cookie, CSRF token for the forms). Expired sessions are swept here."""
    conn.execute(text("DELETE FROM web_sessions WHERE expires_at < :t"), {"t": now})
    sid, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(24)
    conn.execute(text("INSERT INTO web_sessions(id_hash, user_name, csrf, created_at, expires_at, last_seen) "
                      "VALUES (:i, :u, :c, :t, :e, :t)"), {"i": _sha(sid), "u": user, "c": csrf, "t": now, "e": now + ttl_s})
    return sid, csrf


def session_principal(conn: Connection, sid: str, idle_s: float, now: float) -> Principal | None:
    """The session's user, if the session exists, has not expired and was used within ``idle_s``."""
    row = conn.execute(text(
        "SELECT s.csrf, s.expires_at, s.last_seen, u.name, u.role FROM web_sessions s JOIN users u "
        "ON u.name = s.user_name WHERE s.id_hash = :i"), {"i": _sha(sid)}).mappings().first()
    if row is None or row["expires_at"] <= now or now - row["last_seen"] > idle_s:
        return None
    if now - row["last_seen"] > 30:
        conn.execute(text("UPDATE web_sessions SET last_seen = :t WHERE id_hash = :i"), {"t": now, "i": _sha(sid)})
    return Principal(row["name"], row["role"], "session", csrf=row["csrf"])


def end_session(conn: Connection, sid: str) -> None:
    conn.execute(text("DELETE FROM web_sessions WHERE id_hash = :i"), {"i": _sha(sid)})


def end_sessions(conn: Connection, user: str) -> None:
    conn.execute(text("DELETE FROM web_sessions WHERE user_name = :u"), {"u": user})
