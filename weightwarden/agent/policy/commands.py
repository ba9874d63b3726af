"""``weightwarden-agent policy ...``: check, explain, simulate, diff, schema.

Exit codes: 0 success; 1 an invalid policy (every problem on stderr with its
file and line), or warnings under ``check --strict``; 2 bad usage.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import TYPE_CHECKING

from weightwarden.agent.policy.loader import LoadedPolicy, PolicyError, load_policy
from weightwarden.units import format_duration, format_rate, format_size, parse_size

if TYPE_CHECKING:  # simulate loads only for ``policy simulate``
    from weightwarden.agent.policy.simreport import SimReport

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2

EXAMPLES = """examples:
  weightwarden-agent policy check weightwarden/policies/single-gpu-host.yaml
  weightwarden-agent policy check /etc/weightwarden/policy.yaml --show     merged with policy.d/*.yaml, with sources
  weightwarden-agent policy explain weightwarden/policies/single-gpu-host.yaml --weights-size 140GB
  weightwarden-agent top --json --count 3600 > day.jsonl
  weightwarden-agent policy simulate weightwarden/policies/single-gpu-host.yaml --samples day.jsonl --weights-size 140GB
  weightwarden-agent policy diff old.yaml new.yaml --weights-size 140GB
  weightwarden-agent policy schema > policy.schema.json
"""


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    fmt = argparse.RawDescriptionHelpFormatter
    pol = sub.add_parser("policy", help="check, explain, simulate or compare policy files", epilog=EXAMPLES,
                         formatter_class=fmt)
    psub = pol.add_subparsers(dest="policy_command", required=True)

    check = psub.add_parser("check", help="validate a policy (and its drop-ins): exit 0 if valid, 1 with every "
                            "problem if not", epilog=EXAMPLES, formatter_class=fmt)
    check.add_argument("file")
    check.add_argument("--json", action="store_true")
    check.add_argument("--strict", action="store_true",
                       help="warnings fail too (e.g. an interface pattern that matches nothing on this host)")
    check.add_argument("--show", action="store_true",
                       help="print the merged policy with the file and line that set each value "
                            "(printed anyway when drop-ins were merged)")
    _drop_in_arg(check)
    check.set_defaults(func=cmd_check)

    expl = psub.add_parser("explain", help="what a policy does, and the minimum time to move the weights off",
                           epilog=EXAMPLES, formatter_class=fmt)
    expl.add_argument("file")
    _size_arg(expl)
    expl.add_argument("--json", action="store_true")
    _drop_in_arg(expl)
    expl.set_defaults(func=cmd_explain)

    sim = psub.add_parser("simulate", help="replay recorded samples through a policy: what each cap would have "
                          "matched, held back and delayed, and which alerts would have fired", epilog=EXAMPLES,
                          formatter_class=fmt)
    sim.add_argument("file", metavar="POLICY")
    sim.add_argument("--samples", required=True, metavar="FILE",
                     help="JSON lines of 'top --json', or 'weightwarden-collector export' output; '-' for stdin")
    sim.add_argument("--host", default=None, help="only this host's samples (exports may hold several)")
    _size_arg(sim)
    sim.add_argument("--mtu", type=int, default=1500, help="for the payload -> link-layer model (default 1500)")
    sim.add_argument("--json", action="store_true")
    _drop_in_arg(sim)
    sim.set_defaults(func=cmd_simulate)

    diff = psub.add_parser("diff", help="what changes between two policies, for which traffic, in words",
                           epilog=EXAMPLES, formatter_class=fmt)
    diff.add_argument("old")
    diff.add_argument("new")
    _size_arg(diff)
    diff.add_argument("--json", action="store_true")
    _drop_in_arg(diff)
    diff.set_defaults(func=cmd_diff)

    schema = psub.add_parser("schema", help="the policy's JSON Schema (for editors), generated from the model")
    schema.set_defaults(func=cmd_schema)


def _drop_in_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-drop-ins", action="store_true", help="read the file alone, without FILE's .d/*.yaml")


def _size_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--weights-size", metavar="SIZE",
                   help="e.g. 140GB (default: what the samples report, else spec.weights.paths on this host)")


def _load(path: str, args: argparse.Namespace) -> LoadedPolicy | None:
    try:
        return load_policy(path, drop_ins=not getattr(args, "no_drop_ins", False))
    except PolicyError as exc:
        for problem in exc.problems:
            print(problem.render(path), file=sys.stderr)
        return None


def _size(args: argparse.Namespace) -> int | None:
    """--weights-size, parsed; raises ValueError with a message."""
    if not args.weights_size:
        return None
    try:
        return parse_size(args.weights_size)
    except ValueError as exc:
        raise ValueError(f"--weights-size: {exc}") from None


def _host_size(loaded: LoadedPolicy) -> int:
    from weightwarden.agent.policy.explain import weights_size

    return weights_size(loaded.policy) if loaded.policy.spec.weights.paths else 0


def cmd_check(args: argparse.Namespace) -> int:
    from weightwarden.agent.daemon.host import resolve_containers, resolve_interfaces
    from weightwarden.agent.enforce.selectors import detect
    from weightwarden.agent.policy.lint import container_checks, host_checks, lint, unenforceable
    from weightwarden.agent.policy.show import merged_yaml, rates

    try:
        loaded = load_policy(args.file, drop_ins=not args.no_drop_ins)
    except PolicyError as exc:
        if args.json:
            print(json.dumps({"valid": False, "problems": [p.__dict__ for p in exc.problems]}))
        for problem in exc.problems:
            print(problem.render(args.file), file=sys.stderr)
        return EXIT_FAIL
    refused = unenforceable(loaded, detect())
    if refused:
        # A selector this kernel cannot enforce is refused, never quietly widened to a host-wide cap.
        if args.json:
            print(json.dumps({"valid": False, "problems": [{**p.__dict__, "kind": "unenforceable"} for p in refused]}))
        for problem in refused:
            print(problem.render(args.file), file=sys.stderr)
        return EXIT_FAIL
    warnings = (lint(loaded) + host_checks(loaded, resolve_interfaces([]))
                + container_checks(loaded, resolve_containers(loaded.policy).notes))
    failed = args.strict and bool(warnings)
    if args.json:
        print(json.dumps({"valid": not failed, "name": loaded.policy.metadata.name, "digest": loaded.digest,
                          "files": list(loaded.files), "warnings": [w.__dict__ for w in warnings],
                          "rates": rates(loaded), "sources": loaded.sources, "merged": loaded.data}))
    else:
        extra = f" (merged from {len(loaded.files)} files)" if len(loaded.files) > 1 else ""
        print(f"{args.file}: valid policy {loaded.policy.metadata.name!r}{extra}")
        for line in rates(loaded):
            print(f"  {line}")
        if args.show or len(loaded.files) > 1:
            print("\n# merged, in order: " + ", ".join(loaded.files))
            print(merged_yaml(loaded))
    for warning in warnings:
        print(warning.render(args.file), file=sys.stderr)
    if failed:
        print(f"{args.file}: {len(warnings)} warning(s), and --strict was given", file=sys.stderr)
        return EXIT_FAIL
    return EXIT_OK


def cmd_explain(args: argparse.Namespace) -> int:
    from weightwarden.agent.daemon.host import resolve_interfaces
    from weightwarden.agent.policy.explain import explain

    loaded = _load(args.file, args)
    if loaded is None:
        return EXIT_FAIL
    policy = loaded.policy
    try:
        size = _size(args) or _host_size(loaded)
    except ValueError as exc:
        print(f"weightwarden-agent: {exc}", file=sys.stderr)
        return EXIT_USAGE
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
        print(f"Fastest route that is not allowlisted: {report['min_time_not_allowlisted']}.")
    return EXIT_OK


def cmd_simulate(args: argparse.Namespace) -> int:
    from weightwarden.agent.policy.explain import explain
    from weightwarden.agent.policy.samples import ReadStats, open_samples, read_samples
    from weightwarden.agent.policy.simulate import LinkModel, Simulation

    loaded = _load(args.file, args)
    if loaded is None:
        return EXIT_FAIL
    if not 576 <= args.mtu <= 65535:
        print("weightwarden-agent: --mtu must be 576..65535", file=sys.stderr)
        return EXIT_USAGE
    try:
        size = _size(args)
        stream = open_samples(args.samples)
    except (ValueError, OSError) as exc:
        print(f"weightwarden-agent: {exc}", file=sys.stderr)
        return EXIT_USAGE
    stats = ReadStats()
    sim = Simulation(loaded.policy, link=LinkModel(args.mtu))
    with stream:
        for sample in read_samples(stream, args.samples, stats, args.host):
            sim.add(sample)
    if len(stats.hosts) > 1:
        print(f"weightwarden-agent: the samples hold {len(stats.hosts)} hosts ({', '.join(sorted(stats.hosts)[:5])}); "
              "pick one with --host", file=sys.stderr)
        return EXIT_USAGE
    if stats.samples == 0:
        print(f"weightwarden-agent: no samples in {args.samples}" +
              (f" ({stats.problems[0]})" if stats.problems else ""), file=sys.stderr)
        return EXIT_FAIL
    report = sim.report()
    report["hosts"] = sorted(stats.hosts)
    report["skipped_lines"] = stats.skipped
    report["skipped"] = stats.problems
    size = size or stats.weights_bytes or _host_size(loaded)
    if size:
        ex = explain(loaded.policy, size)
        report["time_to_exfiltrate"] = {"weights_bytes": size, "min_seconds": ex["min_seconds"],
                                        "min_time": ex["min_time"],
                                        "min_seconds_not_allowlisted": ex["min_seconds_not_allowlisted"],
                                        "min_time_not_allowlisted": ex["min_time_not_allowlisted"]}
    else:
        report["time_to_exfiltrate"] = None
        report["notes"].append("weights size unknown (no --weights-size, none in the samples, none on this host): "
                               "no time to exfiltrate")
    if args.json:
        print(json.dumps(report))
    else:
        print(render_simulation(report))
    for problem in stats.problems:
        print(f"skipped {problem}", file=sys.stderr)
    return EXIT_OK


def _rate(bps: float) -> str:
    return format_rate(float(f"{bps:.3g}")) if bps else "-"


def render_simulation(r: SimReport) -> str:
    lines = [f"Policy {r['policy']!r} over {r['samples']} samples ({format_duration(r['duration_s'])}"
             + (f", host {', '.join(r['hosts'])}" if r.get("hosts") else "") + f"): {format_size(r['total_bytes'])} sent.",
             ""]
    lines.append(f"{'CAP':<20} {'ACTION':<6} {'RATE':>12} {'MATCHED':>10} {'PEAK':>12} {'HELD BACK':>10} "
                 f"{'MAX DELAY':>10} {'BLOCKED':>9}")
    for c in r["caps"]:
        lines.append(f"{c['name'][:20]:<20} {c['action']:<6} {_rate(c['rate_bps']):>12} "
                     f"{format_size(c['matched_bytes']):>10} {_rate(c['peak_bps']):>12} "
                     f"{format_duration(c['held_back_s']) if c['held_back_s'] else '-':>10} "
                     f"{format_duration(c['max_delay_s']) if c['max_delay_s'] else '-':>10} "
                     f"{format_size(c['blocked_bytes']) if c['blocked_bytes'] else '-':>9}")
    if not r["caps"]:
        lines.append("(no caps)")
    lines.append("")
    lines.append(f"Allowlisted (measured, never capped): {format_size(r['allowlisted_bytes'])}"
                 + "".join(f"; {a['destination']}: {format_size(a['bytes'])}" for a in r["allow"] if a["bytes"]))
    lines.append(f"Matched by no cap: {format_size(r['unmatched_bytes'])}")
    if r["budget_blocked_bytes"]:
        lines.append(f"Blocked by an exhausted budget: {format_size(r['budget_blocked_bytes'])}")
    for b in r["budgets"]:
        lines.append(f"Budget {b['name']!r}: peak {format_size(b['peak_used_bytes'])} of {format_size(b['limit_bytes'])} "
                     f"per {format_duration(b['window_s'])}")
    lines.append("")
    lines.append(f"Alerts: {len(r['alerts'])}" + ("" if r["alerts"] else " (none would have fired)"))
    for a in r["alerts"][:50]:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(a["ts"]))
        lines.append(f"  {when}  {a['type']:<18} {a['name']}")
    if len(r["alerts"]) > 50:
        lines.append(f"  ... and {len(r['alerts']) - 50} more (--json lists all)")
    t = r.get("time_to_exfiltrate")
    if t:
        lines.append("")
        lines.append(f"Moving {format_size(t['weights_bytes'])} of weights off under this policy: fastest "
                     f"{t['min_time']}; fastest not allowlisted: {t['min_time_not_allowlisted']}.")
    lines.append("")
    lines += [f"note: {n}" for n in r["notes"]]
    return "\n".join(lines)


def cmd_diff(args: argparse.Namespace) -> int:
    from weightwarden.agent.policy.diff import diff

    old, new = _load(args.old, args), _load(args.new, args)
    if old is None or new is None:
        return EXIT_FAIL
    try:
        size = _size(args) or _host_size(new)
    except ValueError as exc:
        print(f"weightwarden-agent: {exc}", file=sys.stderr)
        return EXIT_USAGE
    report = diff(old.policy, new.policy, size or None)
    if args.json:
        print(json.dumps(report))
        return EXIT_OK
    print("\n".join(report["changes"]) if report["changes"] else "No change in what the policies do.")
    t = report.get("time_to_exfiltrate")
    if t:
        print(f"\nTime to move {format_size(report['weights_bytes'])} off, fastest route not allowlisted: "
              f"{t['before']['min_time_not_allowlisted']} -> {t['after']['min_time_not_allowlisted']}.")
    return EXIT_OK


def cmd_schema(_args: argparse.Namespace) -> int:
    from weightwarden.agent.policy.schema import schema_text

    sys.stdout.write(schema_text())
    return EXIT_OK
