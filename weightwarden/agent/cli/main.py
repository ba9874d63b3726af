"""weightwarden-agent: the command line.

Exit codes: 0 success; 1 a runtime failure or invalid policy (stated on stderr);
2 bad usage; 3 (status) drift or rules missing; 4 (status) the kernel sensor lost something it should have
(a capability off, or eBPF refused and attribution on the fallback).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from weightwarden import logs
from weightwarden.agent import __version__
from weightwarden.agent.attribution.sampler import DEFAULT_QUEUE
from weightwarden.agent.cli.enforce import cmd_enforce_apply, cmd_enforce_clear, load_or_report, print_plan
from weightwarden.agent.cli.exits import EXIT_DEGRADED, EXIT_DRIFT, EXIT_FAIL, EXIT_OK, EXIT_USAGE, pin_dir
from weightwarden.agent.cli.sensor import cmd_sensor_probe, cmd_sensor_uninstall
from weightwarden.agent.cli.top import cmd_top
from weightwarden.agent.daemon.paths import default_state_dir, private_dir
from weightwarden.agent.policy import commands as policy_commands
from weightwarden.events import default_host_id
from weightwarden.units import parse_size

if TYPE_CHECKING:  # the daemon's modules load only for ``run``
    from weightwarden.agent.daemon.config import DaemonConfig, Origin
    from weightwarden.agent.policy.loader import LoadedPolicy
    from weightwarden.agent.policy.source import MqttPolicySource

    # (policy source, central policy restored from the state dir, its origin)
    Central = tuple[MqttPolicySource | None, LoadedPolicy | None, Origin | None]

PIN_DIR = "/sys/fs/bpf/weightwarden"
ENV_PIN_DIR = "WEIGHTWARDEN_BPF_PIN_DIR"

RUN_EXAMPLES = """examples:
  weightwarden-agent run --policy weightwarden/policies/monitor-only.yaml --sink stdout
  weightwarden-agent run --policy /etc/weightwarden/policy.yaml --sink mqtt://collector:1883
  weightwarden-agent run --policy p.yaml --dry-run       print the kernel plan and exit
  weightwarden-agent run --policy /etc/weightwarden/policy.yaml --sink mqtt://collector:1883 \
      --policy-source mqtt --trust-key /etc/weightwarden/fleet.pub   signed policies from the fleet
"""

TOP_EXAMPLES = """examples:
  weightwarden-agent top                          live table, refreshed every second
  weightwarden-agent top --json --interval 1 --count 5
  ip netns exec gpu1 weightwarden-agent top --json --count 3
  weightwarden-agent top --dry-run                print the NFQUEUE rules, change nothing
  weightwarden-agent top --attribution nfqueue    the fallback path: this network namespace only
  weightwarden-agent top --bpf-cgroup /sys/fs/cgroup/unified/kubepods.slice   only what runs below it
"""


def _positive(kind: Callable[[str], float]) -> Callable[[str], float]:
    def parse(text: str) -> float:
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return value

    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="weightwarden-agent",
        description="Measure and limit what leaves this GPU host.",
        epilog="example: weightwarden-agent top --json --interval 1 --count 5",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"weightwarden-agent {__version__}")
    parser.add_argument("--log-level", choices=sorted(logs.LEVELS), default="info",
                        help="least severe log lines written to stderr (default: info)")
    sub = parser.add_subparsers(dest="command", required=True)

    top = sub.add_parser(
        "top",
        help="live view of the processes sending the most bytes off this host",
        description="Bytes sent per process and destination, exactly, from kernel counters.",
        epilog=TOP_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    top.add_argument("--json", action="store_true", help="print one JSON object per interval")
    top.add_argument("--interval", type=_positive(float), default=1.0, metavar="S", help="seconds between samples")
    top.add_argument("--count", type=_positive(int), default=None, metavar="N", help="stop after N samples")
    top.add_argument("--no-nfqueue", action="store_true",
                     help="do not hold new flows to name their owner (short-lived senders may go unattributed)")
    top.add_argument("--queue-num", type=int, default=DEFAULT_QUEUE, help="NFQUEUE number (default %(default)s)")
    _attribution_args(top)
    top.add_argument("--bpf-pin-dir", metavar="DIR", default="none",
                     help="pin the eBPF programs and maps in DIR (a bpf filesystem) so another run takes them over "
                          "(default: none, nothing outlives top)")
    top.add_argument("--dry-run", action="store_true", help="print the kernel rules top would add, and exit")
    top.add_argument("--limit", type=_positive(int), default=20, help="rows in the table")
    top.set_defaults(func=cmd_top)

    policy_commands.add_parser(sub)

    run = sub.add_parser("run", help="the daemon: sample, enforce, emit events", epilog=RUN_EXAMPLES,
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    run.add_argument("--policy", "--config", dest="policy", required=True, metavar="FILE")
    run.add_argument("--sink", default="stdout", help="stdout, mqtt://HOST:PORT or mqtts://HOST:PORT")
    _state_args(run)
    run.add_argument("--host-id", default=None, help="stable host id (default: the hostname)")
    run.add_argument("--sample-interval", type=_positive(float), default=1.0, metavar="S")
    run.add_argument("--heartbeat-interval", type=_positive(float), default=5.0, metavar="S",
                     help="seconds between heartbeats; the collector finds the agent silent after three (default 5)")
    run.add_argument("--spool-max-bytes", default="256MiB", metavar="SIZE",
                     help="bound on the on-disk event spool (mqtt sinks); oldest samples are dropped, and counted, past it")
    run.add_argument("--no-nfqueue", action="store_true")
    run.add_argument("--queue-num", type=int, default=DEFAULT_QUEUE)
    _attribution_args(run)
    run.add_argument("--dry-run", action="store_true", help="print the kernel plan as JSON and exit")
    run.add_argument("--policy-source", choices=("file", "mqtt"), default="file",
                     help="mqtt: also take signed policies published by 'weightwarden-collector policy publish'; "
                          "--policy is then the policy until a central one is in force")
    run.add_argument("--trust-key", action="append", default=[], metavar="PUBLIC_KEY",
                     help="an Ed25519 public key (PEM or OpenSSH) whose signatures are accepted; repeat to "
                          "trust several (key rotation)")
    run.add_argument("--policy-broker", default=None, metavar="URL",
                     help="broker for --policy-source mqtt (default: the --sink broker)")
    run.add_argument("--metrics-listen", metavar="HOST:PORT", default=None,
                     help="serve the agent's own metrics (Prometheus text) at http://HOST:PORT/metrics")
    run.add_argument("--bpf-pin-dir", metavar="DIR", default=_default_pin_dir(),
                     help="pin the eBPF programs and maps in DIR (a bpf filesystem), so they keep counting while the "
                          "agent restarts or is upgraded and the next agent takes them over; 'none': do not pin "
                          f"(default: ${ENV_PIN_DIR} or {PIN_DIR}; 'weightwarden-agent sensor uninstall' removes them)")
    run.set_defaults(func=cmd_run)

    status = sub.add_parser("status", help="policy in force, kernel rules, counters, drift and the sensor",
                            epilog="exit codes: 0 in force and matching, 3 drift or rules missing, 4 the kernel "
                                   "sensor lost something (a capability off, or eBPF refused and the fallback in "
                                   "use), 1 error")
    _state_args(status)
    status.add_argument("--json", action="store_true")
    status.set_defaults(func=cmd_status)

    sensor = sub.add_parser("sensor", help="the eBPF sensor: which programs this kernel accepts; remove its pins",
                            epilog="examples:\n  weightwarden-agent sensor probe --json\n"
                                   "  weightwarden-agent sensor uninstall      remove the pinned programs (stop the agent first)",
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    ssub = sensor.add_subparsers(dest="sensor_command", required=True)
    sprobe = ssub.add_parser("probe", help="load the programs (nothing attached) and say which this kernel refuses, "
                                           "with the verifier's words; exit 1 if the essential ones cannot load")
    sprobe.add_argument("--json", action="store_true")
    sprobe.set_defaults(func=cmd_sensor_probe)
    uninstall = ssub.add_parser("uninstall", help="remove the pinned programs, links and maps (the programs detach)")
    uninstall.add_argument("--bpf-pin-dir", metavar="DIR", default=_default_pin_dir())
    uninstall.set_defaults(func=cmd_sensor_uninstall)

    enf = sub.add_parser("enforce", help="apply a policy once, or clear every rule and qdisc we made")
    esub = enf.add_subparsers(dest="enforce_command", required=True)
    clear = esub.add_parser("clear", help="remove all weightwarden rules and qdiscs (caps are lifted)")
    _state_args(clear)
    clear.add_argument("--json", action="store_true")
    clear.set_defaults(func=cmd_enforce_clear)
    apply = esub.add_parser("apply", help="apply a policy's caps once, without the daemon")
    apply.add_argument("--policy", "--config", dest="policy", required=True, metavar="FILE")
    _state_args(apply)
    apply.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")
    apply.set_defaults(func=cmd_enforce_apply)
    return parser


def _attribution_args(p: argparse.ArgumentParser) -> None:
    default = os.environ.get("WEIGHTWARDEN_ATTRIBUTION", "auto")
    p.add_argument("--attribution", choices=("auto", "ebpf", "nfqueue"),
                   default=default if default in ("auto", "ebpf", "nfqueue") else "auto",
                   help="who-sent-what path: ebpf (every network namespace, owners named in the kernel), nfqueue "
                        "(this namespace only), auto: ebpf where the kernel allows it (default: "
                        "$WEIGHTWARDEN_ATTRIBUTION or auto)")
    p.add_argument("--bpf-cgroup", metavar="DIR", default=None,
                   help="cgroup v2 directory the eBPF programs watch (default: the whole hierarchy)")


def _default_pin_dir() -> str:
    return os.environ.get(ENV_PIN_DIR) or PIN_DIR


def _state_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--state-dir", type=Path, default=None,
                   help="default: /var/lib/weightwarden (per network namespace), or $WEIGHTWARDEN_STATE_DIR")
    p.add_argument("--backend", choices=("auto", "nftables", "iptables", "dry-run"), default="auto",
                   help="auto: nftables where nft works, else iptables; dry-run: plan and report, never touch the kernel")


def cmd_run(args: argparse.Namespace) -> int:
    from weightwarden.agent.daemon.agent import Agent
    from weightwarden.agent.daemon.config import DaemonConfig
    from weightwarden.agent.enforce.kernel import KernelError
    from weightwarden.agent.transport import SinkURLError, make_sink

    loaded = load_or_report(args.policy)
    if loaded is None:
        return EXIT_FAIL
    state_dir = args.state_dir or default_state_dir()
    if args.dry_run:
        return print_plan(loaded, args)
    # What the daemon writes (spool, budgets, records) names processes and policies: owner only,
    # as the unit's UMask=0077 says, also when it runs outside systemd.
    os.umask(0o077)
    private_dir(state_dir)
    try:
        sink = make_sink(args.sink, parse_size(args.spool_max_bytes))
    except (SinkURLError, ValueError, OSError) as exc:
        print(f"weightwarden-agent: --sink: {exc}", file=sys.stderr)
        return EXIT_USAGE
    cfg = DaemonConfig(policy_path=Path(args.policy), state_dir=state_dir, host_id=args.host_id or default_host_id(),
                       backend=args.backend, sample_interval=args.sample_interval, nfqueue=not args.no_nfqueue,
                       queue_num=args.queue_num, heartbeat_interval=args.heartbeat_interval,
                       attribution=args.attribution, bpf_cgroup=args.bpf_cgroup,
                       metrics_listen=args.metrics_listen, bpf_pin_dir=pin_dir(args.bpf_pin_dir))
    central = _central_source(args, cfg)
    if central is None:
        return EXIT_USAGE
    source, restored, origin = central
    try:
        agent = Agent(cfg, restored or loaded, sink, source, origin)
    except (KernelError, ValueError, OSError) as exc:
        print(f"weightwarden-agent: cannot start: {exc}", file=sys.stderr)
        return EXIT_FAIL
    return asyncio.run(agent.run())


def _central_source(args: argparse.Namespace, cfg: DaemonConfig) -> Central | None:
    """(policy source, central policy restored from the state dir, its origin); None on a usage error."""
    from weightwarden.agent.daemon.config import Origin
    from weightwarden.agent.policy.source import MqttPolicySource, Offer, PolicyGate, Refusal
    from weightwarden.mqtt import MqttSettings, MqttURLError
    from weightwarden.policysign import KeyFileError, trusted_keys

    if args.policy_source == "file":
        if args.trust_key or args.policy_broker:
            print("weightwarden-agent: --trust-key and --policy-broker need --policy-source mqtt", file=sys.stderr)
            return None
        return None, None, None
    url = args.policy_broker or (args.sink if args.sink.startswith(("mqtt://", "mqtts://")) else None)
    if url is None:
        print("weightwarden-agent: --policy-source mqtt needs --policy-broker URL (or an mqtt --sink)", file=sys.stderr)
        return None
    if not args.trust_key:
        print("weightwarden-agent: --policy-source mqtt needs at least one --trust-key: unsigned policies are never "
              "applied", file=sys.stderr)
        return None
    try:
        trusted = trusted_keys(args.trust_key)
        settings = MqttSettings.from_url(url)
    except (KeyFileError, MqttURLError) as exc:
        print(f"weightwarden-agent: {exc}", file=sys.stderr)
        return None
    gate = PolicyGate(cfg.host_id, trusted, cfg.state_dir)
    restored = gate.restore()
    if isinstance(restored, Refusal):
        # Say it once, plainly; the file's policy applies until a central one passes.
        print(f"weightwarden-agent: the central policy saved in the state directory is not applied: "
              f"{'; '.join(restored.problems)}", file=sys.stderr)
    if isinstance(restored, Offer):
        env = restored.envelope
        return (MqttPolicySource(settings, gate), restored.loaded,
                Origin("mqtt", env.version, env.key_id, f"mqtt:{restored.topic}"))
    return MqttPolicySource(settings, gate), None, None


def cmd_status(args: argparse.Namespace) -> int:
    from weightwarden.agent.cli import status

    report = status.collect(args.state_dir or default_state_dir(), args.backend)
    print(json.dumps(report) if args.json else status.render(report))
    if report.get("error"):
        return EXIT_FAIL
    if report["drift"]:
        return EXIT_DRIFT
    return EXIT_DEGRADED if sensor_lost_something(report.get("sensor")) else EXIT_OK


def sensor_lost_something(sensor: object) -> bool:
    """Whether the sensor lacks what the agent asked of it: a capability off on the eBPF path, or eBPF
    refused and the fallback in use. An agent run on the fallback on purpose (--attribution nfqueue) is
    degraded for the collector (one namespace only) but has lost nothing it asked for."""
    if not isinstance(sensor, dict) or not sensor.get("degraded"):
        return False
    features = sensor.get("features")
    declined = isinstance(features, dict) and any(name.endswith("_path") for name in features)  # Sampler.sensor
    return sensor.get("path") in ("ebpf", "none") or declined


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logs.configure(args.log_level)
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
