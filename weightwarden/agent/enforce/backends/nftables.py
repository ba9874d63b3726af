"""The nftables backend: the plan as one ``inet weightwarden`` table, built here as nft JSON (pure),
applied in one transaction (``nft -j -f``), read back and cleared through ``nft -j``.

The table's chain hooks postrouting, so forwarded container traffic is covered too. Allowlisted
destinations (plain networks in sets, port-qualified ones as rules) return untouched; the first
matching cap sets the packet's priority to its htb class id, which htb honours directly (no tc
classifier, no fwmark bits taken from other software), drops it (block), or only counts it (alert).
"""

from __future__ import annotations

import ipaddress
import json
import shutil

from weightwarden.agent.enforce import tc
from weightwarden.agent.enforce.backends.state import Cleared, KernelState
from weightwarden.agent.enforce.kernel import KernelError, run
from weightwarden.agent.enforce.plan import ALLOWED_COUNTER, BUDGET_COUNTER, EGRESS_COUNTER, Plan
from weightwarden.agent.policy.match import Net, Selector, by_version, cgroup_level
from weightwarden.jsontypes import JsonObject, JsonValue

TABLE = "weightwarden"
FAMILY = "inet"
CHAIN_HOOK = "postrouting"
CHAIN_CAPS = "caps"
VOLATILE = {"handle", "packets", "bytes"}
Document = JsonObject  # nft's JSON: {"nftables": [commands]}


# -- the builder (pure) ---------------------------------------------------------------


def _elem(net: str) -> JsonValue:
    n = ipaddress.ip_network(net)
    if n.prefixlen == n.max_prefixlen:
        return str(n.network_address)
    return {"prefix": {"addr": str(n.network_address), "len": n.prefixlen}}


def _match(left: JsonObject, right: JsonValue, op: str = "==") -> JsonObject:
    return {"match": {"op": op, "left": left, "right": right}}


def _meta(key: str) -> JsonObject:
    return {"meta": {"key": key}}


def _daddr(version: int) -> JsonObject:
    return {"payload": {"protocol": "ip" if version == 4 else "ip6", "field": "daddr"}}


def _set(name: str, version: int, nets: list[str]) -> JsonObject:
    body: JsonObject = {
        "family": FAMILY, "table": TABLE, "name": name,
        "type": "ipv4_addr" if version == 4 else "ipv6_addr", "flags": ["interval"],
    }
    if nets:
        body["elem"] = [_elem(n) for n in nets]
    return {"add": {"set": body}}


def _rule(chain: str, *expr: JsonObject) -> JsonObject:
    return {"add": {"rule": {"family": FAMILY, "table": TABLE, "chain": chain, "expr": list(expr)}}}


def _set_priority(classid: str) -> JsonObject:
    return {"mangle": {"key": _meta("priority"), "value": classid}}


def _ports(ports: tuple[int, ...]) -> list[JsonObject]:
    if not ports:
        return []
    right: JsonValue = ports[0] if len(ports) == 1 else {"set": [*sorted(ports)]}
    return [_match({"payload": {"protocol": "th", "field": "dport"}}, right)]


def _selector_conds(sel: Selector) -> list[list[JsonObject]]:
    """The process side of a cap's match, as alternatives (one rule each): uid and cgroup, or the
    host-side veths of containers (no alternative at all: no container to cap, no rule)."""
    if sel.iifnames is not None:
        # A forwarded packet names its input device at postrouting (ip_output passes skb->dev as 'in').
        if not sel.iifnames:
            return []
        names = sel.iifnames
        return [[_match(_meta("iifname"), names[0] if len(names) == 1 else {"set": list(names)})]]
    common: list[JsonObject] = []
    if sel.uids:
        common.append(_match(_meta("skuid"), sel.uids[0] if len(sel.uids) == 1 else {"set": list(sel.uids)}))
    if not sel.cgroups:
        return [common]
    # nft resolves a cgroup path to its id when the rule is loaded; one rule per cgroup, all enforced.
    return [[*common, _match({"socket": {"key": "cgroupv2", "level": cgroup_level(path)}}, path)]
            for path in sel.cgroups]


def _destination_conds(index: int, nets: tuple[Net, ...] | None) -> tuple[list[JsonObject], list[list[JsonObject]]]:
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


def build(plan: Plan) -> Document:
    """The whole table as one nft transaction: add + delete + add replaces it atomically."""
    cmds: list[JsonValue] = [
        {"add": {"table": {"family": FAMILY, "name": TABLE}}},
        {"delete": {"table": {"family": FAMILY, "name": TABLE}}},
        {"add": {"table": {"family": FAMILY, "name": TABLE}}},
    ]
    for name in (EGRESS_COUNTER, ALLOWED_COUNTER, BUDGET_COUNTER):
        cmds.append({"add": {"counter": {"family": FAMILY, "table": TABLE, "name": name}}})

    # Allowlist: plain networks in sets; port-qualified ones as rules.
    allow = plan.compiled.allow
    a4, a6 = by_version(n for n in allow if not n.ports)
    cmds += [_set("allow4", 4, a4), _set("allow6", 6, a6)]

    cmds.append({"add": {"chain": {"family": FAMILY, "table": TABLE, "name": CHAIN_HOOK, "type": "filter",
                                   "hook": "postrouting", "prio": 0, "policy": "accept"}}})
    cmds.append({"add": {"chain": {"family": FAMILY, "table": TABLE, "name": CHAIN_CAPS}}})
    cmds.append(_rule(CHAIN_HOOK, _match(_meta("oifname"), "lo"), {"return": None}))
    for iface in plan.interfaces:
        cmds.append(_rule(CHAIN_HOOK, _match(_meta("oifname"), iface), {"jump": {"target": CHAIN_CAPS}}))

    allowed: JsonObject = {"counter": ALLOWED_COUNTER}
    cmds.append(_rule(CHAIN_CAPS, _match(_daddr(4), "@allow4"), allowed, {"return": None}))
    cmds.append(_rule(CHAIN_CAPS, _match(_daddr(6), "@allow6"), allowed, {"return": None}))
    for net in allow:
        if net.ports:
            cmds.append(_rule(CHAIN_CAPS, _match(_daddr(net.network.version), _elem(str(net.network))),
                              *_ports(net.ports), allowed, {"return": None}))
    cmds.append(_rule(CHAIN_CAPS, {"counter": EGRESS_COUNTER}))
    if plan.blocked_budgets:
        cmds.append(_rule(CHAIN_CAPS, {"counter": BUDGET_COUNTER}, {"drop": None}))

    enforced = {slot.index for _sel, slot in plan.enforced()}
    selectors = dict((slot.index, sel) for sel, slot in plan.enforced())
    for slot in plan.slots:
        cmds.append({"add": {"counter": {"family": FAMILY, "table": TABLE, "name": slot.counter}}})
        if slot.index not in enforced:
            continue  # never widened to a host-wide cap: left out, and `policy check` refuses it (selectors.py)
        action: list[JsonObject] = [{"counter": slot.counter}]
        if slot.action == "shape":
            action = [_set_priority(slot.classid), *action, {"return": None}]
        elif slot.action == "block":
            action = [*action, {"drop": None}]
        sel = selectors[slot.index]
        sets, dests = _destination_conds(slot.index, sel.nets)
        cmds += sets
        for conds in _selector_conds(sel):
            for dst in dests:
                cmds.append(_rule(CHAIN_CAPS, *conds, *dst, *action))
    return {"nftables": cmds}


# -- the kernel side ---------------------------------------------------------------------


def available() -> bool:
    if shutil.which("nft") is None:
        return False
    return run(["nft", "list", "tables"], check=False).returncode == 0


def apply(document: Document) -> None:
    """One transaction: the kernel takes the whole table or none of it."""
    run(["nft", "-j", "-f", "-"], stdin=json.dumps(document))


def read_table() -> list[JsonObject] | None:
    """Our table as nft's JSON objects, or None when it does not exist."""
    res = run(["nft", "-j", "list", "table", FAMILY, TABLE], check=False)
    if res.returncode != 0:
        if "No such file" in res.stderr or "does not exist" in res.stderr:
            return None
        raise KernelError(f"nft list table: {res.stderr.strip()}")
    objects: list[JsonObject] = json.loads(res.stdout).get("nftables", [])
    return [o for o in objects if "metainfo" not in o]


def _strip(value: JsonValue) -> JsonValue:
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items() if k not in VOLATILE}
    if isinstance(value, list):
        return [_strip(v) for v in value]
    return value


def normalize(objects: list[JsonObject] | None) -> list[JsonValue] | None:
    """The table without handles and counter values: equal iff the rules are."""
    return None if objects is None else [_strip(o) for o in objects]


def _count(value: JsonValue) -> int:
    return int(value) if isinstance(value, int | float | str) else 0


def counters(objects: list[JsonObject] | None) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for obj in objects or []:
        c = obj.get("counter")
        if isinstance(c, dict):
            out[str(c["name"])] = {"packets": _count(c.get("packets", 0)), "bytes": _count(c.get("bytes", 0))}
    return out


def clear() -> bool:
    """Delete our table; True if there was one."""
    if read_table() is None:
        return False
    run(["nft", "delete", "table", FAMILY, TABLE])
    return True


def present() -> bool:
    try:
        return read_table() is not None
    except KernelError:
        return False


class NftablesBackend:
    name = "nftables"

    @staticmethod
    def available() -> bool:
        return available()

    def build(self, plan: Plan) -> Document:
        return build(plan)

    def apply(self, plan: Plan) -> None:
        # tc first: classes exist before any packet is steered into them.
        tc.apply_plan(plan)
        apply(build(plan))

    def state(self, interfaces: list[str]) -> KernelState:
        return {"backend": self.name, "rules": normalize(read_table()), "tc": tc.read_interfaces(interfaces)}

    def counters(self) -> dict[str, dict[str, int]]:
        return counters(read_table())

    def clear_rules(self) -> bool:
        """Only the rules (``enforce clear`` removes the shared tc trees once, after every backend's rules)."""
        return clear()

    def clear(self) -> Cleared:
        return {"nftables": clear(), "tc": tc.clear()}


__all__ = ["NftablesBackend", "apply", "available", "build", "clear", "counters", "normalize", "present", "read_table"]
