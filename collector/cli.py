"""weightwarden-collector: run the collector, and work the alerts.

Exit codes: 0 success; 1 runtime failure or not found (stated on stderr); 2 bad usage.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

from weightwarden import logs

from weightwarden.collector import __version__

EXAMPLES = """examples:
  weightwarden-collector run --broker mqtt://127.0.0.1:1883 --db sqlite:////var/lib/weightwarden/collector.db
  weightwarden-collector run --broker mqtts://broker:8883?ca=/etc/ca.pem --db postgresql://ww@db/ww --shared-group collectors
  weightwarden-collector alerts list --json --db sqlite:////var/lib/weightwarden/collector.db
  weightwarden-collector alerts show 3f2a9c1d0b7e4a55
  weightwarden-collector alerts ack 3f2a9c1d0b7e4a55 --by alice
  weightwarden-collector hosts
  weightwarden-collector serve --db sqlite:////var/lib/ww/collector.db --listen 0.0.0.0:8443 --tls-cert c.pem --tls-key k.pem
"""
DEFAULT_DB = "sqlite:////var/lib/weightwarden/collector.db"


def _db_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--db", default=os.environ.get("WEIGHTWARDEN_DB", DEFAULT_DB),
                   help="sqlite:///PATH or postgresql://USER@HOST/DB (default: $WEIGHTWARDEN_DB or %(default)s)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="weightwarden-collector",
        description="Central service: ingest agent events, correlate transfers with weight reads, raise alerts.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"weightwarden-collector {__version__}")
    parser.add_argument("--log-level", choices=sorted(logs.LEVELS), default="info",
                        help="least severe log lines written to stderr (default: info)")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="subscribe to the agents' events and raise alerts", epilog=EXAMPLES,
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    run.add_argument("--broker", required=True, help="mqtt://HOST:PORT or mqtts://HOST:PORT")
    _db_arg(run)
    run.add_argument("--shared-group", default=None,
                     help="join an MQTT v5 shared subscription group to spread load over several collectors")
    run.add_argument("--retention", default="30d", help="keep events this long (default %(default)s)")
    run.add_argument("--silent-after", default="90s", help="alert when an agent is quiet this long")
    run.add_argument("--client-id", default=None)
    run.add_argument("--tuning", metavar="FILE", default=None,
                     help="detection settings (YAML: ratios, windows, allowed_remote_prefixes); see docs/alerts.md")
    run.set_defaults(func=cmd_run)

    alerts = sub.add_parser("alerts", help="list, show, acknowledge and resolve alerts")
    asub = alerts.add_subparsers(dest="alerts_command", required=True)
    lst = asub.add_parser("list", help="alerts, most severe first")
    _db_arg(lst)
    lst.add_argument("--json", action="store_true")
    lst.add_argument("--state", choices=("open", "acknowledged", "resolved"))
    lst.add_argument("--severity", choices=("low", "medium", "high", "critical"), help="at least this severe")
    lst.add_argument("--host")
    lst.set_defaults(func=cmd_alerts_list)
    show = asub.add_parser("show", help="one alert with its explanation and evidence")
    show.add_argument("alert", help="alert id or key")
    _db_arg(show)
    show.add_argument("--json", action="store_true")
    show.set_defaults(func=cmd_alerts_show)
    for verb, state in (("ack", "acknowledged"), ("resolve", "resolved")):
        p = asub.add_parser(verb, help=f"mark an alert {state}")
        p.add_argument("alert", help="alert id or key")
        p.add_argument("--by", default=getpass.getuser(), help="who (default: you)")
        p.add_argument("--comment", help="why (kept in the alert's audit trail)")
        _db_arg(p)
        p.add_argument("--json", action="store_true")
        p.set_defaults(func=cmd_alerts_state, state=state)

    hosts = sub.add_parser("hosts", help="every agent: last seen, policy and rules in force, egress now")
    _db_arg(hosts)
    hosts.add_argument("--json", action="store_true")
    hosts.set_defaults(func=cmd_hosts)

    stats = sub.add_parser("stats", help="ingest counters: stored, duplicates, rejected by reason")
    _db_arg(stats)
    stats.add_argument("--json", action="store_true")
    stats.set_defaults(func=cmd_stats)

    from weightwarden.collector.console_cli import add_commands

    add_commands(sub, _db_arg)  # serve, users, tokens, outputs
    return parser


def _store(url: str) -> Any:
    from weightwarden.collector.store import Store

    return Store(url)


def cmd_run(args: argparse.Namespace) -> int:
    from weightwarden.mqtt import MqttSettings
    from weightwarden.units import parse_duration
    from weightwarden.mqtt import MqttURLError
    from weightwarden.collector.detect.common import Tuning, load_tuning
    from weightwarden.collector.pipeline import Pipeline
    from weightwarden.collector.service import CollectorService, ServiceConfig

    try:
        broker = MqttSettings.from_url(args.broker)
        retention = parse_duration(args.retention)
        silent = parse_duration(args.silent_after)
        tune = load_tuning(args.tuning) if args.tuning else Tuning()
        tune.silent_after_s = silent
    except (MqttURLError, ValueError) as exc:
        print(f"weightwarden-collector: {exc}", file=sys.stderr)
        return 2
    try:
        store = _store(args.db)
    except Exception as exc:  # noqa: BLE001 - any database error at start is reported plainly
        print(f"weightwarden-collector: cannot open database {args.db}: {exc}", file=sys.stderr)
        return 1
    service = CollectorService(ServiceConfig(broker, args.shared_group, retention, client_id=args.client_id),
                               Pipeline(store, tune))
    return asyncio.run(service.run())


def _when(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else "-"


def cmd_alerts_list(args: argparse.Namespace) -> int:
    alerts = _store(args.db).alerts(args.state, args.host, args.severity)
    if args.json:
        print(json.dumps(alerts, default=str))
        return 0
    if not alerts:
        print("No alerts.")
        return 0
    print(f"{'ID':<17} {'SEVERITY':<9} {'STATE':<13} {'HOST':<16} {'LAST':<20} TITLE")
    for a in alerts:
        print(f"{a['id']:<17} {a['severity']:<9} {a['state']:<13} {a['host'][:16]:<16} {_when(a['last_ts']):<20} "
              f"{a['title']}")
    return 0


def cmd_alerts_show(args: argparse.Namespace) -> int:
    from weightwarden.collector.triage import audit

    store = _store(args.db)
    alert = store.alert(args.alert)
    if alert is None:
        print(f"weightwarden-collector: no alert {args.alert!r}", file=sys.stderr)
        return 1
    with store.tx() as conn:
        alert["audit"] = audit(conn, alert["id"])
    if args.json:
        print(json.dumps(alert, default=str))
        return 0
    ev = alert["evidence"]
    lines = [f"{alert['severity'].upper()}  {alert['title']}", f"id {alert['id']}  key {alert['key']}  "
             f"state {alert['state']}  seen {alert['count']}x  {_when(alert['first_ts'])} .. {_when(alert['last_ts'])}",
             "", alert["explanation"], ""]
    if ev.get("process"):
        lines.append(f"process      {ev['process']}")
    for key in ("files", "destinations", "bytes_read", "bytes_sent", "projected_seconds_for_rest"):
        if ev.get(key) not in (None, []):
            lines.append(f"{key:<12} {ev[key]}")
    for item in ev.get("timeline", [])[:30]:
        lines.append(f"  {_when(item['ts'])}  {item['what']}")
    if alert.get("acked_by"):
        lines.append(f"acknowledged by {alert['acked_by']} at {_when(alert['acked_at'])}")
    if alert.get("resolved_by"):
        lines.append(f"resolved by {alert['resolved_by']} at {_when(alert['resolved_at'])}")
    for a in alert["audit"]:
        lines.append(f"  {_when(a['ts'])}  {a['user']} {a['action']}{': ' + a['comment'] if a['comment'] else ''}")
    print("\n".join(lines))
    return 0


def cmd_alerts_state(args: argparse.Namespace) -> int:
    from weightwarden.collector.triage import TriageError, act

    store = _store(args.db)
    try:
        with store.tx() as conn:  # audited like the console's ack, with --by as the user
            act(conn, args.alert, "ack" if args.state == "acknowledged" else "resolve", args.by, time.time(),
                comment=args.comment, via="cli")
    except TriageError as exc:
        print(f"weightwarden-collector: {exc}", file=sys.stderr)
        return 1
    alert = store.alert(args.alert)
    print(json.dumps(alert, default=str) if args.json else f"{alert['id']} {args.state} by {args.by}")
    return 0


def cmd_hosts(args: argparse.Namespace) -> int:
    hosts = _store(args.db).hosts()
    if args.json:
        print(json.dumps(hosts, default=str))
        return 0
    if not hosts:
        print("No agent has reported yet.")
        return 0
    from weightwarden.units import format_rate, format_size

    print(f"{'HOST':<20} {'STATUS':<8} {'LAST SEEN':<20} {'POLICY':<20} {'RULES':<6} {'EGRESS NOW':>12} {'WEIGHTS':>9}")
    for h in hosts:
        print(f"{h['host'][:20]:<20} {h['status'] or '?':<8} {_when(h['last_seen']):<20} {(h['policy'] or '-')[:20]:<20} "
              f"{'yes' if h['rules_in_force'] else 'no':<6} {format_rate(h['egress_bps'] or 0):>12} "
              f"{format_size(h['weights_bytes'] or 0):>9}")
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    store = _store(args.db)
    counts = {**store.counters(), "events": store.count("events"), "dead_letters": store.count("dead_letters"),
              "alerts": store.count("alerts"), "hosts": store.count("hosts")}
    print(json.dumps(counts) if args.json else "\n".join(f"{k:<22} {v}" for k, v in sorted(counts.items())))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logs.configure(args.log_level)
    return int(args.func(args))
