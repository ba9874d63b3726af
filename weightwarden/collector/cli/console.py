"""Subcommands of weightwarden-collector for the console: serve, users, tokens, outputs.

Added to the main parser by :func:`add_commands`; each is a function of its own.
Exit codes as the rest of the CLI: 0 success, 1 runtime failure or not found, 2 bad usage.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from weightwarden.collector.cli.opening import Subcommands, open_store
from weightwarden.collector.cli.opening import fail as _fail
from weightwarden.collector.cli.opening import operator as _operator
from weightwarden.collector.cli.outputs import (
    cmd_outputs_add,
    cmd_outputs_list,
    cmd_outputs_migrate,
    cmd_outputs_remove,
)

if TYPE_CHECKING:
    from weightwarden.collector.store.database import Store

EXAMPLES = """examples:
  weightwarden-collector users add alice --role analyst --db sqlite:////var/lib/weightwarden/collector.db < pw.txt
  weightwarden-collector tokens create alice --label siem --db ...        # the token is the last word printed
  weightwarden-collector serve --db ... --listen 0.0.0.0:8443 --tls-cert cert.pem --tls-key key.pem
  weightwarden-collector outputs add siem syslog+tls://siem.example:6514?format=cef --ca siem-ca.pem --audit --db ...
  weightwarden-collector outputs add soar https://soar.example/hooks/ww --secret-file hmac.key --db ...
  weightwarden-collector outputs add relay syslog+udp://127.0.0.1:514 --allow-local --db ...
  weightwarden-collector outputs migrate --db ...     # outputs stored by an older collector (docs/outputs.md)
"""


def add_commands(sub: Subcommands, db_arg: Callable[[argparse.ArgumentParser], None]) -> None:
    fmt = argparse.RawDescriptionHelpFormatter
    serve = sub.add_parser("serve", help="the security operations console and its JSON API", epilog=EXAMPLES,
                           formatter_class=fmt)
    db_arg(serve)
    serve.add_argument("--listen", default="127.0.0.1:8080", help="HOST:PORT (default %(default)s)")
    serve.add_argument("--tls-cert", help="PEM certificate (chain) to serve HTTPS with")
    serve.add_argument("--tls-key", help="PEM private key of --tls-cert")
    serve.add_argument("--session-ttl", default="8h", help="a console session's longest life (default %(default)s)")
    serve.add_argument("--metrics-auth", action="store_true", help="/metrics needs an API token too")
    serve.set_defaults(func=cmd_serve)

    users = sub.add_parser("users", help="console users and their roles (viewer, analyst, admin)", epilog=EXAMPLES,
                           formatter_class=fmt)
    usub = users.add_subparsers(dest="users_command", required=True)
    add = usub.add_parser("add", help="add a user; the password is read from stdin")
    add.add_argument("name")
    add.add_argument("--role", required=True, choices=("viewer", "analyst", "admin"))
    db_arg(add)
    add.set_defaults(func=cmd_users_add)
    passwd = usub.add_parser("passwd", help="set a user's password (read from stdin); ends their sessions")
    passwd.add_argument("name")
    db_arg(passwd)
    passwd.set_defaults(func=cmd_users_passwd)
    role = usub.add_parser("role", help="change a user's role")
    role.add_argument("name")
    role.add_argument("role", choices=("viewer", "analyst", "admin"))
    db_arg(role)
    role.set_defaults(func=cmd_users_role)
    for verb, helptext in (("unlock", "lift a lock left by wrong passwords"), ("remove", "remove a user and their tokens")):
        p = usub.add_parser(verb, help=helptext)
        p.add_argument("name")
        db_arg(p)
        p.set_defaults(func=cmd_users_simple, verb=verb)
    ulist = usub.add_parser("list", help="users, roles, locks")
    db_arg(ulist)
    ulist.add_argument("--json", action="store_true")
    ulist.set_defaults(func=cmd_users_list)

    tokens = sub.add_parser("tokens", help="API tokens (Bearer); only their hashes are stored", epilog=EXAMPLES,
                            formatter_class=fmt)
    tsub = tokens.add_subparsers(dest="tokens_command", required=True)
    create = tsub.add_parser("create", help="a new token for user NAME, printed once as the last word")
    create.add_argument("name", help="the user the token acts as (its role applies)")
    create.add_argument("--label", help="what the token is for")
    create.add_argument("--expires", help="lifetime, e.g. 90d (default: until revoked)")
    db_arg(create)
    create.set_defaults(func=cmd_tokens_create)
    tlist = tsub.add_parser("list", help="tokens (never the secrets)")
    db_arg(tlist)
    tlist.add_argument("--json", action="store_true")
    tlist.set_defaults(func=cmd_tokens_list)
    revoke = tsub.add_parser("revoke", help="revoke a token by id")
    revoke.add_argument("id")
    db_arg(revoke)
    revoke.set_defaults(func=cmd_tokens_revoke)

    outputs = sub.add_parser("outputs", help="where alert notifications go: syslog, webhook, MQTT", epilog=EXAMPLES,
                             formatter_class=fmt)
    osub = outputs.add_subparsers(dest="outputs_command", required=True)
    oadd = osub.add_parser("add", help="add (or replace) an output; its secrets are stored encrypted, shown never")
    oadd.add_argument("name")
    oadd.add_argument("url", help="syslog+udp|tcp|tls://HOST:PORT[?format=cef], http(s)://[USER@]HOST/..., "
                                  "mqtt(s)://[USER@]HOST:PORT")
    oadd.add_argument("--secret-file", help="webhook: file holding the HMAC-SHA256 key")
    oadd.add_argument("--password-file", help="webhook (HTTP Basic) or MQTT: file holding the output's own password "
                                              "(or user:password@ in the URL)")
    oadd.add_argument("--ca", help="TLS: CA certificate file to check the receiver with (its contents are stored)")
    oadd.add_argument("--cert", help="TLS: client certificate file (with --key)")
    oadd.add_argument("--key", help="TLS: the client certificate's private key file (stored encrypted)")
    oadd.add_argument("--format", choices=("json", "cef"), help="syslog: the message body (default json)")
    oadd.add_argument("--audit", action="store_true",
                      help="also send the audit trail (logins, administration, alert actions)")
    oadd.add_argument("--allow-local", action="store_true",
                      help="let it reach loopback, link-local, metadata or this host's own addresses (only here, on "
                           "the collector host; never over the API)")
    db_arg(oadd)
    oadd.set_defaults(func=cmd_outputs_add)
    olist = osub.add_parser("list", help="outputs and their deliveries")
    db_arg(olist)
    olist.add_argument("--json", action="store_true")
    olist.set_defaults(func=cmd_outputs_list)
    orm = osub.add_parser("remove", help="remove an output (its pending deliveries go with it)")
    orm.add_argument("name")
    db_arg(orm)
    orm.set_defaults(func=cmd_outputs_remove)
    omig = osub.add_parser("migrate", help="outputs an older collector stored (files named, secrets in clear): "
                                           "without --apply, what would be read and done; with it, done")
    omig.add_argument("--apply", action="append", default=[], metavar="NAME",
                      help="migrate this output (repeatable): the files it names are read now, by you")
    omig.add_argument("--allow-local", action="append", default=[], metavar="NAME",
                      help="this output may keep a loopback/link-local destination (repeatable)")
    db_arg(omig)
    omig.add_argument("--json", action="store_true")
    omig.set_defaults(func=cmd_outputs_migrate)


def _store(url: str) -> Store:
    # An existing database with this binary's schema, never created or migrated here (the
    # collector's `run` and `db upgrade` do that); a problem is one line and exit 1.
    return open_store(url, write=True)


def _read_password() -> str:
    if sys.stdin.isatty():
        import getpass

        return getpass.getpass("password: ")
    return sys.stdin.readline().rstrip("\r\n")


# -- serve ---------------------------------------------------------------------------


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from weightwarden import logs
    from weightwarden.collector.web.app import create_app
    from weightwarden.collector.web.guard import Settings
    from weightwarden.units import parse_duration

    logs.configure()
    host, sep, port = args.listen.rpartition(":")
    if not sep or not port.isdigit():
        return _fail(f"--listen {args.listen!r}: use HOST:PORT", 2)
    if bool(args.tls_cert) != bool(args.tls_key):
        return _fail("--tls-cert and --tls-key go together", 2)
    for path in (args.tls_cert, args.tls_key):
        if path:
            try:
                Path(path).open("rb").close()
            except OSError as exc:
                return _fail(f"cannot read {path}: {exc.strerror}", 2)
    try:
        ttl = parse_duration(args.session_ttl)
    except ValueError as exc:
        return _fail(str(exc), 2)
    try:
        store = _store(args.db)
    except Exception as exc:  # noqa: BLE001 - any database error at start is reported plainly
        return _fail(f"cannot open database {args.db}: {exc}")
    app = create_app(store, Settings(session_ttl_s=ttl, tls=bool(args.tls_cert), metrics_requires_token=args.metrics_auth))
    config = uvicorn.Config(app, host=host.strip("[]") or "0.0.0.0", port=int(port), ssl_certfile=args.tls_cert,
                            ssl_keyfile=args.tls_key, log_config=None, access_log=False, server_header=False,
                            proxy_headers=False)
    logs.get("collector.serve").info("console_listening", listen=args.listen, tls=bool(args.tls_cert))
    try:
        uvicorn.Server(config).run()
    except OSError as exc:
        return _fail(f"cannot listen on {args.listen}: {exc.strerror}")
    return 0


# -- users -----------------------------------------------------------------------------


def cmd_users_add(args: argparse.Namespace) -> int:
    from weightwarden.collector.store.audit import record
    from weightwarden.collector.web.auth import AuthError, add_user

    password = _read_password()
    now = time.time()
    try:
        with _store(args.db).tx() as conn:
            add_user(conn, args.name, args.role, password, now)
            record(conn, user=_operator(), action="user_add", target=args.name, detail=f"role {args.role}",
                   via="cli", source="cli", now=now)
    except AuthError as exc:
        return _fail(str(exc), 2 if "password" in str(exc) or "name" in str(exc) else 1)
    print(f"user {args.name} added ({args.role})")
    return 0


def cmd_users_passwd(args: argparse.Namespace) -> int:
    from weightwarden.collector.store.audit import record
    from weightwarden.collector.web.auth import AuthError, set_password

    password = _read_password()
    now = time.time()
    try:
        with _store(args.db).tx() as conn:
            found = set_password(conn, args.name, password)
            if found:
                record(conn, user=_operator(), action="user_password", target=args.name, via="cli", source="cli",
                       now=now)
    except AuthError as exc:
        return _fail(str(exc), 2)
    if not found:
        return _fail(f"no user {args.name!r}")
    print(f"password of {args.name} changed; their sessions ended")
    return 0


def cmd_users_role(args: argparse.Namespace) -> int:
    from weightwarden.collector.store.audit import record
    from weightwarden.collector.web.auth import set_role

    with _store(args.db).tx() as conn:
        if not set_role(conn, args.name, args.role):
            return _fail(f"no user {args.name!r}")
        record(conn, user=_operator(), action="user_role", target=args.name, detail=f"role {args.role}", via="cli",
               source="cli", now=time.time())
    print(f"{args.name} is now {args.role}")
    return 0


def cmd_users_simple(args: argparse.Namespace) -> int:
    from weightwarden.collector.store.audit import record
    from weightwarden.collector.web.auth import remove_user, unlock

    with _store(args.db).tx() as conn:
        found = unlock(conn, args.name) if args.verb == "unlock" else remove_user(conn, args.name, time.time())
        if found:
            record(conn, user=_operator(), action=f"user_{args.verb}", target=args.name, via="cli", source="cli",
                   now=time.time())
    if not found:
        return _fail(f"no user {args.name!r}")
    print(f"{args.name} {'unlocked' if args.verb == 'unlock' else 'removed'}")
    return 0


def cmd_users_list(args: argparse.Namespace) -> int:
    from weightwarden.collector.web.auth import users

    with _store(args.db).tx() as conn:
        rows = users(conn)
    if args.json:
        print(json.dumps(rows))
        return 0
    now = time.time()
    for u in rows:
        locked = " LOCKED" if u["locked_until"] and u["locked_until"] > now else ""
        print(f"{u['name']:<24} {u['role']:<8}{locked}")
    return 0


# -- tokens ------------------------------------------------------------------------------


def cmd_tokens_create(args: argparse.Namespace) -> int:
    from weightwarden.collector.web.auth import AuthError, create_token
    from weightwarden.units import parse_duration

    now = time.time()
    try:
        expires = now + parse_duration(args.expires) if args.expires else None
    except ValueError as exc:
        return _fail(str(exc), 2)
    from weightwarden.collector.store.audit import record

    try:
        with _store(args.db).tx() as conn:
            token_id, token = create_token(conn, args.name, args.label, expires, now)
            record(conn, user=_operator(), action="token_create", target=token_id,
                   detail=f"for {args.name}" + (f", label {args.label}" if args.label else ""), via="cli",
                   source="cli", now=now)
    except AuthError as exc:
        return _fail(str(exc))
    # The token is shown this once and is the last word of the output (scripts take it from there).
    print(f"token {token_id} for {args.name} (store it now, it is not shown again): {token}")
    return 0


def cmd_tokens_list(args: argparse.Namespace) -> int:
    from weightwarden.collector.web.auth import tokens

    with _store(args.db).tx() as conn:
        rows = tokens(conn)
    if args.json:
        print(json.dumps(rows))
        return 0
    for t in rows:
        state = "revoked" if t["revoked_at"] else "active"
        print(f"{t['id']:<14} {t['user']:<20} {state:<8} {t['label'] or ''}")
    return 0


def cmd_tokens_revoke(args: argparse.Namespace) -> int:
    from weightwarden.collector.store.audit import record
    from weightwarden.collector.web.auth import revoke_token

    with _store(args.db).tx() as conn:
        if not revoke_token(conn, args.id, time.time()):
            return _fail(f"no active token {args.id!r}")
        record(conn, user=_operator(), action="token_revoke", target=args.id, via="cli", source="cli", now=time.time())
    print(f"token {args.id} revoked")
    return 0
