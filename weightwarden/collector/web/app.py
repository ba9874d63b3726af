"""The ASGI application: pages, API, /metrics and static files, with security headers on every response.

Starlette on uvicorn: a small, well-kept ASGI stack (the base FastAPI builds
on) with TLS in the server itself, so ``serve --tls-cert/--tls-key`` needs no
proxy; handlers run their (synchronous) database work in a thread pool.
"""

from __future__ import annotations

import json
import time
from typing import Any

from sqlalchemy import text
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from weightwarden.collector.store.database import Store
from weightwarden.collector.web import api, metrics, pages, settings_store
from weightwarden.collector.web.guard import Ctx, Settings, authenticate, guarded
from weightwarden.collector.web.render import STATIC

# Everything from this server, nothing from anywhere else: the console works air-gapped, and
# an injected script or stylesheet from elsewhere would not load.
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")


class SecurityHeaders:
    def __init__(self, app: ASGIApp, tls: bool) -> None:
        self.app, self.tls = app, tls

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        static = scope.get("path", "").startswith("/static/")

        async def add(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers += [(b"content-security-policy", CSP.encode()), (b"x-content-type-options", b"nosniff"),
                            (b"referrer-policy", b"no-referrer"), (b"x-frame-options", b"DENY"),
                            (b"cross-origin-opener-policy", b"same-origin")]
                if not static:
                    headers.append((b"cache-control", b"no-store"))
                if self.tls:
                    headers.append((b"strict-transport-security", b"max-age=31536000"))
                message["headers"] = headers
            await send(message)
        await self.app(scope, receive, add)


class LiveSettings:
    """Start-up settings, overlaid every few seconds with what an admin set in the database."""

    def __init__(self, store: Store, base: Settings) -> None:
        self.store, self.base = store, base
        self.current, self.read_at = base, 0.0

    def get(self) -> Settings:
        if time.monotonic() - self.read_at > 5:
            with self.store.tx() as conn:
                db = settings_store.read(conn)
            self.current = Settings(**{**self.base.__dict__,
                                       "metrics_requires_token": self.base.metrics_requires_token or
                                       bool(db["metrics_requires_token"]),
                                       "session_idle_s": float(db["session_idle_minutes"]) * 60})
            self.read_at = time.monotonic()
        return self.current


@guarded(None)
def metrics_endpoint(ctx: Ctx) -> Response:
    if ctx.settings.metrics_requires_token and ctx.principal is None:
        return PlainTextResponse("authentication required: a Bearer token\n", status_code=401)
    return PlainTextResponse(metrics.render(ctx.store), media_type="text/plain; version=0.0.4; charset=utf-8")


async def health(_request: Request) -> Response:
    return PlainTextResponse("ok\n")


def _database_answers(store: Store) -> str | None:
    try:
        with store.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as exc:  # noqa: BLE001 - any failure means: not ready, and why
        return str(exc).splitlines()[0][:200] if str(exc) else repr(exc)[:200]
    return None


async def ready(request: Request) -> Response:
    """Ready while the database answers (a load balancer stops sending people to a console that cannot)."""
    error = await run_in_threadpool(_database_answers, request.app.state.store)
    body = {"status": "ok", "detail": ""} if error is None else {"status": "database", "detail": error}
    return Response(json.dumps(body) + "\n", status_code=200 if error is None else 503,
                    media_type="application/json", headers={"Cache-Control": "no-store"})


def create_app(store: Store, settings: Settings | None = None) -> Starlette:
    settings = settings or Settings()
    routes: list[Any] = [*pages.routes, *api.routes, Route("/metrics", metrics_endpoint), Route("/healthz", health),
                         Route("/readyz", ready),
                         Mount("/static", app=StaticFiles(directory=str(STATIC)), name="static")]
    app = Starlette(routes=routes)
    app.state.store = store
    app.state.live = LiveSettings(store, settings)
    app.add_middleware(SecurityHeaders, tls=settings.tls)
    return app


__all__ = ["authenticate", "create_app"]
