"""``weightwarden-collector outputs``: where alert notifications go (add, list, remove, migrate).

Parsers are added by :func:`~console.add_commands`; exit codes as the rest of the CLI.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING

from weightwarden.collector.cli.opening import fail as _fail
from weightwarden.collector.cli.opening import open_store
from weightwarden.collector.cli.opening import operator as _operator
from weightwarden.jsontypes import JsonObject

if TYPE_CHECKING:
    from weightwarden.collector.store.database import Store


def _store(url: str) -> Store:
    return open_store(url, write=True)


def _read(path: str, what: str) -> str:
    try:
        with Path(path).open(encoding="utf-8") as fh:
            return fh.read().strip() if what in ("secret", "password") else fh.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read {what} file {path}: {getattr(exc, 'strerror', None) or exc}") from None


def cmd_outputs_add(args: argparse.Namespace) -> int:
    from weightwarden.collector.outputs.base import OutputConfigError
    from weightwarden.collector.outputs.outbox import add_output
    from weightwarden.collector.outputs.receivers import configure
    from weightwarden.collector.outputs.vault import SecretBox
    from weightwarden.collector.store.audit import record
    from weightwarden.collector.web.auth import AuthError, check_name

    options: JsonObject = {}
    try:
        check_name(args.name)
        for flag, option, what in ((args.secret_file, "secret", "secret"), (args.password_file, "password", "password"),
                                   (args.ca, "ca_pem", "CA"), (args.cert, "cert_pem", "certificate"),
                                   (args.key, "key_pem", "key")):
            if flag:
                options[option] = _read(flag, what)
        if args.format:
            options["format"] = args.format
        if args.allow_local:
            options["allow_local"] = True
        store = _store(args.db)
        spec = configure(args.name, args.url, options, SecretBox.for_db(args.db), local_ok=True, audit=args.audit)
    except (AuthError, OutputConfigError, ValueError) as exc:
        return _fail(str(exc), 2)
    now = time.time()
    with store.tx() as conn:
        add_output(conn, spec, now)
        record(conn, user=_operator(), action="output_add", target=args.name, via="cli", source="cli", now=now,
               detail=f"{spec.shown()['url']}{' (may reach this host)' if spec.allow_local else ''}"
                      f"{' (with the audit trail)' if spec.audit else ''}")
    print(f"output {args.name} -> {spec.shown()['url']} (notifications from now on"
          f"{'; secrets stored encrypted: ' + ', '.join(sorted(spec.secrets)) if spec.secrets else ''})")
    return 0


def cmd_outputs_list(args: argparse.Namespace) -> int:
    from weightwarden.collector.outputs.outbox import delivery_counts, outputs
    from weightwarden.textsafe import visible

    with _store(args.db).tx() as conn:
        stored, counts = outputs(conn), delivery_counts(conn)
    rows: list[JsonObject] = []
    for o in stored:
        shown = o.shown()
        shown["deliveries"] = {c["state"]: c["count"] for c in counts if c["output"] == o.name}
        rows.append(shown)
    if args.json:
        print(json.dumps(rows))
        return 0
    for row in rows:
        note = "  (stored by an older collector: outputs migrate)" if row["legacy"] else ""
        print(f"{visible(row['name']):<16} {visible(row['url']):<50} {json.dumps(row['deliveries'])}{note}")
    return 0


def cmd_outputs_remove(args: argparse.Namespace) -> int:
    from weightwarden.collector.outputs.outbox import remove_output
    from weightwarden.collector.store.audit import record

    now = time.time()
    with _store(args.db).tx() as conn:
        if not remove_output(conn, args.name):
            return _fail(f"no output {args.name!r}")
        record(conn, user=_operator(), action="output_remove", target=args.name, via="cli", source="cli", now=now)
    print(f"output {args.name} removed")
    return 0


def cmd_outputs_migrate(args: argparse.Namespace) -> int:
    """Plan (what each legacy output names), or, with --apply NAME, rewrite those outputs."""
    from weightwarden.collector.outputs.migrate import migrate, plan
    from weightwarden.collector.outputs.vault import SecretBox
    from weightwarden.textsafe import visible

    store = _store(args.db)
    if not args.apply:
        steps = plan(store)
        if args.json:
            print(json.dumps(steps))
            return 0
        if not steps:
            print("nothing to migrate")
        for step in steps:
            reads = ", ".join(f"{k} from {visible(v)}" for k, v in step["reads"].items()) or "no file"
            print(f"{visible(step['name'])}: {visible(step['url'])}; would read {reads}"
                  + "".join(f"; {n}" for n in step["notes"]))
        if steps:
            print("check each file is what the output should use, then: outputs migrate --apply NAME ...")
        return 0
    results = migrate(store, SecretBox.for_db(args.db), set(args.apply), set(args.allow_local), _operator(),
                      time.time())
    if args.json:
        print(json.dumps(results))
    else:
        for r in results:
            print(f"{visible(r['name'])}: {r['result']}")
    return 1 if any(not r["ok"] for r in results) else 0
