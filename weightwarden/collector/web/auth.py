"""Users, roles, passwords, API tokens and console sessions, kept in the collector's database.

Passwords are hashed with argon2id (memory-hard; argon2-cffi's defaults follow
RFC 9106's second recommended set). Tokens and session ids are 256-bit random
values: only their SHA-256 is stored, so a copy of the database opens nothing.
Twenty wrong passwords in a row lock an account for LOCK_S, and a locked
account's password is not even checked (no oracle, no CPU to burn).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from sqlalchemy import Connection, text

ROLES = ("viewer", "analyst", "admin")
# What each role may do; each role has everything of the ones before it.
PERMISSIONS = {"viewer": {"read"}, "analyst": {"read", "triage"}, "admin": {"read", "triage", "admin"}}
MAX_FAILED = 20
LOCK_S = 900.0
MIN_PASSWORD = 8
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")
TOKEN_PREFIX = "wwt"

_hasher = PasswordHasher()
# Verified against when the user does not exist, so an unknown name costs what a wrong password costs.
_DUMMY = _hasher.hash(secrets.token_hex(16))


class AuthError(ValueError):
    """A user or token request that cannot be done; the message says why."""


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
    locked_until: float | None = None
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
    return bool(res.rowcount)


def set_role(conn: Connection, name: str, role: str) -> bool:
    check_role(role)
    return bool(conn.execute(text("UPDATE users SET role = :r WHERE name = :n"), {"r": role, "n": name}).rowcount)


def unlock(conn: Connection, name: str) -> bool:
    return bool(conn.execute(text("UPDATE users SET failed_logins = 0, locked_until = NULL WHERE name = :n"),
                             {"n": name}).rowcount)


def remove_user(conn: Connection, name: str, now: float) -> bool:
    end_sessions(conn, name)
    conn.execute(text("UPDATE api_tokens SET revoked_at = :t WHERE user_name = :n AND revoked_at IS NULL"),
                 {"t": now, "n": name})
    return bool(conn.execute(text("DELETE FROM users WHERE name = :n"), {"n": name}).rowcount)


def users(conn: Connection) -> list[dict[str, Any]]:
    rows = conn.execute(text("SELECT name, role, created_at, failed_logins, locked_until, last_login FROM users "
                             "ORDER BY name")).mappings()
    return [dict(r) for r in rows]


def login(conn: Connection, name: str, password: str, now: float) -> LoginResult:
    row = conn.execute(text("SELECT name, role, password_hash, failed_logins, locked_until FROM users WHERE name = :n"),
                       {"n": name}).mappings().first()
    if row is None:
        try:
            _hasher.verify(_DUMMY, password)
        except VerificationError:
            pass
        return LoginResult(None, reason="unknown user or wrong password")
    if row["locked_until"] is not None and row["locked_until"] > now:
        return LoginResult(None, locked_until=float(row["locked_until"]),
                           reason="too many wrong passwords: the account is locked for a while")
    try:
        _hasher.verify(row["password_hash"], password)
    except (VerifyMismatchError, InvalidHashError, VerificationError):
        failed = int(row["failed_logins"] or 0) + 1
        locked = now + LOCK_S if failed >= MAX_FAILED else None
        conn.execute(text("UPDATE users SET failed_logins = :f, locked_until = :l WHERE name = :n"),
                     {"f": 0 if locked else failed, "l": locked, "n": name})
        if locked:
            return LoginResult(None, locked_until=locked,
                               reason="too many wrong passwords: the account is locked for a while")
        return LoginResult(None, reason="unknown user or wrong password")
    fields: dict[str, Any] = {"n": name, "t": now}
    rehash = ""
    if _hasher.check_needs_rehash(row["password_hash"]):
        rehash, fields["h"] = ", password_hash = :h", _hasher.hash(password)
    conn.execute(text(f"UPDATE users SET failed_logins = 0, locked_until = NULL, last_login = :t{rehash} "
                      "WHERE name = :n"), fields)
    return LoginResult(Principal(row["name"], row["role"], "password"))


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


def tokens(conn: Connection) -> list[dict[str, Any]]:
    rows = conn.execute(text("SELECT id, user_name AS user, label, created_at, expires_at, last_used, revoked_at "
                             "FROM api_tokens ORDER BY created_at")).mappings()
    return [dict(r) for r in rows]


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
