"""Container caps: selectors resolved to host-side veths (pure), and the rules the plan writes for them."""

from __future__ import annotations

from tests.agent.enforce.test_plan import HEAD, _rules
from weightwarden.agent.enforce.backends import iptables
from weightwarden.agent.enforce.container_links import HostLink, HostView, ProcNet, cgroup_of, resolve
from weightwarden.agent.enforce.plan import PlanInputs, build
from weightwarden.agent.policy.loader import parse_policy
from weightwarden.agent.policy.match import Flow, classify, compile_policy

POD_A = "6b0f9b2c-1f3c-4e8a-9d6f-0123456789ab"
POD_B = "0d1e2f30-4a5b-4c6d-8e9f-aabbccddeeff"
ID_A1, ID_A2, ID_B, ID_H = "a1" * 32, "a2" * 32, "b0" * 32, "c3" * 32
HOST_NS, NS_A, NS_B = 4026531840, 4026532001, 4026532002


def _pod(uid: str, cid: str) -> str:
    u = uid.replace("-", "_")
    return f"/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{u}.slice/cri-containerd-{cid}.scope"


def _policy(caps: str):  # type: ignore[no-untyped-def]
    return parse_policy(HEAD + "  caps:\n" + caps).policy


VIEW = HostView(
    host_netns=HOST_NS,
    procs=(ProcNet(10, _pod(POD_A, ID_A1), NS_A), ProcNet(11, _pod(POD_A, ID_A2), NS_A),  # a pod: one netns
           ProcNet(20, _pod(POD_B, ID_B), NS_B), ProcNet(30, f"/system.slice/docker-{ID_H}.scope", HOST_NS),
           ProcNet(40, "/user.slice/user-0.slice/session-1.scope", HOST_NS)),
    nsids={NS_A: 3, NS_B: 7},
    links=(HostLink("eth0", None, None), HostLink("cali1a", "veth", 3), HostLink("cali2b", "veth", 7),
           HostLink("vxlan0", "vxlan", 3), HostLink("bad name", "veth", 3)),
)


def test_a_pod_resolves_to_its_veth_and_nothing_else() -> None:
    policy = _policy(f"    - {{name: pod-a, rate: 20Mbit, match: {{containers: [{{pod_uid: {POD_A}}}]}}}}\n"
                     f"    - {{name: one, rate: 5Mbit, match: {{containers: [{{id: {ID_B[:12]}}}]}}}}\n")
    res = resolve(policy, VIEW)
    # Only veths whose peer lives in the pod's namespace; a tunnel device to it or an unsafe name is no way in.
    assert res.interfaces == {"pod-a": ("cali1a",), "one": ("cali2b",)}
    assert res.notes == ()


def test_host_network_containers_are_noted_never_widened() -> None:
    policy = _policy(f"    - {{name: h, rate: 1Mbit, match: {{containers: [{{id: {ID_H}}}, {{pod_uid: {POD_B}}}]}}}}\n")
    res = resolve(policy, VIEW)
    assert res.interfaces == {"h": ("cali2b",)}
    (note,) = res.notes
    assert ID_H[:12] in note and "host's network" in note
    # Only the host-network one: the cap matches nothing, and the plan writes no rule for it.
    only = _policy(f"    - {{name: h, rate: 1Mbit, match: {{containers: [{{id: {ID_H}}}]}}}}\n")
    res = resolve(only, VIEW)
    assert res.interfaces == {"h": ()}
    plan = build(PlanInputs(only, ["eth0"], container_ifaces=res.interfaces, container_notes=res.notes))
    assert not any({"counter": "cap-0"} in r for r in _rules(plan)), "no host-wide rule for an unresolved container"
    assert any("host's network" in n for n in plan.notes)


def test_no_matching_container_and_no_route_are_said() -> None:
    policy = _policy("    - {name: n, rate: 1Mbit, match: {containers: [{runtime: podman}]}}\n"
                     f"    - {{name: u, rate: 1Mbit, match: {{containers: [{{pod_uid: {POD_A}}}]}}}}\n")
    view = HostView(HOST_NS, VIEW.procs, {NS_B: 7}, VIEW.links)  # the host holds no id for A's namespace
    res = resolve(policy, view)
    assert res.interfaces == {"n": (), "u": ()}
    assert any("'n'" in n and "no running container" in n for n in res.notes)
    assert any("'u'" in n and "no veth to the host" in n for n in res.notes)


def test_plan_matches_the_veths_by_input_device() -> None:
    policy = _policy(f"    - {{name: pod-a, rate: 20Mbit, match: {{containers: [{{pod_uid: {POD_A}}}], "
                     "destinations: [{cidr: 198.19.0.0/16}]}}\n"
                     "    - {name: host, rate: 100Mbit}\n")
    ifaces: dict[str, tuple[str, ...]] = {"pod-a": ("cali1a", "cali9z")}
    plan = build(PlanInputs(policy, ["eth0"], container_ifaces=ifaces))
    cap0 = [r for r in _rules(plan) if {"counter": "cap-0"} in r]
    iif = {"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": {"set": ["cali1a", "cali9z"]}}}
    assert cap0 and all(iif in r for r in cap0)
    assert all({"mangle": {"key": {"meta": {"key": "priority"}}, "value": "7757:100"}} in r for r in cap0)
    # The container cap comes first, the host-wide cap after it: first match wins, as for every cap.
    rules = _rules(plan)
    assert rules.index(cap0[0]) < rules.index(next(r for r in rules if {"counter": "cap-1"} in r))
    docs = iptables.build(plan)
    assert "-d 198.19.0.0/16 -i cali1a" in docs[4].restore or "-i cali1a -d 198.19.0.0/16" in docs[4].restore
    assert "-i cali9z" in docs[4].restore
    # A container that went away leaves the rule: the plan differs, so the enforcer replaces the table.
    gone = build(PlanInputs(policy, ["eth0"], container_ifaces={"pod-a": ("cali1a",)}))
    assert gone.to_json() != plan.to_json()


def test_simulation_judges_containers_by_cgroup() -> None:
    policy = _policy(f"    - {{name: pod-a, rate: 20Mbit, match: {{containers: [{{pod_uid: {POD_A}}}]}}}}\n")
    compiled = compile_policy(policy)
    assert classify(compiled, Flow("198.19.1.1", 443, cgroup=_pod(POD_A, ID_A1))).cap == 0
    assert classify(compiled, Flow("198.19.1.1", 443, cgroup=_pod(POD_B, ID_B))).cap is None


def test_cgroup_of_hybrid_and_v1_hosts() -> None:
    hybrid = f"12:memory:/docker/{ID_B}\n1:name=systemd:/docker/{ID_B}\n0::/\n"
    assert cgroup_of(hybrid) == f"/docker/{ID_B}"
    assert cgroup_of(f"0::{_pod(POD_A, ID_A1)}\n") == _pod(POD_A, ID_A1)
    assert cgroup_of("0::/user.slice/user-0.slice/session-1.scope\n") == "/user.slice/user-0.slice/session-1.scope"
