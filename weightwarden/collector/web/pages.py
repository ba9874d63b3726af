"""The console's pages: login, alert queue, alert story, hosts, admin. Forms post back with a CSRF token.

Every page is rendered on the server from the same queries as the API, so
the console works without script; console.js only adds conveniences.
"""

from __future__ import annotations

import math
import secrets
from typing import Any
from urllib.parse import urlencode

from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from weightwarden.collector.outputs import outbox
from weightwarden.collector.outputs.receivers import configure
from weightwarden.collector.outputs.vault import SecretBox
from weightwarden.collector.store import audit
from weightwarden.collector.store.database import SEVERITY_RANK
from weightwarden.collector.web import auth, queries, settings_store, triage
from weightwarden.collector.web.api import alert_filter, parse_time
from weightwarden.collector.web.chart import egress_svg
from weightwarden.collector.web.guard import COOKIE, Ctx, guarded
from weightwarden.collector.web.render import page, svg
from weightwarden.units import format_duration

LOGIN_COOKIE = "ww_login"
KINDS = ["exfiltration", "staged_exfiltration", "chunked_exfiltration", "slow_exfiltration", "canary_read", "cap_hit",
         "budget_exhausted", "enforcement_drift", "enforcement_error", "threshold_crossed", "agent_silent",
         "sequence_gap", "events_dropped", "collector_session_taken_over", "backdated_events", "weights_relinked"]
RANGES = {"1h": 3600, "6h": 6 * 3600, "24h": 86400, "7d": 7 * 86400}


def _base(ctx: Ctx, **extra: Any) -> dict[str, Any]:
    p = ctx.principal
    return {"user": p, "csrf": p.csrf if p else None, "may_triage": bool(p and p.may("triage")),
            "may_admin": bool(p and p.may("admin")), **extra}


def _redirect(path: str) -> RedirectResponse:
    return RedirectResponse(path, status_code=303)


def _safe_next(value: str | None) -> str:
    # Only paths on this server: no open redirect through ?next=.
    return value if value and value.startswith("/") and not value.startswith("//") else "/"


# -- login ---------------------------------------------------------------------------


@guarded(None, page=True, session_csrf=False)
def login(ctx: Ctx) -> Response:
    nxt = _safe_next(ctx.args().get("next"))
    if ctx.request.method == "GET":
        token = secrets.token_urlsafe(18)
        resp: Response = page("login.html", user=None, login_csrf=token, next=nxt, error=None)
        resp.set_cookie(LOGIN_COOKIE, token, httponly=True, samesite="strict", secure=ctx.settings.tls, max_age=3600)
        return resp
    form = ctx.form()
    nxt = _safe_next(form.get("next"))
    sent, expected = form.get("login_csrf", ""), ctx.request.cookies.get(LOGIN_COOKIE, "")

    def again(message: str, status: int) -> Response:
        token = secrets.token_urlsafe(18)
        resp = page("login.html", status=status, user=None, login_csrf=token, next=nxt, error=message,
                    name=form.get("name", ""))
        resp.set_cookie(LOGIN_COOKIE, token, httponly=True, samesite="strict", secure=ctx.settings.tls, max_age=3600)
        return resp

    if not sent or not secrets.compare_digest(sent, expected):
        return again("The login form expired or came from elsewhere: try again.", 403)
    try:
        result = auth.login(ctx.store, form.get("name", ""), form.get("password", ""), ctx.address, ctx.now)
    except auth.Busy as exc:
        return again(f"{exc}.", 503)
    if result.principal is None:
        if result.refused_for:
            # The same words whether the account exists or not, and for any account from this address.
            resp = again(f"Too many failed logins for this name or from your address: try again in "
                         f"{format_duration(float(max(1, math.ceil(result.refused_for))))}.", 429)
            resp.headers["Retry-After"] = str(max(1, math.ceil(result.refused_for)))
            return resp
        return again("Unknown user or wrong password.", 401)
    with ctx.store.tx() as conn:
        sid, _csrf = auth.create_session(conn, result.principal.name, ctx.settings.session_ttl_s, ctx.now)
    resp = _redirect(nxt)
    resp.set_cookie(COOKIE, sid, httponly=True, samesite="strict", secure=ctx.settings.tls,
                    max_age=int(ctx.settings.session_ttl_s), path="/")
    resp.delete_cookie(LOGIN_COOKIE)
    return resp


@guarded("read", page=True)
def logout(ctx: Ctx) -> Response:
    sid = ctx.request.cookies.get(COOKIE)
    if sid:
        with ctx.store.tx() as conn:
            auth.end_session(conn, sid)
            ctx.audit(conn, "logout")
    resp = _redirect("/login")
    resp.delete_cookie(COOKIE, path="/")
    return resp


# -- alerts --------------------------------------------------------------------------------


@guarded("read", page=True)
def queue(ctx: Ctx) -> Response:
    args = ctx.args()
    if "state" not in args:
        args["state"] = "open,acknowledged"
    f = alert_filter(args, ctx.now, default_limit=50)
    with ctx.store.tx() as conn:
        rows = queries.list_alerts(conn, f)
        hosts = queries.facets(conn)["hosts"]
    nxt = {**args, "offset": str(f.offset + f.limit)} if len(rows) == f.limit else None
    prev = {**args, "offset": str(max(0, f.offset - f.limit))} if f.offset else None
    return page("alerts.html", **_base(ctx, alerts=rows, args=args, hosts=hosts, kinds=KINDS,
                                       severities=list(SEVERITY_RANK), states=queries.STATES,
                                       next_q=urlencode(nxt) if nxt else None, prev_q=urlencode(prev) if prev else None))


@guarded("read", page=True)
def alert_page(ctx: Ctx) -> Response:
    ref = ctx.request.path_params["id"]
    with ctx.store.tx() as conn:
        doc = queries.alert_detail(conn, ref)
        names = [u["name"] for u in auth.users(conn)] if ctx.user.may("triage") else []
    if doc is None:
        return page("error.html", status=404, status_code=404, message=f"No alert {ref!r}.", user=ctx.user)
    return page("alert.html", **_base(ctx, a=doc, s=doc["story"], ev=doc["evidence"], users=names,
                                      flash=ctx.args().get("done")))


@guarded("triage", page=True)
def alert_post(ctx: Ctx) -> Response:
    ref, action = ctx.request.path_params["id"], ctx.request.path_params["action"]
    form = ctx.form()
    with ctx.store.tx() as conn:
        if triage.find(conn, ref) is None:
            return page("error.html", status=404, status_code=404, message=f"No alert {ref!r}.", user=ctx.user)
        triage.act(conn, ref, action, ctx.user.name, ctx.now, comment=form.get("comment"),
                   assignee=form.get("assignee"), via="console", source=ctx.address)
    return _redirect(f"/alerts/{ref}?done={action}")


# -- hosts ---------------------------------------------------------------------------------


@guarded("read", page=True)
def hosts_page(ctx: Ctx) -> Response:
    with ctx.store.tx() as conn:
        rows = queries.hosts(conn)
    return page("hosts.html", **_base(ctx, hosts=rows, now=ctx.now))


@guarded("read", page=True)
def host_page(ctx: Ctx) -> Response:
    name = ctx.request.path_params["host"]
    args = ctx.args()
    window = args.get("range") or "1h"
    window = window if window in RANGES else "1h"
    until = parse_time(args.get("until"), ctx.now) or ctx.now
    since = until - RANGES[window]
    with ctx.store.tx() as conn:
        doc = queries.host_detail(conn, name)
        if doc is None:
            return page("error.html", status=404, status_code=404, message=f"No host {name!r}.", user=ctx.user)
        series = queries.egress_series(conn, name, since, until)
    return page("host.html", **_base(ctx, h=doc, chart=svg(egress_svg(series)), series=series, window=window,
                                     ranges=list(RANGES), now=ctx.now))


# -- admin ----------------------------------------------------------------------------------


def _admin(ctx: Ctx, conn: Any, new_token: str | None = None) -> Response:
    return page("admin.html", **_base(ctx, users=auth.users(conn, ctx.now), tokens=auth.tokens(conn),
                                      outputs=[o.shown() for o in outbox.outputs(conn)],
                                      deliveries=outbox.delivery_counts(conn), settings=settings_store.read(conn),
                                      roles=auth.ROLES, new_token=new_token, now=ctx.now, error=None,
                                      audit=audit.entries(conn, audit.AuditFilter(limit=100))))


@guarded("admin", page=True)
def admin_page(ctx: Ctx) -> Response:
    with ctx.store.tx() as conn:
        return _admin(ctx, conn)


@guarded("admin", page=True)
def admin_post(ctx: Ctx) -> Response:
    what = ctx.request.path_params["what"]
    form = ctx.form()
    name = form.get("name", "")
    new_token = None
    with ctx.store.tx() as conn:
        if what == "user-add":
            auth.add_user(conn, name, form.get("role", ""), form.get("password", ""), ctx.now)
            ctx.audit(conn, "user_add", name, f"role {form.get('role')}")
        elif what == "user-remove" and name != ctx.user.name:
            if auth.remove_user(conn, name, ctx.now):
                ctx.audit(conn, "user_remove", name)
        elif what == "user-unlock":
            if auth.unlock(conn, name):
                ctx.audit(conn, "user_unlock", name)
        elif what == "user-role":
            if auth.set_role(conn, name, form.get("role", "")):
                ctx.audit(conn, "user_role", name, f"role {form.get('role')}")
        elif what == "token-create":
            tid, new_token = auth.create_token(conn, form.get("user", ""), form.get("label") or None, None, ctx.now)
            ctx.audit(conn, "token_create", tid, f"for {form.get('user')}")
        elif what == "token-revoke":
            if auth.revoke_token(conn, form.get("id", ""), ctx.now):
                ctx.audit(conn, "token_revoke", form.get("id", ""))
        elif what == "output-add":
            options = {k: v for k, v in (("format", form.get("format")), ("secret", form.get("secret")),
                                         ("ca_pem", form.get("ca_pem"))) if v}
            auth.check_name(name)
            spec = configure(name, form.get("url", ""), options, SecretBox.for_db(ctx.store.url),
                             audit=form.get("audit") == "on")
            outbox.add_output(conn, spec, ctx.now)
            ctx.audit(conn, "output_add", name, str(spec.shown()["url"]))
        elif what == "output-remove":
            if outbox.remove_output(conn, name):
                ctx.audit(conn, "output_remove", name)
        elif what == "settings":
            idle = form.get("session_idle_minutes") or "30"
            changes = {"metrics_requires_token": form.get("metrics_requires_token") == "on",
                       "session_idle_minutes": int(idle) if idle.isdigit() and len(idle) < 6 else idle}
            before = settings_store.read(conn)
            settings_store.update(conn, changes)
            ctx.audit(conn, "settings_change", None, settings_store.describe(before, changes))
        if new_token is not None:
            return _admin(ctx, conn, new_token)  # shown once, on this response only
    return _redirect("/admin")


routes = [
    Route("/login", login, methods=["GET", "POST"]),
    Route("/logout", logout, methods=["POST"]),
    Route("/", queue),
    Route("/alerts/{id}", alert_page),
    Route("/alerts/{id}/{action}", alert_post, methods=["POST"]),
    Route("/hosts", hosts_page),
    Route("/hosts/{host}", host_page),
    Route("/admin", admin_page),
    Route("/admin/{what}", admin_post, methods=["POST"]),
]
