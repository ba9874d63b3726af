"""weightwarden-agent: the command line.

Exit codes: 0 success; 1 a runtime failure or invalid policy (stated on stderr);
2 bad usage; 3 (status) drift or rules missing.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence

import asyncio
from pathlib import Path

from weightwarden import logs
from weightwarden.agent import __version__, resolve_rules
from weightwarden.events import default_host_id
from weightwarden.agent.paths import default_state_dir, private_dir
from weightwarden.agent.policy.loader import PolicyError, load_policy
from weightwarden.units import parse_size
from weightwarden.agent.sampler import DEFAULT_QUEUE, Sampler, SamplerConfig
from weightwarden.agent.topview import TopState

EXIT_OK, EXIT_FAIL, EXIT_USAGE, EXIT_DRIFT = 0, 1, 2, 3

POLICY_EXAMPLES = """examples:
  weightwarden-agent policy check policies/single-gpu-host.yaml
  weightwarden-agent policy explain policies/single-gpu-host.yaml --weights-size 140GB
"""
RUN_EXAMPLES = """examples:
  weightwarden-agent run --policy policies/monitor-only.yaml --sink stdout
  weightwarden-agent run --policy /etc/weightwarden/policy.yaml --sink mqtt://collector:1883
  weightwarden-agent run --policy p.yaml --dry-run       print the kernel plan and exit
"""

TOP_EXAMPLES = """examples:
  weightwarden-agent top                          live table, refreshed every second
  weightwarden-agent top --json --interval 1 --count 5
  ip netns exec gpu1 weightwarden-agent top --json --count 3
  weightwarden-agent top --dry-run                print the NFQUEUE rules, change nothing
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
    top.add_argument("--dry-run", action="store_true", help="print the kernel rules top would add, and exit")
    top.add_argument("--limit", type=_positive(int), default=20, help="rows in the table")
    top.set_defaults(func=cmd_top)

    pol = sub.add_parser("policy", help="check or explain a policy file", epilog=POLICY_EXAMPLES,
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    psub = pol.add_subparsers(dest="policy_command", required=True)
    check = psub.add_parser("check", help="validate a policy: exit 0 if valid, 1 with every problem if not",
                            epilog=POLICY_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    check.add_argument("file")
    check.add_argument("--json", action="store_true")
    check.set_defaults(func=cmd_policy_check)
    expl = psub.add_parser("explain", help="what a policy does, and the minimum time to move the weights off",
                           epilog=POLICY_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    expl.add_argument("file")
    expl.add_argument("--weights-size", metavar="SIZE",
                      help="e.g. 140GB (default: the size of spec.weights.paths on this host)")
    expl.add_argument("--json", action="store_true")
    expl.set_defaults(func=cmd_policy_explain)

    run = sub.add_parser("run", help="the daemon: sample, enforce, emit events", epilog=RUN_EXAMPLES,
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    run.add_argument("--policy", "--config", dest="policy", required=True, metavar="FILE")
    run.add_argument("--sink", default="stdout", help="stdout, mqtt://HOST:PORT or mqtts://HOST:PORT")
    _state_args(run)
    run.add_argument("--host-id", default=None, help="stable host id (default: the hostname)")
    run.add_argument("--sample-interval", type=_positive(float), default=1.0, metavar="S")
    run.add_argument("--heartbeat-interval", type=_positive(float), default=30.0, metavar="S")
    run.add_argument("--spool-max-bytes", default="256MiB", metavar="SIZE",
                     help="bound on the on-disk event spool (mqtt sinks); oldest samples are dropped, and counted, past it")
    run.add_argument("--no-nfqueue", action="store_true")
    run.add_argument("--queue-num", type=int, default=DEFAULT_QUEUE)
    run.add_argument("--dry-run", action="store_true", help="print the kernel plan as JSON and exit")
    run.add_argument("--metrics-listen", metavar="HOST:PORT", default=None,
                     help="serve the agent's own metrics (Prometheus text) at http://HOST:PORT/metrics")
    run.set_defaults(func=cmd_run)

    status = sub.add_parser("status", help="policy in force, kernel rules, counters and drift",
                            epilog="exit codes: 0 in force and matching, 3 drift or rules missing, 1 error")
    _state_args(status)
    status.add_argument("--json", action="store_true")
    status.set_defaults(func=cmd_status)

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


def _state_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--state-dir", type=Path, default=None,
                   help="default: /var/lib/weightwarden (per network namespace), or $WEIGHTWARDEN_STATE_DIR")
    p.add_argument("--backend", choices=("auto", "nftables", "iptables", "dry-run"), default="auto",
                   help="auto: nftables where nft works, else iptables; dry-run: plan and report, never touch the kernel")


def _load_or_report(path: str) -> object:
    try:
        return load_policy(path)
    except PolicyError as exc:
        for problem in exc.problems:
            print(problem.render(path), file=sys.stderr)
        return None


def cmd_policy_check(args: argparse.Namespace) -> int:
    try:
        loaded = load_policy(args.file)
    except PolicyError as exc:
        if args.json:
            print(json.dumps({"valid": False, "problems": [p.__dict__ for p in exc.problems]}))
        for problem in exc.problems:
            print(problem.render(args.file), file=sys.stderr)
        return EXIT_FAIL
    if args.json:
        print(json.dumps({"valid": True, "name": loaded.policy.metadata.name, "digest": loaded.digest}))
    else:
        print(f"{args.file}: valid policy {loaded.policy.metadata.name!r}")
    return EXIT_OK


def cmd_policy_explain(args: argparse.Namespace) -> int:
    from weightwarden.agent.daemon import resolve_interfaces
    from weightwarden.agent.policy.explain import explain, weights_size

    loaded = _load_or_report(args.file)
    if loaded is None:
        return EXIT_FAIL
    policy = loaded.policy  # type: ignore[attr-defined]
    if args.weights_size:
        try:
            size = parse_size(args.weights_size)
        except ValueError as exc:
            print(f"weightwarden-agent: --weights-size: {exc}", file=sys.stderr)
            return EXIT_USAGE
    else:
        size = weights_size(policy)
        if size == 0:
            print("weightwarden-agent: no weight files found under spec.weights.paths; pass --weights-size SIZE",
                  file=sys.stderr)
            return EXIT_USAGE
    n_ifaces = max(1, len(resolve_interfaces(policy.spec.interfaces))) if policy.spec.interfaces else 1
    report = explain(policy, size, n_ifaces)
    if args.json:
        print(json.dumps(report))
    else:
        print("\n".join(report["summary"]))
        print(f"\nFastest route: {report['min_time']}.")
    return EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    from weightwarden.agent.daemon import Agent, DaemonConfig
    from weightwarden.agent.enforce.kernel import KernelError
    from weightwarden.agent.sinks import SinkURLError, make_sink

    loaded = _load_or_report(args.policy)
    if loaded is None:
        return EXIT_FAIL
    state_dir = args.state_dir or default_state_dir()
    if args.dry_run:
        return _print_plan(loaded, args)
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
                       metrics_listen=args.metrics_listen)
    try:
        agent = Agent(cfg, loaded, sink)  # type: ignore[arg-type]
    except (KernelError, ValueError, OSError) as exc:
        print(f"weightwarden-agent: cannot start: {exc}", file=sys.stderr)
        return EXIT_FAIL
    return asyncio.run(agent.run())


def _plan_inputs(policy: object) -> object:
    """What the kernel plan of a policy depends on, read from this host now."""
    from weightwarden.agent.daemon import cgroupv2_paths_usable, resolve_hosts, resolve_interfaces
    from weightwarden.agent.enforce.plan import PlanInputs

    spec = policy.spec  # type: ignore[attr-defined]
    hosts = [d.host for d in spec.allow if d.host] + [d.host for c in spec.caps for d in c.match.destinations if d.host]
    return PlanInputs(policy, resolve_interfaces(spec.interfaces), resolve_hosts(hosts), [],  # type: ignore[arg-type]
                      cgroupv2_paths_usable())


def _print_plan(loaded: object, args: argparse.Namespace) -> int:
    from weightwarden.agent.enforce import iptables
    from weightwarden.agent.enforce.plan import build

    inputs = _plan_inputs(loaded.policy)  # type: ignore[attr-defined]
    plan = build(inputs)  # type: ignore[arg-type]
    out = plan.to_json()
    out["iptables"] = {str(v): d.__dict__ for v, d in iptables.build(inputs, plan).items()}  # type: ignore[arg-type]
    print(json.dumps(out, indent=2))
    return EXIT_OK


def cmd_enforce_apply(args: argparse.Namespace) -> int:
    from weightwarden.agent.enforce.enforcer import Enforcer
    from weightwarden.agent.enforce.kernel import KernelError
    from weightwarden.agent.enforce.plan import PlanInputs, build

    loaded = _load_or_report(args.policy)
    if loaded is None:
        return EXIT_FAIL
    if args.dry_run:
        return _print_plan(loaded, args)
    policy = loaded.policy  # type: ignore[attr-defined]
    inputs = _plan_inputs(policy)
    assert isinstance(inputs, PlanInputs)
    plan = build(inputs)
    try:
        enforcer = Enforcer(args.state_dir or default_state_dir(), args.backend)
        enforcer.apply(inputs, plan, {"policy": policy.metadata.name, "policy_digest": loaded.digest,  # type: ignore[attr-defined]
                                      "policy_path": args.policy})
    except KernelError as exc:
        print(f"weightwarden-agent: {exc}", file=sys.stderr)
        return EXIT_FAIL
    for note in plan.notes:
        print(f"note: {note}", file=sys.stderr)
    print(f"applied {policy.metadata.name!r} via {enforcer.backend} on {', '.join(plan.interfaces) or '(none)'}")
    return EXIT_OK


def cmd_enforce_clear(args: argparse.Namespace) -> int:
    from weightwarden.agent.enforce.enforcer import Enforcer
    from weightwarden.agent.enforce.kernel import KernelError

    try:
        removed = Enforcer(args.state_dir or default_state_dir(), args.backend).clear()
    except KernelError as exc:
        print(f"weightwarden-agent: {exc}", file=sys.stderr)
        return EXIT_FAIL
    if args.json:
        print(json.dumps(removed))
    else:
        print("cleared: " + ", ".join(f"{k}={v}" for k, v in removed.items()))
    return EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    from weightwarden.agent import status

    report = status.collect(args.state_dir or default_state_dir(), args.backend)
    print(json.dumps(report) if args.json else status.render(report))
    if report.get("error"):
        return EXIT_FAIL
    return EXIT_DRIFT if report["drift"] else EXIT_OK


def cmd_top(args: argparse.Namespace) -> int:
    if args.dry_run:
        plan = resolve_rules.plan(args.queue_num)
        out = {"install": plan.install, "remove": plan.remove}
        if args.json:
            print(json.dumps(out))
        else:
            print("# rules added while top runs (removed on exit):")
            for argv in plan.install:
                print(" ".join(argv))
        return EXIT_OK
    log = logs.get("agent.top")
    cfg = SamplerConfig(resolve_with_nfqueue=not args.no_nfqueue, queue_num=args.queue_num)
    stop = {"now": False}

    def on_signal(_sig: int, _frame: object) -> None:
        stop["now"] = True

    signal.signal(signal.SIGTERM, on_signal)
    sampler = Sampler(cfg)
    try:
        sampler.start()
    except OSError as exc:
        print(f"weightwarden-agent: cannot start the sampler: {exc}", file=sys.stderr)
        sampler.close()
        return EXIT_FAIL
    for feature in sampler.features:
        # Said once, at start: what works, and what is missing and why.
        (log.info if feature.ok else log.warning)("feature", name=feature.name, ok=feature.ok, detail=feature.detail)
    view = TopState()
    done = 0
    interactive = sys.stdout.isatty() and not args.json
    try:
        deadline = time.monotonic()
        while not stop["now"] and (args.count is None or done < args.count):
            deadline += args.interval
            time.sleep(max(0.0, deadline - time.monotonic()))
            sample = sampler.sample().to_json()
            done += 1
            if args.json:
                print(json.dumps(sample), flush=True)
            else:
                text = view.render(sample, args.limit)
                print(("\x1b[H\x1b[2J" if interactive else "") + text + ("" if interactive else "\n"), flush=True)
    except KeyboardInterrupt:
        pass
    except BrokenPipeError:
        sys.stderr.close()
    finally:
        sampler.close()
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logs.configure(args.log_level)
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
