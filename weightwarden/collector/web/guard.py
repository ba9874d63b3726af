"""Who is asking, and may they: Bearer tokens and console sessions, roles, CSRF; bad input is a 400.

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
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response

from weightwarden import logs
from weightwarden.collector.store import audit
from weightwarden.collector.store.database import Store
from weightwarden.collector.web import auth

COOKIE = "ww_session"
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
MAX_BODY = 256 * 1024


@dataclass
class Settings:
    session_ttl_s: float = 8 * 3600.0
    session_idle_s: float = 30 * 60.0
    tls: bool = False
    metrics_requires_token: bool = False


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
            doc = json.loads(self.body, parse_constant=_no_constant)
        except (ValueError, RecursionError):
            raise BadRequest("the body is not JSON (NaN and Infinity are not JSON either)") from None
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

    @property
    def address(self) -> str:
        return client_address(self.request)

    @property
    def via(self) -> str:
        """How the request came: console (a page), api:token or api:session."""
        if self.request.url.path.startswith("/api/"):
            return f"api:{self.principal.via if self.principal else 'anonymous'}"
        return "console"

    def audit(self, conn: Any, action: str, target: str | None = None, detail: str | None = None,
              outcome: str = "ok") -> None:
        """Record what this request's user did, from where and how."""
        audit.record(conn, user=self.user.name, action=action, target=target, detail=detail, outcome=outcome,
                     via=self.via, source=self.address, now=self.now)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def text_field(body: dict[str, Any], key: str, *, required: bool = False, limit: int = 4000) -> str | None:
    """A string field of a JSON body: absent or null is None (or an error if required); anything else
    that is not a string is an error naming the field."""
    value = body.get(key)
    if value is None:
        if required:
            raise BadRequest(f"{key!r} is required")
        return None
    if not isinstance(value, str):
        raise BadRequest(f"{key!r} must be a string")
    if len(value) > limit:
        raise BadRequest(f"{key!r} is too long (at most {limit} characters)")
    return value


def finite(value: float, what: str) -> float:
    if not math.isfinite(value):
        raise BadRequest(f"{what} must be a finite number")
    return value


class BadRequest(ValueError):
    """A request that cannot be served as sent (400); the message says why."""


def _user_errors() -> tuple[type[Exception], ...]:
    from weightwarden.collector.outputs.base import OutputConfigError
    from weightwarden.collector.web.queries import QueryError
    from weightwarden.collector.web.settings_store import SettingsError
    from weightwarden.collector.web.triage import TriageError

    return (BadRequest, auth.AuthError, TriageError, QueryError, OutputConfigError, SettingsError)


USER_ERRORS = _user_errors()


def _client(request: Request) -> str:
    return request.client.host if request.client else "?"


class TooMany(Exception):
    """Too many refused credentials from this address: it backs off (429)."""


def authenticate(request: Request, store: Store, settings: Settings, now: float) -> auth.Principal | None:
    """The principal of a Bearer token or a session cookie. A Bearer token that opens nothing is counted
    against the address and audited; while the address backs off, such requests are refused (TooMany)."""
    header = request.headers.get("authorization", "")
    with store.tx() as conn:
        if header.lower().startswith("bearer "):
            principal = auth.token_principal(conn, header[7:].strip(), now)
        else:
            sid = request.cookies.get(COOKIE)
            return auth.session_principal(conn, sid, settings.session_idle_s, now) if sid else None
    if principal is None and auth.token_refused(store, _client(request), now, "api:token") > 0:
        raise TooMany("too many refused tokens from this address: wait and try again")
    return principal


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
                try:
                    principal = authenticate(request, store, settings, now)
                except TooMany as exc:
                    return _refuse(page, 429, str(exc), request)
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
                except auth.Busy as exc:
                    return _refuse(page, 503, str(exc), request)
                except USER_ERRORS as exc:
                    return _refuse(page, 400, str(exc), request)
                except Exception as exc:  # noqa: BLE001 - a bug: said plainly, logged, never a traceback to the client
                    logs.get("collector.serve").error("request_failed", path=request.url.path,
                                                      error=f"{type(exc).__name__}: {exc}"[:300])
                    return _refuse(page, 500, "internal error (logged)", request)
            return await run_in_threadpool(run)
        endpoint.__name__ = handler.__name__
        return endpoint
    return wrap


def client_address(request: Request) -> str:
    return _client(request)
