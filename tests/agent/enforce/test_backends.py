"""The conformance test every enforcement backend in the registry passes (CrowdSec's bouncer keeps
one per backend): its builder is pure and complete, and, for kernel backends, in a namespace of
their own, apply -> read back -> counters -> clear leaves exactly what the interface promises."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from tests.helpers.netns import NetnsPair
from weightwarden.agent.enforce.backends import KERNEL_BACKENDS, REGISTRY, choose
from weightwarden.agent.enforce.kernel import KernelError
from weightwarden.agent.enforce.plan import Plan, PlanInputs, build
from weightwarden.agent.policy.loader import parse_policy

POLICY = """apiVersion: weightwarden/v1
kind: EgressPolicy
metadata: {name: conformance}
spec:
  allow:
    - {cidr: 198.18.9.0/24}
    - {cidr: 198.18.10.0/24, ports: [443]}
  caps:
    - {name: uid-1000, rate: 20Mbit, match: {uids: [1000]}}
    - {name: host, rate: 50Mbit, match: {destinations: [{cidr: 198.18.0.0/15}]}}
    - {name: nothing, rate: 1Mbit, action: block, match: {destinations: [{cidr: 198.19.255.0/24}]}}
"""


def plan(allow: str = "198.18.9.0/24", iface: str = "eth0") -> Plan:
    policy = parse_policy(POLICY.replace("198.18.9.0/24", allow)).policy
    return build(PlanInputs(policy, [iface]))


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_the_builder_is_pure_json_and_follows_the_plan(name: str) -> None:
    backend = REGISTRY[name]()
    assert backend.name == name, "registered under its own name"
    first, again = backend.build(plan()), backend.build(plan())
    assert json.dumps(first, sort_keys=True) == json.dumps(again, sort_keys=True), "same plan, same document"
    changed = json.dumps(backend.build(plan(allow="198.18.7.0/24")), sort_keys=True)
    assert changed != json.dumps(first, sort_keys=True), "a changed allowlist changes what the backend writes"
    text = json.dumps(first)
    assert "198.18.9.0" in text and "198.18.10.0" in text, "the allowlist is in the document"


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_choose_by_name_gives_that_backend(name: str) -> None:
    assert choose(name).name == name


def test_an_unknown_backend_is_refused_by_name() -> None:
    with pytest.raises(KernelError, match="unknown enforcement backend 'pf'"):
        choose("pf")


def test_dry_run_touches_nothing_and_remembers_the_plan() -> None:
    backend = REGISTRY["dry-run"]()
    p = plan()
    backend.apply(p)
    assert backend.state(["eth0"])["plan"] == p.to_json()
    assert backend.counters() == {}
    backend.clear()
    assert backend.state(["eth0"])["plan"] is None


# What one backend does in a namespace, run there by a fresh interpreter (the backends act on the
# namespace of the process that calls them). Prints one JSON object.
LIFECYCLE = textwrap.dedent("""
    import json, subprocess, sys
    from weightwarden.agent.enforce.backends import REGISTRY
    from weightwarden.agent.enforce.plan import PlanInputs, build
    from weightwarden.agent.policy.loader import parse_policy
    name, iface, text = sys.argv[1], sys.argv[2], sys.stdin.read()
    backend = REGISTRY[name]()
    plan = build(PlanInputs(parse_policy(text).policy, [iface]))
    out = {"available": backend.available()}
    backend.apply(plan)
    out["state"] = backend.state([iface])
    out["again"] = backend.state([iface])
    import socket
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for _ in range(3):
            s.sendto(b"x" * 100, (sys.argv[3], 9))
    out["counters"] = backend.counters()
    out["cleared"] = backend.clear()
    out["after"] = backend.state([iface])
    print(json.dumps(out))
""")


@pytest.mark.privileged
@pytest.mark.parametrize("name", KERNEL_BACKENDS)
def test_a_kernel_backend_applies_reads_back_counts_and_clears(name: str, netns_pair: NetnsPair) -> None:
    pair = netns_pair
    proc = subprocess.run(["ip", "netns", "exec", pair.a, sys.executable, "-c", LIFECYCLE, name, pair.veth_a,
                           pair.addr_b], input=POLICY, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["available"]
    assert out["state"]["backend"] == name and out["state"]["rules"], "the rules are in the kernel"
    assert out["state"] == out["again"], "a read back is stable while nothing changes"
    assert out["state"]["tc"][pair.veth_a], "the htb tree is on the policy interface"
    counters = out["counters"]
    assert {"egress", "cap-0", "cap-1"} <= set(counters), counters
    assert counters["egress"]["packets"] >= 3, "the datagrams to the other namespace were counted"
    assert out["cleared"][name] is True
    left = out["after"]["tc"][pair.veth_a].get("qdiscs", [])
    assert out["after"]["rules"] is None and not any(q["handle"].startswith("7757:") for q in left), out["after"]
