"""Subcommands of weightwarden-collector for policies and simulation: policy publish/unpublish/keygen, export.

Added to the main parser by :func:`add_commands`; each is a function of its own.
Exit codes as the rest of the CLI: 0 success, 1 runtime failure or nothing found, 2 bad usage.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Callable

from weightwarden.collector.cli.opening import Subcommands

EXAMPLES = """examples:
  weightwarden-collector policy keygen /etc/weightwarden/fleet-2024
  weightwarden-collector policy publish policy.yaml --key fleet-2024.key --hosts 'gpu-*' --broker mqtts://broker:8883
  weightwarden-collector export --host gpu-01 --since 24h > gpu-01.jsonl
  weightwarden-agent policy simulate new-policy.yaml --samples gpu-01.jsonl
"""


def add_commands(sub: Subcommands, db_arg: Callable[[argparse.ArgumentParser], None]) -> None:
    _policy_parsers(sub)
    _export_parser(sub, db_arg)


# -- policy publish / keygen / unpublish ----------------------------------------------


def _policy_parsers(sub: Subcommands) -> None:
    pol = sub.add_parser("policy", help="publish signed policies to host groups; make signing keys",
                         epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    psub = pol.add_subparsers(dest="policy_command", required=True)
    pub = psub.add_parser("publish", help="sign a policy (Ed25519) and publish it, retained, to a host group",
                          epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    pub.add_argument("file", help="the policy (with its FILE.d/*.yaml drop-ins, merged)")
    pub.add_argument("--key", required=True, metavar="PRIVATE_KEY", help="Ed25519 private key (PEM or OpenSSH)")
    pub.add_argument("--hosts", required=True, metavar="GLOB", help="host group: a glob over host ids, e.g. 'gpu-*'")
    pub.add_argument("--broker", required=True, help="mqtt://HOST:PORT or mqtts://HOST:PORT")
    pub.add_argument("--version", type=int, default=None,
                     help="must be newer than what the hosts run (default: now, in Unix seconds)")
    pub.add_argument("--no-drop-ins", action="store_true")
    pub.add_argument("--json", action="store_true")
    pub.set_defaults(func=cmd_policy_publish)
    unpub = psub.add_parser("unpublish", help="clear a host group's retained policy (hosts keep the one in force)")
    unpub.add_argument("--hosts", required=True, metavar="GLOB")
    unpub.add_argument("--broker", required=True)
    unpub.set_defaults(func=cmd_policy_unpublish)
    keygen = psub.add_parser("keygen", help="make an Ed25519 key pair: PREFIX.key (0600) and PREFIX.pub")
    keygen.add_argument("prefix")
    keygen.set_defaults(func=cmd_policy_keygen)


def cmd_policy_publish(args: argparse.Namespace) -> int:
    from weightwarden.agent.policy.loader import PolicyError
    from weightwarden.collector.cli.publish import policy_text, publish
    from weightwarden.mqtt import MqttSettings, MqttURLError
    from weightwarden.policysign import EnvelopeError, KeyFileError, load_private_key, sign

    try:
        text, name = policy_text(args.file, drop_ins=not args.no_drop_ins)
    except PolicyError as exc:
        for problem in exc.problems:
            print(problem.render(args.file), file=sys.stderr)
        print(f"weightwarden-collector: {args.file} fails policy check: not published", file=sys.stderr)
        return 1
    try:
        key = load_private_key(args.key)
        settings = MqttSettings.from_url(args.broker)
        envelope = sign(text, args.hosts, args.version if args.version is not None else int(time.time()), key)
    except (KeyFileError, MqttURLError, EnvelopeError) as exc:
        print(f"weightwarden-collector: {exc}", file=sys.stderr)
        return 2
    try:
        topic = asyncio.run(publish(settings, envelope))
    except Exception as exc:  # noqa: BLE001 - aiomqtt and socket errors alike: said plainly
        print(f"weightwarden-collector: cannot publish to {settings.host}:{settings.port}: {exc}", file=sys.stderr)
        return 1
    out = {"policy": name, "hosts": envelope.hosts, "version": envelope.version, "key_id": envelope.key_id,
           "topic": topic}
    print(json.dumps(out) if args.json else
          f"published {name!r} version {envelope.version} to hosts {envelope.hosts!r} (key {envelope.key_id}) "
          f"on {topic}, retained")
    return 0


def cmd_policy_unpublish(args: argparse.Namespace) -> int:
    from weightwarden.collector.cli.publish import unpublish
    from weightwarden.mqtt import MqttSettings, MqttURLError
    from weightwarden.policysign import EnvelopeError

    try:
        topic = asyncio.run(unpublish(MqttSettings.from_url(args.broker), args.hosts))
    except (MqttURLError, EnvelopeError) as exc:
        print(f"weightwarden-collector: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001
        print(f"weightwarden-collector: cannot reach the broker: {exc}", file=sys.stderr)
        return 1
    print(f"cleared {topic}")
    return 0


def cmd_policy_keygen(args: argparse.Namespace) -> int:
    from pathlib import Path

    from weightwarden.policysign import generate_key

    try:
        private, public, kid = generate_key(Path(args.prefix))
    except FileExistsError:
        print(f"weightwarden-collector: {args.prefix}.key exists: not overwritten", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"weightwarden-collector: {exc}", file=sys.stderr)
        return 1
    print(f"private key {private} (keep it off the GPU hosts), public key {public} (give it to the agents: "
          f"--trust-key), key id {kid}")
    return 0


# -- export ---------------------------------------------------------------------------

EXPORT_TYPES = ("egress_sample", "heartbeat", "agent_started")


def _export_parser(sub: Subcommands, db_arg: Callable[[argparse.ArgumentParser], None]) -> None:
    exp = sub.add_parser("export", help="a host's stored events as JSON lines (e.g. for 'weightwarden-agent policy "
                         "simulate')", epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    exp.add_argument("--host", required=True)
    exp.add_argument("--since", required=True, metavar="T",
                     help="a duration ago (24h, 7d), a date or time (2024-06-01, 2024-06-01T12:00), or Unix seconds")
    exp.add_argument("--until", default=None, metavar="T", help="same forms; default: now")
    exp.add_argument("--type", action="append", default=None, dest="types", metavar="TYPE",
                     help=f"event types (repeat; default: {', '.join(EXPORT_TYPES)})")
    db_arg(exp)
    exp.set_defaults(func=cmd_export)


def parse_when(text: str, now: float) -> float:
    """A point in time: '24h' (ago), Unix seconds, or an ISO date or time (local)."""
    from datetime import datetime

    from weightwarden.units import parse_duration

    try:
        return now - parse_duration(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        pass
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        pass
    raise ValueError(f"not a time: {text!r} (e.g. 24h, 2024-06-01, 2024-06-01T12:00, 1717200000)")


def cmd_export(args: argparse.Namespace) -> int:
    now = time.time()
    try:
        since = parse_when(args.since, now)
        until = parse_when(args.until, now) if args.until else now
    except ValueError as exc:
        print(f"weightwarden-collector: {exc}", file=sys.stderr)
        return 2
    types = args.types or list(EXPORT_TYPES)
    count = 0
    first: float | None = None
    try:
        from weightwarden.collector.cli.opening import open_store

        for event in open_store(args.db).export_events(args.host, since, until, types):
            sys.stdout.write(json.dumps(event) + "\n")
            count += 1
            if first is None and event["type"] == "egress_sample":
                first = event["ts"]
    except BrokenPipeError:
        return 0
    if "egress_sample" in types and (first is None or first > since + 120):
        # Retention folds samples into per-minute totals after --raw-egress-retention: say so, or an
        # author would simulate an hour and believe it was the day asked for.
        print(f"weightwarden-collector: samples of {args.host!r} start at "
              f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(first)) if first else 'no time in range'}; "
              "older ones are kept only as per-minute totals (the collector's --raw-egress-retention, default 1h)",
              file=sys.stderr)
    if count == 0:
        print(f"weightwarden-collector: no {', '.join(types)} events of host {args.host!r} in that time",
              file=sys.stderr)
        return 1
    return 0
