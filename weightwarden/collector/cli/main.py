"""weightwarden-collector: run the collector, and work the alerts.

Exit codes: 0 success; 1 runtime failure or not found (stated on stderr, one line); 2 bad usage.

Each subcommand is one ``register_*`` function (its arguments) and one ``cmd_*`` function (what it
does); add a command by adding both and listing the register function in ``COMMANDS``. Commands
that only read open the database read-only (``open_store``): they never create a file or migrate,
and a database they cannot use is one line on stderr and exit 1.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import sys
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from weightwarden import logs
from weightwarden.collector import __version__
from weightwarden.collector.cli.opening import Subcommands
from weightwarden.textsafe import visible

if TYPE_CHECKING:
    from weightwarden.collector.store.database import Store

EXAMPLES = """examples:
  weightwarden-collector run --broker mqtt://127.0.0.1:1883 --db sqlite:////var/lib/weightwarden-collector/collector.db
  weightwarden-collector run --broker mqtts://broker:8883?ca=/etc/ca.pem --db postgresql://ww@db/ww --shared-group collectors
  weightwarden-collector alerts list --json --db sqlite:////var/lib/weightwarden-collector/collector.db
  weightwarden-collector alerts show 3f2a9c1d0b7e4a55
  weightwarden-collector alerts ack 3f2a9c1d0b7e4a55 --by alice
  weightwarden-collector hosts
  weightwarden-collector db upgrade --db postgresql://ww@db/ww
  weightwarden-collector serve --db sqlite:////var/lib/ww/collector.db --listen 0.0.0.0:8443 --tls-cert c.pem --tls-key k.pem
  weightwarden-collector policy keygen /etc/weightwarden/fleet-2024
  weightwarden-collector policy publish policy.yaml --key fleet-2024.key --hosts 'gpu-*' --broker mqtts://broker:8883
  weightwarden-collector export --host gpu-01 --since 24h > gpu-01.jsonl
"""


class Fail(Exception):
    """A command's failure, stated in one line on stderr (exit 1)."""


def _db_arg(p: argparse.ArgumentParser) -> None:
    from weightwarden.collector.store.schema import DEFAULT_DB, default_db_url

    p.add_argument("--db", default=default_db_url(),
                   help=f"sqlite:///PATH or postgresql://USER@HOST/DB (default: $WEIGHTWARDEN_DB or {DEFAULT_DB}, "
                        "the systemd unit's)")


def open_store(url: str, *, write: bool = False) -> Store:
    """See :func:`opening.open_store` (imported late: `--help` does not load SQLAlchemy)."""
    from weightwarden.collector.cli.opening import open_store as open_

    return open_(url, write=write)


def _sub(sub: Subcommands, name: str, help_: str, func: Callable[[argparse.Namespace], int],
         db: bool = True, json_flag: bool = True) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = sub.add_parser(name, help=help_, description=help_, epilog=EXAMPLES,
                                                formatter_class=argparse.RawDescriptionHelpFormatter)
    if db:
        _db_arg(p)
    if json_flag:
        p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=func)
    return p


# -- run ------------------------------------------------------------------------


def register_run(sub: Subcommands) -> None:
    run = _sub(sub, "run", "subscribe to the agents' events and raise alerts", cmd_run, json_flag=False)
    run.add_argument("--broker", required=True, help="mqtt://HOST:PORT or mqtts://HOST:PORT")
    run.add_argument("--shared-group", default=None,
                     help="join an MQTT v5 shared subscription group to spread load over several collectors")
    run.add_argument("--retention", default="30d",
                     help="keep events, weight reads and dead letters this long (default %(default)s)")
    run.add_argument("--raw-egress-retention", default="1h",
                     help="keep raw egress samples this long, then per-minute totals (default %(default)s, "
                          "at least 10m)")
    run.add_argument("--egress-retention", default="8d",
                     help="keep per-minute egress totals this long; never less than the detections look back "
                          "(default %(default)s)")
    run.add_argument("--queue-max-bytes", default="32MiB",
                     help="messages held in memory before reading from the broker pauses (default %(default)s)")
    run.add_argument("--batch-seconds", type=_positive_seconds, default=0.5,
                     help="size each stored batch to take about this long at the recent cost per event: an "
                          "incident's events wait for the batch in hand (default %(default)s)")
    run.add_argument("--silent-after", default=None,
                     help="alert when an agent is quiet this long (default: three of its own heartbeat intervals, "
                          "15s until they are known)")
    run.add_argument("--client-id", default=None,
                     help="the broker session's client id (default: weightwarden-collector-HOSTNAME- and 16 random "
                          "hex digits, made once and kept in the database: not guessable)")
    run.add_argument("--tuning", metavar="FILE", default=None,
                     help="detection settings (YAML: ratios, windows, allowed_remote_prefixes); see docs/alerts.md")
    run.add_argument("--health-listen", metavar="HOST:PORT", default=None,
                     help="serve /healthz (the collector works) and /readyz (subscribed, database answers) "
                          "for probes, e.g. 0.0.0.0:9465")


def cmd_run(args: argparse.Namespace) -> int:
    from weightwarden.collector.detect.common import Tuning, load_tuning
    from weightwarden.collector.ingest.bounded import limit_malloc_arenas
    from weightwarden.collector.ingest.pipeline import Pipeline
    from weightwarden.collector.ingest.service import CollectorService, ServiceConfig
    from weightwarden.collector.store.database import Store
    from weightwarden.collector.store.retention import MIN_RAW_EGRESS_S, Retention
    from weightwarden.health import split_listen
    from weightwarden.mqtt import MqttSettings, MqttURLError
    from weightwarden.units import parse_duration, parse_size

    try:
        broker = MqttSettings.from_url(args.broker)
        tune = load_tuning(args.tuning) if args.tuning else Tuning()
        if args.silent_after is not None:
            tune.silent_after_s = parse_duration(args.silent_after)
        raw = parse_duration(args.raw_egress_retention)
        if raw < MIN_RAW_EGRESS_S:
            raise ValueError(f"--raw-egress-retention must be at least {MIN_RAW_EGRESS_S:.0f}s (agents replay "
                             "recent events after a reconnect; their ids must still be known)")
        # Per-minute egress outlives every window a detection looks back over.
        looks_back = tune.looks_back_s() + 3600
        retention = Retention(events_s=parse_duration(args.retention), raw_egress_s=raw,
                              egress_s=max(parse_duration(args.egress_retention), looks_back))
        queue_bytes = parse_size(args.queue_max_bytes)
        if args.health_listen:
            split_listen(args.health_listen, "--health-listen")
    except (MqttURLError, ValueError) as exc:
        print(f"weightwarden-collector: {exc}", file=sys.stderr)
        return 2
    limit_malloc_arenas()  # before any thread: memory stays within the bound the README states
    store = Store(args.db)  # creates and migrates: the only command besides `db upgrade` that does
    try:
        service = CollectorService(ServiceConfig(broker, args.shared_group, retention, client_id=args.client_id,
                                                 queue_max_bytes=queue_bytes, health_listen=args.health_listen,
                                                 batch_target_s=args.batch_seconds),
                                   Pipeline(store, tune))
    except OSError as exc:  # the health port is taken
        print(f"weightwarden-collector: --health-listen {args.health_listen}: {exc.strerror}", file=sys.stderr)
        return 1
    return asyncio.run(service.run())


# -- alerts ---------------------------------------------------------------------


def register_alerts(sub: Subcommands) -> None:
    alerts = sub.add_parser("alerts", help="list, show, acknowledge and resolve alerts")
    asub = alerts.add_subparsers(dest="alerts_command", required=True)
    lst = _sub(asub, "list", "alerts, most severe first", cmd_alerts_list)
    lst.add_argument("--state", choices=("open", "acknowledged", "resolved"))
    lst.add_argument("--severity", choices=("low", "medium", "high", "critical"), help="at least this severe")
    lst.add_argument("--host")
    show = _sub(asub, "show", "one alert with its explanation and evidence", cmd_alerts_show)
    show.add_argument("alert", help="alert id or key")
    for verb, state in (("ack", "acknowledged"), ("resolve", "resolved")):
        p = _sub(asub, verb, f"mark an alert {state}", cmd_alerts_state)
        p.add_argument("alert", help="alert id or key")
        p.add_argument("--by", default=getpass.getuser(), help="who (default: you)")
        p.add_argument("--comment", help="why (kept in the alert's audit trail)")
        p.set_defaults(state=state)


def _when(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else "-"


def cmd_alerts_list(args: argparse.Namespace) -> int:
    alerts = open_store(args.db).alerts(args.state, args.host, args.severity)
    if args.json:
        print(json.dumps(alerts, default=str))
        return 0
    if not alerts:
        print("No alerts.")
        return 0
    # What the hosts chose (process names, paths) is shown with its control characters as escapes
    # (\x1b, \u202e): nothing an agent sends can steer this terminal. --json is ASCII-escaped JSON.
    print(f"{'ID':<17} {'SEVERITY':<9} {'STATE':<13} {'HOST':<16} {'LAST':<20} TITLE")
    for a in alerts:
        print(f"{a['id']:<17} {a['severity']:<9} {a['state']:<13} {visible(a['host'][:16]):<16} "
              f"{_when(a['last_ts']):<20} {visible(a['title'])}")
    return 0


def cmd_alerts_show(args: argparse.Namespace) -> int:
    from weightwarden.collector.web.triage import audit

    store = open_store(args.db)
    alert = store.alert(args.alert)
    if alert is None:
        raise Fail(f"no alert {args.alert!r}")
    with store.tx() as conn:
        alert["audit"] = audit(conn, alert["id"])
    if args.json:
        print(json.dumps(alert, default=str))
        return 0
    ev = alert["evidence"]
    lines = [f"{alert['severity'].upper()}  {visible(alert['title'])}", f"id {alert['id']}  key {visible(alert['key'])}  "
             f"state {alert['state']}  seen {alert['count']}x  {_when(alert['first_ts'])} .. {_when(alert['last_ts'])}",
             "", visible(alert["explanation"], keep_lines=True), ""]
    if ev.get("process"):
        lines.append(f"process      {visible(ev['process'])}")
    for key in ("files", "destinations", "bytes_read", "bytes_sent", "projected_seconds_for_rest"):
        if ev.get(key) not in (None, []):
            lines.append(f"{key:<12} {visible(ev[key])}")
    for item in ev.get("timeline", [])[:30]:
        lines.append(f"  {_when(item['ts'])}  {visible(item['what'])}")
    if alert.get("acked_by"):
        lines.append(f"acknowledged by {visible(alert['acked_by'])} at {_when(alert['acked_at'])}")
    if alert.get("resolved_by"):
        lines.append(f"resolved by {visible(alert['resolved_by'])} at {_when(alert['resolved_at'])}")
    for a in alert["audit"]:
        comment = ": " + visible(a["comment"]) if a["comment"] else ""
        lines.append(f"  {_when(a['ts'])}  {visible(a['user'])} {a['action']}{comment}")
    print("\n".join(lines))
    return 0


def cmd_alerts_state(args: argparse.Namespace) -> int:
    from weightwarden.collector.web.triage import TriageError, act

    store = open_store(args.db, write=True)
    try:
        with store.tx() as conn:  # audited like the console's ack, with --by as the user
            act(conn, args.alert, "ack" if args.state == "acknowledged" else "resolve", args.by, time.time(),
                comment=args.comment, via="cli", source="cli")
    except TriageError as exc:
        raise Fail(str(exc)) from None
    alert = store.alert(args.alert)
    assert alert is not None
    print(json.dumps(alert, default=str) if args.json else f"{alert['id']} {args.state} by {args.by}")
    return 0


# -- hosts, stats ------------------------------------------------------------------


def register_hosts(sub: Subcommands) -> None:
    _sub(sub, "hosts", "every agent: last seen, policy and rules in force, egress now", cmd_hosts)


def cmd_hosts(args: argparse.Namespace) -> int:
    hosts = open_store(args.db).hosts()
    if args.json:
        print(json.dumps(hosts, default=str))
        return 0
    if not hosts:
        print("No agent has reported yet.")
        return 0
    from weightwarden.units import format_rate, format_size

    print(f"{'HOST':<20} {'STATUS':<8} {'LAST SEEN':<20} {'POLICY':<28} {'RULES':<6} {'EGRESS NOW':>12} {'WEIGHTS':>9}")
    for h in hosts:
        policy = h["policy"] or "-"
        if h.get("policy_version") is not None:
            policy += f" v{h['policy_version']}"  # a signed central policy, and its version
        print(f"{visible(h['host'][:20]):<20} {h['status'] or '?':<8} {_when(h['last_seen']):<20} "
              f"{visible(policy[:28]):<28} "
              f"{'yes' if h['rules_in_force'] else 'no':<6} {format_rate(h['egress_bps'] or 0):>12} "
              f"{format_size(h['weights_bytes'] or 0):>9}")
    return 0


def register_stats(sub: Subcommands) -> None:
    _sub(sub, "stats", "ingest counters (stored, duplicates, rejected by reason) and each collector's backlog",
         cmd_stats)


def cmd_stats(args: argparse.Namespace) -> int:
    store = open_store(args.db)
    counts: dict[str, int] = {**store.counters(), **{t: store.count(t) for t in (
        "events", "dead_letters", "alerts", "hosts", "egress", "egress_minute")}}
    collectors = store.collectors()
    if args.json:
        print(json.dumps({**counts, "collectors": collectors}, default=str))
        return 0
    print("\n".join(f"{k:<22} {v}" for k, v in sorted(counts.items())))
    for c in collectors:
        age = time.time() - (c["updated_at"] or 0)
        print(f"collector {c['client_id']}: {c['ingest_rate'] or 0:.0f} messages/s, {c['backlog'] or 0} held "
              f"({c['backlog_s'] or 0:.1f}s behind){', not reading' if c['paused'] else ''}, reported {age:.0f}s ago")
    return 0


# -- db ---------------------------------------------------------------------------


def register_db(sub: Subcommands) -> None:
    db = sub.add_parser("db", help="the database's schema: its version, and upgrading it")
    dsub = db.add_subparsers(dest="db_command", required=True)
    _sub(dsub, "upgrade", "create the database, or migrate it to this collector's schema", cmd_db_upgrade)
    _sub(dsub, "version", "the schema version of the database and of this collector", cmd_db_version)


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    from weightwarden.collector.store.database import private_files
    from weightwarden.collector.store.schema import make_engine, migrate

    private_files(args.db, create=True)  # 0600 before SQLite first writes it
    before, after = migrate(make_engine(args.db, read_only=False, create=True), args.db)
    print(json.dumps({"before": before, "after": after}) if args.json else
          f"schema version {before} -> {after}" if before != after else f"schema is up to date (version {after})")
    return 0


def cmd_db_version(args: argparse.Namespace) -> int:
    from weightwarden.collector.store.schema import SCHEMA_VERSION, connect_error, current_version, make_engine

    engine = make_engine(args.db, read_only=True, create=False)
    try:
        with engine.connect() as conn:
            found = current_version(conn)
    except Exception as exc:  # noqa: BLE001 - stated in one line
        raise connect_error(args.db, exc) from None
    print(json.dumps({"database": found, "collector": SCHEMA_VERSION}) if args.json else
          f"database schema {found}, this collector's {SCHEMA_VERSION}")
    return 0


# -- main ---------------------------------------------------------------------------

def register_console(sub: Subcommands) -> None:
    from weightwarden.collector.cli.console import add_commands

    add_commands(sub, _db_arg)  # serve, users, tokens, outputs


def register_policy(sub: Subcommands) -> None:
    from weightwarden.collector.cli.policy import add_commands

    add_commands(sub, _db_arg)  # policy publish/unpublish/keygen, export


COMMANDS: list[Callable[[Subcommands], None]] = [register_run, register_alerts, register_hosts, register_stats, register_db,
                                         register_console, register_policy]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="weightwarden-collector",
        description="Central service: ingest agent events, correlate transfers with weight reads, raise alerts.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"weightwarden-collector {__version__}")
    parser.add_argument("--log-level", choices=sorted(logs.LEVELS), default="info",
                        help="least severe log lines written to stderr (default: info)")
    sub = parser.add_subparsers(dest="command", required=True)
    for register in COMMANDS:
        register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from sqlalchemy.exc import SQLAlchemyError

    from weightwarden.collector.store.schema import StoreError, connect_error

    args = build_parser().parse_args(argv)
    logs.configure(args.log_level)
    try:
        return int(args.func(args))
    except (Fail, StoreError) as exc:
        print(f"weightwarden-collector: {exc}", file=sys.stderr)
        return 1
    except SQLAlchemyError as exc:  # the database went away, or refused, mid-command
        print(f"weightwarden-collector: {connect_error(getattr(args, 'db', ''), exc)}", file=sys.stderr)
        return 1


def _positive_seconds(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number of seconds") from None
    if not 0 < seconds <= 60:
        raise argparse.ArgumentTypeError(f"{value!r}: between 0 and 60 seconds")
    return seconds
