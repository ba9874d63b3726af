"""Who is asking, and may they: Bearer tokens and console sessions, roles, CSRF, login throttling.

Every endpoint is wrapped by :func:`guarded`. The wrapper reads the body on
the event loop, then does all database work in a thread (SQLAlchemy is
synchronous), so a slow query never stalls other requests.

CSRF: a Bearer token is never sent by a browser on its own, so token requests
need nothing more. A console session rides on a cookie, so every state-changing
request with it must carry the session's CSRF token (form field ``csrf`` or
header ``X-CSRF-Token``), and its Origin, when sent, must be this server. The
cookie is also SameSite=Strict, HttpOnly, and Secure under TLS.
"""

from __future__ import annotations

import hmac
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response

from weightwarden.collector.web import auth
from weightwarden.collector.store.database import Store

COOKIE = "ww_session"
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
MAX_BODY = 256 * 1024


@dataclass
class Settings:
    session_ttl_s: float = 8 * 3600.0
    session_idle_s: float = 30 * 60.0
    tls: bool = False
    metrics_requires_token: bool = False
    per_address_failures: int = 50  # failed logins per address per window, across all accounts
    per_address_window_s: float = 300.0


@dataclass
class Ctx:
    """One request, as a handler sees it (in a worker thread)."""

    request: Request
    store: Store
    settings: Settings
    principal: auth.Principal | None
    body: bytes
    now: float = field(default_factory=time.time)

    def json(self) -> dict[str, Any]:
        if not self.body:
            return {}
        try:
            doc = json.loads(self.body)
        except ValueError:
            raise BadRequest("the body is not JSON") from None
        if not isinstance(doc, dict):
            raise BadRequest("the body must be a JSON object")
        return doc

    def form(self) -> dict[str, str]:
        return {k: v[-1] for k, v in parse_qs(self.body.decode("utf-8", "replace"), keep_blank_values=True).items()}

    def args(self) -> dict[str, str]:
        return dict(self.request.query_params)

    @property
    def user(self) -> auth.Principal:
        assert self.principal is not None
        return self.principal


class BadRequest(ValueError):
    """A request that cannot be served as sent (400); the message says why."""


def _user_errors() -> tuple[type[Exception], ...]:
    from weightwarden.collector.outputs.receivers import OutputConfigError
    from weightwarden.collector.web.triage import TriageError
    from weightwarden.collector.web.queries import QueryError
    from weightwarden.collector.web.settings_store import SettingsError

    return (BadRequest, auth.AuthError, TriageError, QueryError, OutputConfigError, SettingsError)


USER_ERRORS = _user_errors()


def _client(request: Request) -> str:
    return request.client.host if request.client else "?"


def authenticate(request: Request, store: Store, settings: Settings, now: float) -> auth.Principal | None:
    header = request.headers.get("authorization", "")
    with store.tx() as conn:
        if header.lower().startswith("bearer "):
            return auth.token_principal(conn, header[7:].strip(), now)
        sid = request.cookies.get(COOKIE)
        if sid:
            return auth.session_principal(conn, sid, settings.session_idle_s, now)
    return None


def csrf_ok(ctx: Ctx) -> bool:
    p = ctx.principal
    if p is None or p.via != "session" or ctx.request.method in SAFE_METHODS:
        return True
    origin = ctx.request.headers.get("origin")
    if origin and origin != "null":
        host = ctx.request.headers.get("host", "")
        if urlsplit(origin).netloc != host:
            return False
    sent = ctx.request.headers.get("x-csrf-token") or ""
    if not sent and ctx.request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
        sent = ctx.form().get("csrf", "")
    return bool(sent) and p.csrf is not None and hmac.compare_digest(sent, p.csrf)


def _refuse(page: bool, status: int, message: str, request: Request) -> Response:
    if page and status == 401:
        return RedirectResponse(f"/login?next={request.url.path}", status_code=303)
    if page:
        from weightwarden.collector.web.render import error_page

        return error_page(status, message)
    return JSONResponse({"error": message}, status_code=status)


Handler = Callable[[Ctx], Response]


def guarded(permission: str | None, page: bool = False,
            session_csrf: bool = True) -> Callable[[Handler], Callable[[Request], Awaitable[Response]]]:
    """Wrap a handler: authenticate, check the role's permission, check CSRF, then run it in a thread.

    ``permission`` None: anyone (the login page); "read", "triage" or "admin" otherwise.
    ``session_csrf`` False only for the login form, which has a CSRF check of its own.
    """
    def wrap(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            body = b""
            if request.method not in SAFE_METHODS:
                body = await request.body()
                if len(body) > MAX_BODY:
                    return _refuse(page, 413, "request body too large", request)
            store: Store = request.app.state.store

            def run() -> Response:
                settings: Settings = request.app.state.live.get()
                now = time.time()
                principal = authenticate(request, store, settings, now)
                ctx = Ctx(request, store, settings, principal, body, now)
                if permission is not None:
                    if principal is None:
                        return _refuse(page, 401, "authentication required: a Bearer token or a console session",
                                       request)
                    if not principal.may(permission):
                        return _refuse(page, 403, f"{principal.name} ({principal.role}) may not do this: it needs "
                                       f"the {permission!r} permission", request)
                if session_csrf and not csrf_ok(ctx):
                    return _refuse(page, 403, "missing or wrong CSRF token: reload the page and try again", request)
                try:
                    return handler(ctx)
                except USER_ERRORS as exc:
                    return _refuse(page, 400, str(exc), request)
            return await run_in_threadpool(run)
        endpoint.__name__ = handler.__name__
        return endpoint
    return wrap


class LoginThrottle:
    """Failed logins per client address in a sliding window (the per-account lock lives in the database)."""

    def __init__(self, limit: int, window_s: float) -> None:
        self.limit, self.window_s = limit, window_s
        self.failures: dict[str, list[float]] = {}

    def blocked(self, address: str, now: float) -> bool:
        recent = [t for t in self.failures.get(address, []) if now - t < self.window_s]
        self.failures[address] = recent
        if len(self.failures) > 10_000:  # bound memory under a spray from many addresses
            self.failures = {a: ts for a, ts in self.failures.items() if ts}
        return len(recent) >= self.limit

    def failed(self, address: str, now: float) -> None:
        self.failures.setdefault(address, []).append(now)


def client_address(request: Request) -> str:
    return _client(request)
