"""The planner is pure: the kernel state it asks for, checked without root."""

import json
from typing import Any

from tests.agent.enforce import nftdoc
from tests.agent.policy.test_policy import CONTRACT
from weightwarden.agent.enforce.backends import iptables, nftables
from weightwarden.agent.enforce.plan import TC_MAJOR, Plan, PlanInputs, build
from weightwarden.agent.policy.loader import parse_policy

HEAD = "apiVersion: weightwarden/v1\nkind: EgressPolicy\nmetadata: {name: p}\nspec:\n"


def _rules(plan: Plan) -> list[list[dict[str, Any]]]:
    return [r["expr"] for r in nftdoc.rules(plan)]


def test_contract_plan() -> None:
    plan = build(PlanInputs(parse_policy(CONTRACT).policy, ["eth0"]))
    doc = json.dumps(nftables.build(plan))
    assert nftdoc.commands(plan)[:3] == [{"add": {"table": {"family": "inet", "name": "weightwarden"}}},
                            {"delete": {"table": {"family": "inet", "name": "weightwarden"}}},
                            {"add": {"table": {"family": "inet", "name": "weightwarden"}}}]
    assert '{"prefix": {"addr": "198.18.9.0", "len": 24}}' in doc
    slot = plan.slots[0]
    assert slot.rate_bps == 20_000_000 and slot.classid == f"{TC_MAJOR:x}:100"
    cap_rule = _rules(plan)[-1]
    assert {"mangle": {"key": {"meta": {"key": "priority"}}, "value": slot.classid}} in cap_rule
    assert {"return": None} in cap_rule
    assert plan.tc["eth0"][0] == ["tc", "qdisc", "replace", "dev", "eth0", "root", "handle", "7757:", "htb"]
    # In place, never delete-then-add: a failure half-way must leave the previous caps, not none.
    assert all(argv[2] == "replace" for argv in plan.tc["eth0"])
    assert plan.tc["eth0"][1][10:12] == ["rate", "20000000bit"]


def test_monitor_only_plan_has_no_caps_and_no_classes() -> None:
    plan = build(PlanInputs(parse_policy(HEAD + "  {}\n").policy, ["eth0"]))
    assert plan.slots == []
    assert plan.tc == {}, "monitor-only never touches the interfaces' qdiscs"


def test_match_by_uid_and_destination_block() -> None:
    text = HEAD + ("  caps:\n"
                   "    - {name: a, rate: 1Mbit, match: {uids: [1000, 1001]}}\n"
                   "    - {name: b, rate: 1kbit, action: block, match: {destinations: [{cidr: 203.0.113.0/24}]}}\n")
    plan = build(PlanInputs(parse_policy(text).policy, ["eth0"]))
    rules = _rules(plan)
    assert any({"match": {"op": "==", "left": {"meta": {"key": "skuid"}}, "right": {"set": [1000, 1001]}}} in r
               for r in rules)
    assert any({"drop": None} in r and {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "daddr"}},
                                                  "right": "@cap-1-dst4"}} in r for r in rules)
    assert [len(v) for v in plan.tc.values()] == [2]  # root + the one shaping class


def test_unmatchable_selectors_are_left_out_never_widened() -> None:
    text = HEAD + ("  caps:\n    - {name: c, rate: 1Mbit, match: {cgroups: [system.slice/x.service],"
                   " executables: [/usr/bin/scp]}}\n")
    plan = build(PlanInputs(parse_policy(text).policy, ["eth0"], cgroupv2_paths=False))
    assert any("'c'" in n and "not enforced" in n for n in plan.notes)
    # No rule counts into the cap's counter: a host-wide cap would have one with no selector at all.
    assert not any({"counter": "cap-0"} in r for r in _rules(plan))


def test_budget_block_adds_a_drop_after_the_allowlist() -> None:
    plan = build(PlanInputs(parse_policy(CONTRACT).policy, ["eth0"], blocked_budgets=["daily"]))
    rules = _rules(plan)
    drop_at = next(i for i, r in enumerate(rules) if {"drop": None} in r)
    allow_at = next(i for i, r in enumerate(rules) if any("@allow4" in json.dumps(e) for e in r))
    assert allow_at < drop_at


def test_resolved_hosts_enter_the_allowlist_only_as_addresses() -> None:
    text = HEAD + "  allow: [{host: objstore.internal, ports: [443]}]\n"
    plan = build(PlanInputs(parse_policy(text).policy, ["eth0"], resolved={"objstore.internal": ["198.18.7.7"]}))
    assert "198.18.7.7" in json.dumps(nftables.build(plan)) and "objstore" not in json.dumps(nftables.build(plan))
    unresolved = build(PlanInputs(parse_policy(text).policy, ["eth0"]))
    assert any("did not resolve" in n for n in unresolved.notes)


def test_iptables_document() -> None:
    inputs = PlanInputs(parse_policy(CONTRACT).policy, ["eth0"])
    docs = iptables.build(build(inputs))
    v4 = docs[4].restore
    assert "-A WEIGHTWARDEN-CAPS -d 198.18.9.0/24 -j RETURN -m comment --comment ww:allowed" in v4
    assert "-j CLASSIFY --set-class 7757:100 -m comment --comment ww:cap-0" in v4
    assert docs[4].jumps == [["-A", "POSTROUTING", "-o", "eth0", "-j", "WEIGHTWARDEN-CAPS"]]
    assert "198.18.9.0" not in docs[6].restore
