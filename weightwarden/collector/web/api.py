"""The JSON API under /api/v1/: everything the console shows and does.

Authentication: ``Authorization: Bearer wwt_...`` (``weightwarden-collector
tokens create``) or a console session cookie plus ``X-CSRF-Token`` for writes.
Errors are ``{"error": "..."}`` with 400, 401, 403, 404 or 409.
"""

from __future__ import annotations

import calendar
import time
from typing import Any

from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from weightwarden.collector.outputs import outbox
from weightwarden.collector.outputs.receivers import configure
from weightwarden.collector.outputs.vault import SecretBox
from weightwarden.collector.store import audit
from weightwarden.collector.web import auth, queries, settings_store, triage
from weightwarden.collector.web.guard import BadRequest, Ctx, finite, guarded, text_field
from weightwarden.units import parse_duration


def json_response(doc: Any, status: int = 200) -> JSONResponse:
    return JSONResponse(_jsonable(doc), status_code=status)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)  # Decimal from PostgreSQL, and the like


def parse_time(value: str | None, now: float) -> float | None:
    """Unix seconds, an ISO date-time (UTC), or a duration back from now (``24h``)."""
    if value is None or not value.strip():
        return None
    value = value.strip()
    try:
        return finite(float(value), f"time {value!r}")
    except ValueError as exc:
        if isinstance(exc, BadRequest):
            raise
    for fmt in ("%Y-%m-%dT%H:%M:%S", "%Y-%m-%dT%H:%M", "%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M", "%Y-%m-%d"):
        try:
            return float(calendar.timegm(time.strptime(value.rstrip("Z"), fmt)))
        except ValueError:
            continue
    try:
        return finite(now - parse_duration(value), f"time {value!r}")
    except (ValueError, OverflowError) as exc:
        if isinstance(exc, BadRequest):
            raise
        raise BadRequest(f"time {value!r}: Unix seconds, YYYY-MM-DDTHH:MM (UTC) or a duration such as 24h") from None


MAX_INT = 10**12  # beyond any real offset or count; SQLite's integers stop at 2^63


def _int(value: str | None, default: int, what: str) -> int:
    if value is None or value == "":
        return default
    try:
        number = int(value)
    except ValueError:
        raise BadRequest(f"{what} must be a whole number") from None
    if not -MAX_INT <= number <= MAX_INT:
        raise BadRequest(f"{what} must be at most {MAX_INT}")
    return number


def alert_filter(args: dict[str, str], now: float, default_limit: int = 100) -> queries.AlertFilter:
    states = tuple(s for s in (args.get("state") or "").split(",") if s)
    return queries.AlertFilter(
        states=states, min_severity=args.get("severity") or None, host=args.get("host") or None,
        kind=args.get("kind") or None, since=parse_time(args.get("since"), now), until=parse_time(args.get("until"), now),
        q=(args.get("q") or "").strip() or None, assignee=args.get("assignee") or None,
        limit=_int(args.get("limit"), default_limit, "limit"), offset=_int(args.get("offset"), 0, "offset"))


def not_found(what: str) -> JSONResponse:
    return JSONResponse({"error": f"no {what}"}, status_code=404)


# -- alerts ----------------------------------------------------------------


@guarded("read")
def alerts(ctx: Ctx) -> Response:
    f = alert_filter(ctx.args(), ctx.now)
    with ctx.store.tx() as conn:
        return json_response(queries.list_alerts(conn, f))


@guarded("read")
def alert(ctx: Ctx) -> Response:
    with ctx.store.tx() as conn:
        doc = queries.alert_detail(conn, ctx.request.path_params["id"])
    return json_response(doc) if doc else not_found(f"alert {ctx.request.path_params['id']!r}")


@guarded("triage")
def alert_action(ctx: Ctx) -> Response:
    body = ctx.json()
    action = ctx.request.path_params["action"]
    ref = ctx.request.path_params["id"]
    comment, assignee = text_field(body, "comment"), text_field(body, "assignee", limit=200)
    with ctx.store.tx() as conn:
        if triage.find(conn, ref) is None:
            return not_found(f"alert {ref!r}")
        record = triage.act(conn, ref, action, ctx.user.name, ctx.now, comment=comment, assignee=assignee,
                            via=ctx.via, source=ctx.address)
        doc = queries.alert_detail(conn, ref)
    return json_response({"done": record, "alert": doc})


# -- hosts -------------------------------------------------------------------


@guarded("read")
def hosts(ctx: Ctx) -> Response:
    with ctx.store.tx() as conn:
        return json_response(queries.hosts(conn))


@guarded("read")
def host(ctx: Ctx) -> Response:
    with ctx.store.tx() as conn:
        doc = queries.host_detail(conn, ctx.request.path_params["host"])
    return json_response(doc) if doc else not_found(f"host {ctx.request.path_params['host']!r}")


@guarded("read")
def host_egress(ctx: Ctx) -> Response:
    args = ctx.args()
    until = parse_time(args.get("until"), ctx.now) or ctx.now
    since = parse_time(args.get("since"), ctx.now) or until - 3600
    with ctx.store.tx() as conn:
        return json_response(queries.egress_series(conn, ctx.request.path_params["host"], since, until,
                                                   _int(args.get("buckets"), 60, "buckets")))


# -- who am I, users, tokens (admin) ---------------------------------------------------


@guarded("read")
def me(ctx: Ctx) -> Response:
    p = ctx.user
    return json_response({"name": p.name, "role": p.role, "via": p.via,
                          "permissions": sorted(auth.PERMISSIONS[p.role])})


@guarded("admin")
def users(ctx: Ctx) -> Response:
    with ctx.store.tx() as conn:
        if ctx.request.method == "POST":
            body = ctx.json()
            name = text_field(body, "name", required=True, limit=200) or ""
            role = text_field(body, "role", required=True, limit=50) or ""
            auth.add_user(conn, name, role, text_field(body, "password", required=True) or "", ctx.now)
            ctx.audit(conn, "user_add", name, f"role {role}")
            return json_response({"created": name}, 201)
        return json_response(auth.users(conn, ctx.now))


@guarded("admin")
def user(ctx: Ctx) -> Response:
    name = ctx.request.path_params["name"]
    with ctx.store.tx() as conn:
        if ctx.request.method == "DELETE":
            if name == ctx.user.name:
                raise BadRequest("you cannot remove yourself")
            if not auth.remove_user(conn, name, ctx.now):
                return not_found(f"user {name!r}")
            ctx.audit(conn, "user_remove", name)
            return json_response({"removed": name})
        body = ctx.json()
        role, password = text_field(body, "role", limit=50), text_field(body, "password")
        if not any(u["name"] == name for u in auth.users(conn, ctx.now)):
            return not_found(f"user {name!r}")
        if role:
            auth.set_role(conn, name, role)
            ctx.audit(conn, "user_role", name, f"role {role}")
        if password:
            auth.set_password(conn, name, password)
            ctx.audit(conn, "user_password", name)
        if body.get("unlock"):
            auth.unlock(conn, name)
            ctx.audit(conn, "user_unlock", name)
        return json_response({"updated": name})


@guarded("admin")
def api_tokens(ctx: Ctx) -> Response:
    with ctx.store.tx() as conn:
        if ctx.request.method == "POST":
            body = ctx.json()
            who = text_field(body, "user", required=True, limit=200) or ""
            label, expires = text_field(body, "label", limit=200), text_field(body, "expires", limit=50)
            try:
                until = finite(ctx.now + parse_duration(expires), "expires") if expires else None
            except (ValueError, OverflowError) as exc:
                raise BadRequest(f"expires: {exc}") from None
            token_id, token = auth.create_token(conn, who, label, until, ctx.now)
            ctx.audit(conn, "token_create", token_id, f"for {who}" + (f", label {label}" if label else ""))
            return json_response({"id": token_id, "token": token}, 201)
        return json_response(auth.tokens(conn))


@guarded("admin")
def api_token(ctx: Ctx) -> Response:
    tid = ctx.request.path_params["id"]
    with ctx.store.tx() as conn:
        if not auth.revoke_token(conn, tid, ctx.now):
            return not_found(f"token {tid!r}")
        ctx.audit(conn, "token_revoke", tid)
        return json_response({"revoked": tid})


# -- outputs, settings and the audit trail (admin) --------------------------------------------


@guarded("admin")
def outputs(ctx: Ctx) -> Response:
    with ctx.store.tx() as conn:
        if ctx.request.method == "POST":
            body = ctx.json()
            name = text_field(body, "name", required=True, limit=200) or ""
            url = text_field(body, "url", required=True) or ""
            options = body.get("options") or {}
            if not isinstance(options, dict):
                raise BadRequest("'options' must be an object")
            auth.check_name(name)
            spec = configure(name, url, options, SecretBox.for_db(ctx.store.url), audit=body.get("audit") is True)
            outbox.add_output(conn, spec, ctx.now)
            ctx.audit(conn, "output_add", name, str(spec.shown()["url"]))
            return json_response({"created": name}, 201)
        return json_response({"outputs": [o.shown() for o in outbox.outputs(conn)],
                              "deliveries": outbox.delivery_counts(conn)})


@guarded("admin")
def output(ctx: Ctx) -> Response:
    name = ctx.request.path_params["name"]
    with ctx.store.tx() as conn:
        if not outbox.remove_output(conn, name):
            return not_found(f"output {name!r}")
        ctx.audit(conn, "output_remove", name)
        return json_response({"removed": name})


@guarded("admin")
def settings(ctx: Ctx) -> Response:
    with ctx.store.tx() as conn:
        if ctx.request.method == "PUT":
            changes = ctx.json()
            before = settings_store.read(conn)
            settings_store.update(conn, changes)
            ctx.audit(conn, "settings_change", None, settings_store.describe(before, changes))
        return json_response(settings_store.read(conn))


@guarded("admin")
def audit_trail(ctx: Ctx) -> Response:
    """``GET /api/v1/audit?since=&until=&user=&action=&limit=100&offset=0``: newest first."""
    args = ctx.args()
    limit, offset = _int(args.get("limit"), 100, "limit"), _int(args.get("offset"), 0, "offset")
    if not 1 <= limit <= queries.MAX_LIMIT or offset < 0:
        raise BadRequest(f"limit must be 1..{queries.MAX_LIMIT} and offset >= 0")
    f = audit.AuditFilter(since=parse_time(args.get("since"), ctx.now), until=parse_time(args.get("until"), ctx.now),
                          user=args.get("user") or None, action=args.get("action") or None, limit=limit, offset=offset)
    with ctx.store.tx() as conn:
        return json_response(audit.entries(conn, f))


@guarded("read")
def stats(ctx: Ctx) -> Response:
    counts = ctx.store.counters()
    return json_response(counts)


routes = [
    Route("/api/v1/alerts", alerts),
    Route("/api/v1/alerts/{id}", alert),
    Route("/api/v1/alerts/{id}/{action}", alert_action, methods=["POST"]),
    Route("/api/v1/hosts", hosts),
    Route("/api/v1/hosts/{host}", host),
    Route("/api/v1/hosts/{host}/egress", host_egress),
    Route("/api/v1/me", me),
    Route("/api/v1/stats", stats),
    Route("/api/v1/users", users, methods=["GET", "POST"]),
    Route("/api/v1/users/{name}", user, methods=["POST", "DELETE"]),
    Route("/api/v1/tokens", api_tokens, methods=["GET", "POST"]),
    Route("/api/v1/tokens/{id}", api_token, methods=["DELETE"]),
    Route("/api/v1/outputs", outputs, methods=["GET", "POST"]),
    Route("/api/v1/outputs/{name}", output, methods=["DELETE"]),
    Route("/api/v1/settings", settings, methods=["GET", "PUT"]),
    Route("/api/v1/audit", audit_trail),
]
