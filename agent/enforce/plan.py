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
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any

from weightwarden.agent.policy.model import Cap, Destination, Policy

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


def _networks(dests: list[Destination], resolved: dict[str, list[str]]) -> tuple[list[str], list[str]]:
    v4: list[str] = []
    v6: list[str] = []
    for dest in dests:
        addrs = [dest.cidr] if dest.cidr else resolved.get(dest.host or "", [])
        for addr in addrs:
            net = ipaddress.ip_network(addr, strict=False)
            (v4 if net.version == 4 else v6).append(str(net))
    return sorted(set(v4)), sorted(set(v6))


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


def _ports(dest: Destination) -> list[dict[str, Any]]:
    if not dest.ports:
        return []
    right: Any = dest.ports[0] if len(dest.ports) == 1 else {"set": sorted(dest.ports)}
    return [_match({"payload": {"protocol": "th", "field": "dport"}}, right)]


def build(inputs: PlanInputs) -> Plan:
    spec = inputs.policy.spec
    notes: list[str] = []
    cmds: list[dict[str, Any]] = [
        # add + delete + add in one transaction: the table is replaced atomically.
        {"add": {"table": {"family": FAMILY, "name": TABLE}}},
        {"delete": {"table": {"family": FAMILY, "name": TABLE}}},
        {"add": {"table": {"family": FAMILY, "name": TABLE}}},
    ]
    for name in (EGRESS_COUNTER, ALLOWED_COUNTER, BUDGET_COUNTER):
        cmds.append({"add": {"counter": {"family": FAMILY, "table": TABLE, "name": name}}})

    # Allowlist: plain networks in sets; port-qualified ones as rules.
    plain = [d for d in spec.allow if not d.ports]
    a4, a6 = _networks(plain, inputs.resolved)
    cmds += [_set("allow4", 4, a4), _set("allow6", 6, a6)]
    for dest in spec.allow:
        if dest.host and not inputs.resolved.get(dest.host):
            notes.append(f"allow host {dest.host!r} did not resolve: it is not exempt until it does")

    cmds.append({"add": {"chain": {"family": FAMILY, "table": TABLE, "name": CHAIN_HOOK, "type": "filter",
                                   "hook": "postrouting", "prio": 0, "policy": "accept"}}})
    cmds.append({"add": {"chain": {"family": FAMILY, "table": TABLE, "name": CHAIN_CAPS}}})
    cmds.append(_rule(CHAIN_HOOK, _match(_meta("oifname"), "lo"), {"return": None}))
    for iface in inputs.interfaces:
        cmds.append(_rule(CHAIN_HOOK, _match(_meta("oifname"), iface), {"jump": {"target": CHAIN_CAPS}}))

    allowed = {"counter": ALLOWED_COUNTER}
    cmds.append(_rule(CHAIN_CAPS, _match(_daddr(4), "@allow4"), allowed, {"return": None}))
    cmds.append(_rule(CHAIN_CAPS, _match(_daddr(6), "@allow6"), allowed, {"return": None}))
    for dest in spec.allow:
        if not dest.ports:
            continue
        d4, d6 = _networks([dest], inputs.resolved)
        for version, nets in ((4, d4), (6, d6)):
            for net in nets:
                cmds.append(_rule(CHAIN_CAPS, _match(_daddr(version), _elem(net)), *_ports(dest), allowed,
                                  {"return": None}))
    cmds.append(_rule(CHAIN_CAPS, {"counter": EGRESS_COUNTER}))
    if inputs.blocked_budgets:
        notes.append(f"budget exhausted ({', '.join(inputs.blocked_budgets)}): non-allowlisted egress is blocked")
        cmds.append(_rule(CHAIN_CAPS, {"counter": BUDGET_COUNTER}, {"drop": None}))

    slots = [_slot(i, cap) for i, cap in enumerate(spec.caps)]
    for cap, slot in zip(spec.caps, slots, strict=True):
        cmds.append({"add": {"counter": {"family": FAMILY, "table": TABLE, "name": slot.counter}}})
        conds: list[dict[str, Any]] = []
        m = cap.match
        if m.uids:
            conds.append(_match(_meta("skuid"), m.uids[0] if len(m.uids) == 1 else {"set": sorted(m.uids)}))
        if m.cgroups:
            if inputs.cgroupv2_paths:
                # nft resolves a cgroup path to its id when the rule is loaded.
                for path in m.cgroups[:1]:
                    level = len([p for p in path.strip("/").split("/") if p])
                    conds.append(_match({"socket": {"key": "cgroupv2", "level": level}}, path.strip("/")))
                if len(m.cgroups) > 1:
                    notes.append(f"cap {cap.name!r}: only the first cgroup is matched in the kernel")
            else:
                notes.append(f"cap {cap.name!r}: cgroup matching needs a unified cgroup v2 mount; "
                             "falling back to a host-level cap (all matching egress)")
        if m.executables:
            notes.append(f"cap {cap.name!r}: executables cannot be matched in the kernel yet; "
                         "falling back to a host-level cap (all matching egress)")
        d4, d6 = _networks(m.destinations, inputs.resolved)
        action: list[dict[str, Any]] = [{"counter": slot.counter}]
        if cap.action == "shape":
            action = [_set_priority(slot.classid), *action, {"return": None}]
        elif cap.action == "block":
            action = [*action, {"drop": None}]
        if m.destinations:
            cmds += [_set(f"cap-{slot.index}-dst4", 4, d4), _set(f"cap-{slot.index}-dst6", 6, d6)]
            for version in (4, 6):
                dst = _match(_daddr(version), f"@cap-{slot.index}-dst{version}")
                cmds.append(_rule(CHAIN_CAPS, *conds, dst, *action))
        else:
            cmds.append(_rule(CHAIN_CAPS, *conds, *action))

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
