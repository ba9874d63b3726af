"""Policy -> desired kernel state, as data. Pure: no I/O, testable without root.

nftables (table ``inet weightwarden``, chain on postrouting so forwarded
container traffic is covered too) classifies: allowlisted destinations return
untouched; the first matching cap sets the priority (shape), drops
(block) or only counts (alert). tc (an htb root, handle 7757:, on each policy
interface) shapes: one class per shaping cap. nft sets the packet's priority
to the cap's class id, which htb honours directly, so no tc classifier (fw,
u32) is needed and no fwmark bits are taken from other software. Traffic
with no class goes to htb's direct queue, never through a class, so allowed
traffic is not rate-limited by us.

What matches is decided in ``policy/match.py`` (allowlist ranges, each cap's
selector, with what this kernel cannot match dropped and noted): the plan only
writes those as rules, and ``policy simulate`` replays samples through the
same compiled match.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any

from weightwarden.agent.policy.match import Features, Net, Selector, by_version, cgroup_level, compile_policy
from weightwarden.agent.policy.model import Cap, Policy

TABLE = "weightwarden"
FAMILY = "inet"
CHAIN_HOOK = "postrouting"
CHAIN_CAPS = "caps"
TC_MAJOR = 0x7757  # "ww": our root qdisc's handle, how `enforce clear` recognises it
CLASS_BASE = 0x100
EGRESS_COUNTER = "egress"
ALLOWED_COUNTER = "allowed"
BUDGET_COUNTER = "budget-block"


@dataclass(frozen=True)
class CapSlot:
    """Where a cap lives in the kernel."""

    name: str
    index: int
    action: str
    rate_bps: int
    burst_bytes: int
    classid: str
    counter: str


@dataclass(frozen=True)
class PlanInputs:
    policy: Policy
    interfaces: list[str]
    resolved: dict[str, list[str]] = field(default_factory=dict)
    blocked_budgets: list[str] = field(default_factory=list)
    cgroupv2_paths: bool = True
    # Per cap with a 'containers' selector: the host-side veths its containers' packets come in by, read
    # each interval (enforce/container_links.py), so a container that starts or stops changes the plan.
    container_ifaces: dict[str, tuple[str, ...]] = field(default_factory=dict)
    container_notes: tuple[str, ...] = ()


@dataclass
class Plan:
    nft: list[dict[str, Any]]
    tc: dict[str, list[list[str]]]
    slots: list[CapSlot]
    interfaces: list[str]
    notes: list[str]

    def nft_document(self) -> dict[str, Any]:
        return {"nftables": self.nft}

    def to_json(self) -> dict[str, Any]:
        return {
            "interfaces": self.interfaces,
            "nftables": self.nft_document(),
            "tc": self.tc,
            "caps": [slot.__dict__ for slot in self.slots],
            "notes": self.notes,
        }


def default_burst(rate_bps: int) -> int:
    """5 ms at the cap rate, at least 32 KiB: below that htb's timer makes caps overshoot."""
    return max(32 * 1024, rate_bps // 8 // 200)


def _slot(index: int, cap: Cap) -> CapSlot:
    return CapSlot(
        name=cap.name,
        index=index,
        action=cap.action,
        rate_bps=cap.rate,
        burst_bytes=cap.burst if cap.burst is not None else default_burst(cap.rate),
        classid=f"{TC_MAJOR:x}:{CLASS_BASE + index:x}",
        counter=f"cap-{index}",
    )


def _elem(net: str) -> Any:
    n = ipaddress.ip_network(net)
    if n.prefixlen == n.max_prefixlen:
        return str(n.network_address)
    return {"prefix": {"addr": str(n.network_address), "len": n.prefixlen}}


def _match(left: dict[str, Any], right: Any, op: str = "==") -> dict[str, Any]:
    return {"match": {"op": op, "left": left, "right": right}}


def _meta(key: str) -> dict[str, Any]:
    return {"meta": {"key": key}}


def _daddr(version: int) -> dict[str, Any]:
    return {"payload": {"protocol": "ip" if version == 4 else "ip6", "field": "daddr"}}


def _set(name: str, version: int, nets: list[str]) -> dict[str, Any]:
    body: dict[str, Any] = {
        "family": FAMILY, "table": TABLE, "name": name,
        "type": "ipv4_addr" if version == 4 else "ipv6_addr", "flags": ["interval"],
    }
    if nets:
        body["elem"] = [_elem(n) for n in nets]
    return {"add": {"set": body}}


def _rule(chain: str, *expr: dict[str, Any]) -> dict[str, Any]:
    return {"add": {"rule": {"family": FAMILY, "table": TABLE, "chain": chain, "expr": list(expr)}}}


def _set_priority(classid: str) -> dict[str, Any]:
    return {"mangle": {"key": _meta("priority"), "value": classid}}


def _ports(ports: tuple[int, ...]) -> list[dict[str, Any]]:
    if not ports:
        return []
    right: Any = ports[0] if len(ports) == 1 else {"set": sorted(ports)}
    return [_match({"payload": {"protocol": "th", "field": "dport"}}, right)]


def _selector_conds(sel: Selector) -> list[list[dict[str, Any]]]:
    """The process side of a cap's match, as alternatives (one rule each): uid and cgroup, or the
    host-side veths of containers (no alternative at all: no container to cap, no rule)."""
    if sel.iifnames is not None:
        # A forwarded packet names its input device at postrouting (ip_output passes skb->dev as 'in').
        if not sel.iifnames:
            return []
        names = sel.iifnames
        return [[_match(_meta("iifname"), names[0] if len(names) == 1 else {"set": list(names)})]]
    common: list[dict[str, Any]] = []
    if sel.uids:
        common.append(_match(_meta("skuid"), sel.uids[0] if len(sel.uids) == 1 else {"set": list(sel.uids)}))
    if not sel.cgroups:
        return [common]
    # nft resolves a cgroup path to its id when the rule is loaded; one rule per cgroup, all enforced.
    return [[*common, _match({"socket": {"key": "cgroupv2", "level": cgroup_level(path)}}, path)]
            for path in sel.cgroups]


def _destination_conds(index: int, nets: tuple[Net, ...] | None) -> tuple[list[dict[str, Any]], list[list[dict[str, Any]]]]:
    """(sets to add, alternatives): plain ranges through per-cap sets, port-qualified ones one rule each."""
    if nets is None:
        return [], [[]]
    plain = [n for n in nets if not n.ports]
    d4, d6 = by_version(plain)
    sets = [_set(f"cap-{index}-dst4", 4, d4), _set(f"cap-{index}-dst6", 6, d6)]
    alts = [[_match(_daddr(version), f"@cap-{index}-dst{version}")] for version in (4, 6)]
    for net in sorted({n for n in nets if n.ports}, key=lambda n: (n.network.version, str(n.network), n.ports)):
        alts.append([_match(_daddr(net.network.version), _elem(str(net.network))), *_ports(net.ports)])
    return sets, alts


def build(inputs: PlanInputs) -> Plan:
    compiled = compile_policy(inputs.policy, inputs.resolved, Features(cgroupv2_paths=inputs.cgroupv2_paths),
                              inputs.container_ifaces)
    notes: list[str] = [*compiled.notes, *inputs.container_notes]
    cmds: list[dict[str, Any]] = [
        # add + delete + add in one transaction: the table is replaced atomically.
        {"add": {"table": {"family": FAMILY, "name": TABLE}}},
        {"delete": {"table": {"family": FAMILY, "name": TABLE}}},
        {"add": {"table": {"family": FAMILY, "name": TABLE}}},
    ]
    for name in (EGRESS_COUNTER, ALLOWED_COUNTER, BUDGET_COUNTER):
        cmds.append({"add": {"counter": {"family": FAMILY, "table": TABLE, "name": name}}})

    # Allowlist: plain networks in sets; port-qualified ones as rules.
    a4, a6 = by_version(n for n in compiled.allow if not n.ports)
    cmds += [_set("allow4", 4, a4), _set("allow6", 6, a6)]

    cmds.append({"add": {"chain": {"family": FAMILY, "table": TABLE, "name": CHAIN_HOOK, "type": "filter",
                                   "hook": "postrouting", "prio": 0, "policy": "accept"}}})
    cmds.append({"add": {"chain": {"family": FAMILY, "table": TABLE, "name": CHAIN_CAPS}}})
    cmds.append(_rule(CHAIN_HOOK, _match(_meta("oifname"), "lo"), {"return": None}))
    for iface in inputs.interfaces:
        cmds.append(_rule(CHAIN_HOOK, _match(_meta("oifname"), iface), {"jump": {"target": CHAIN_CAPS}}))

    allowed = {"counter": ALLOWED_COUNTER}
    cmds.append(_rule(CHAIN_CAPS, _match(_daddr(4), "@allow4"), allowed, {"return": None}))
    cmds.append(_rule(CHAIN_CAPS, _match(_daddr(6), "@allow6"), allowed, {"return": None}))
    for net in compiled.allow:
        if net.ports:
            cmds.append(_rule(CHAIN_CAPS, _match(_daddr(net.network.version), _elem(str(net.network))),
                              *_ports(net.ports), allowed, {"return": None}))
    cmds.append(_rule(CHAIN_CAPS, {"counter": EGRESS_COUNTER}))
    if inputs.blocked_budgets:
        notes.append(f"budget exhausted ({', '.join(inputs.blocked_budgets)}): non-allowlisted egress is blocked")
        cmds.append(_rule(CHAIN_CAPS, {"counter": BUDGET_COUNTER}, {"drop": None}))

    slots = [_slot(cc.index, cc.cap) for cc in compiled.caps]
    for cc, slot in zip(compiled.caps, slots, strict=True):
        cmds.append({"add": {"counter": {"family": FAMILY, "table": TABLE, "name": slot.counter}}})
        if not cc.enforced:
            continue  # never widened to a host-wide cap: left out, and `policy check` refuses it (selectors.py)
        action: list[dict[str, Any]] = [{"counter": slot.counter}]
        if cc.cap.action == "shape":
            action = [_set_priority(slot.classid), *action, {"return": None}]
        elif cc.cap.action == "block":
            action = [*action, {"drop": None}]
        sets, dests = _destination_conds(slot.index, cc.selector.nets)
        cmds += sets
        for conds in _selector_conds(cc.selector):
            for dst in dests:
                cmds.append(_rule(CHAIN_CAPS, *conds, *dst, *action))

    # Only a policy that shapes touches qdiscs: monitor-only and block-only leave them as they are.
    shaping = any(slot.action == "shape" for slot in slots)
    tc = {iface: tc_commands(iface, slots) for iface in inputs.interfaces} if shaping else {}
    if not inputs.interfaces:
        notes.append("no interface matches the policy: nothing is enforced")
    return Plan(cmds, tc, slots, list(inputs.interfaces), notes)


def tc_commands(iface: str, slots: list[CapSlot]) -> list[list[str]]:
    """argv lists that put the htb tree on one interface, in place: ``replace`` changes a tree that
    is there (or swaps whatever root was there) without ever leaving the interface uncapped."""
    root = f"{TC_MAJOR:x}:"
    cmds = [["tc", "qdisc", "replace", "dev", iface, "root", "handle", root, "htb"]]
    for slot in slots:
        if slot.action != "shape":
            continue
        rate = f"{slot.rate_bps}bit"
        burst = str(slot.burst_bytes)
        cmds.append(["tc", "class", "replace", "dev", iface, "parent", root, "classid", slot.classid, "htb",
                     "rate", rate, "ceil", rate, "burst", burst, "cburst", burst])
    return cmds
