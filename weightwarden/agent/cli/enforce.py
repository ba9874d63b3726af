"""``weightwarden-agent enforce apply|clear`` and ``run --dry-run``: a policy's kernel plan, applied once,
printed, or every trace of ours removed."""

from __future__ import annotations

import argparse
import json
import sys

from weightwarden.agent.cli.exits import EXIT_FAIL, EXIT_OK
from weightwarden.agent.daemon.paths import default_state_dir
from weightwarden.agent.enforce.plan import PlanInputs
from weightwarden.agent.policy.loader import LoadedPolicy, PolicyError, load_policy
from weightwarden.agent.policy.model import Policy


def load_or_report(path: str) -> LoadedPolicy | None:
    """The policy, or None after saying on stderr what is wrong with it: a policy with a cap
    selector this kernel cannot enforce is refused here as by ``policy check``, never widened."""
    from weightwarden.agent.enforce.selectors import detect
    from weightwarden.agent.policy.lint import unenforceable

    try:
        loaded = load_policy(path)
    except PolicyError as exc:
        for problem in exc.problems:
            print(problem.render(path), file=sys.stderr)
        return None
    refused = unenforceable(loaded, detect())
    for problem in refused:
        print(problem.render(path), file=sys.stderr)
    return None if refused else loaded


def _plan_inputs(policy: Policy) -> PlanInputs:
    """What the kernel plan of a policy depends on, read from this host now."""
    from weightwarden.agent.daemon.host import cgroupv2_paths_usable, resolve_containers, resolve_hosts, resolve_interfaces

    spec = policy.spec
    hosts = [d.host for d in spec.allow if d.host] + [d.host for c in spec.caps for d in c.match.destinations if d.host]
    ctrs = resolve_containers(policy)
    return PlanInputs(policy, resolve_interfaces(spec.interfaces), resolve_hosts(hosts), [],
                      cgroupv2_paths_usable(), ctrs.interfaces, ctrs.notes)


def print_plan(loaded: LoadedPolicy, args: argparse.Namespace) -> int:
    from weightwarden.agent.enforce.backends import documents
    from weightwarden.agent.enforce.plan import build

    inputs = _plan_inputs(loaded.policy)
    plan = build(inputs)
    print(json.dumps({**plan.to_json(), **documents(plan)}, indent=2))
    return EXIT_OK


def cmd_enforce_apply(args: argparse.Namespace) -> int:
    from weightwarden.agent.enforce.enforcer import Enforcer
    from weightwarden.agent.enforce.kernel import KernelError
    from weightwarden.agent.enforce.plan import build

    loaded = load_or_report(args.policy)
    if loaded is None:
        return EXIT_FAIL
    if args.dry_run:
        return print_plan(loaded, args)
    policy = loaded.policy
    inputs = _plan_inputs(policy)
    plan = build(inputs)
    try:
        enforcer = Enforcer(args.state_dir or default_state_dir(), args.backend)
        enforcer.apply(inputs, plan, {"policy": policy.metadata.name, "policy_digest": loaded.digest,
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
