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

from weightwarden.collector.web import auth
from weightwarden.collector.web import triage
from weightwarden.collector.outputs import outbox
from weightwarden.collector.outputs.receivers import check as check_output
from weightwarden.collector.web import queries, settings_store
from weightwarden.collector.web.guard import BadRequest, Ctx, guarded
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
        return float(value)
    except ValueError:
        pass
    for fmt in ("%Y-%m-%dT%H:%M:%S", "%Y-%m-%dT%H:%M", "%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M", "%Y-%m-%d"):
        try:
            return float(calendar.timegm(time.strptime(value.rstrip("Z"), fmt)))
        except ValueError:
            continue
    try:
        return now - parse_duration(value)
    except ValueError:
        raise BadRequest(f"time {value!r}: Unix seconds, YYYY-MM-DDTHH:MM (UTC) or a duration such as 24h") from None


def _int(value: str | None, default: int, what: str) -> int:
    if value in (None, ""):
        return default
    try:
        return int(value)
    except ValueError:
        raise BadRequest(f"{what} must be a whole number") from None


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
    with ctx.store.tx() as conn:
        if triage.find(conn, ref) is None:
            return not_found(f"alert {ref!r}")
        record = triage.act(conn, ref, action, ctx.user.name, ctx.now, comment=body.get("comment"),
                            assignee=body.get("assignee"), via=f"api:{ctx.user.via}")
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
            auth.add_user(conn, str(body.get("name", "")), str(body.get("role", "")), str(body.get("password", "")),
                          ctx.now)
            return json_response({"created": body.get("name")}, 201)
        return json_response(auth.users(conn))


@guarded("admin")
def user(ctx: Ctx) -> Response:
    name = ctx.request.path_params["name"]
    with ctx.store.tx() as conn:
        if ctx.request.method == "DELETE":
            if name == ctx.user.name:
                raise BadRequest("you cannot remove yourself")
            return json_response({"removed": name}) if auth.remove_user(conn, name, ctx.now) else not_found(f"user {name!r}")
        body = ctx.json()
        if not any(u["name"] == name for u in auth.users(conn)):
            return not_found(f"user {name!r}")
        if body.get("role"):
            auth.set_role(conn, name, str(body["role"]))
        if body.get("password"):
            auth.set_password(conn, name, str(body["password"]))
        if body.get("unlock"):
            auth.unlock(conn, name)
        return json_response({"updated": name})


@guarded("admin")
def api_tokens(ctx: Ctx) -> Response:
    with ctx.store.tx() as conn:
        if ctx.request.method == "POST":
            body = ctx.json()
            expires = body.get("expires")
            token_id, token = auth.create_token(conn, str(body.get("user", "")), body.get("label"),
                                                ctx.now + parse_duration(expires) if expires else None, ctx.now)
            return json_response({"id": token_id, "token": token}, 201)
        return json_response(auth.tokens(conn))


@guarded("admin")
def api_token(ctx: Ctx) -> Response:
    tid = ctx.request.path_params["id"]
    with ctx.store.tx() as conn:
        return json_response({"revoked": tid}) if auth.revoke_token(conn, tid, ctx.now) else not_found(f"token {tid!r}")


# -- outputs and settings (admin) --------------------------------------------------------


def redact(o: dict[str, Any]) -> dict[str, Any]:
    return {**o, "options": {k: ("***" if k == "secret" else v) for k, v in o["options"].items()}}


@guarded("admin")
def outputs(ctx: Ctx) -> Response:
    with ctx.store.tx() as conn:
        if ctx.request.method == "POST":
            body = ctx.json()
            name, url = str(body.get("name", "")), str(body.get("url", ""))
            auth.check_name(name)
            options = check_output(url, dict(body.get("options") or {}))
            outbox.add_output(conn, name, url, options, ctx.now)
            return json_response({"created": name}, 201)
        return json_response({"outputs": [redact(o) for o in outbox.outputs(conn)],
                              "deliveries": outbox.delivery_counts(conn)})


@guarded("admin")
def output(ctx: Ctx) -> Response:
    name = ctx.request.path_params["name"]
    with ctx.store.tx() as conn:
        return json_response({"removed": name}) if outbox.remove_output(conn, name) else not_found(f"output {name!r}")


@guarded("admin")
def settings(ctx: Ctx) -> Response:
    with ctx.store.tx() as conn:
        if ctx.request.method == "PUT":
            settings_store.update(conn, ctx.json())
        return json_response(settings_store.read(conn))


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
]
