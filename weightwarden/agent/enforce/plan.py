"""Policy -> the kernel state to ask for, as data, whatever the backend. Pure: no I/O, testable without root.

The plan says what to enforce and with what shaping: the compiled match (``policy/match.py``:
the allowlist, each cap's selector, with what this kernel cannot match dropped and noted), one
slot per cap (its action, rate, htb class and counter), and the tc commands that put the htb tree
(root handle 7757:) on each policy interface. Each backend turns the same plan into its own rules
beside its own applier (``backends/nftables.py``, ``backends/iptables.py``): nft or iptables
classify (allowlisted destinations return untouched; the first matching cap sets the packet's
priority to its class, drops it, or only counts it), tc shapes. Traffic with no class goes to
htb's direct queue, so allowed traffic is never rate-limited by us. ``policy simulate`` replays
samples through the same compiled match.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TypedDict

from weightwarden.agent.policy.match import Compiled, Features, Net, Selector, compile_policy
from weightwarden.agent.policy.model import Cap, Policy

TC_MAJOR = 0x7757  # "ww": our root qdisc's handle, how `enforce clear` recognises it
CLASS_BASE = 0x100
EGRESS_COUNTER = "egress"
ALLOWED_COUNTER = "allowed"
BUDGET_COUNTER = "budget-block"


class NetJson(TypedDict):
    network: str
    ports: list[int]


class SelectorJson(TypedDict):
    uids: list[int]
    cgroups: list[str]
    iifnames: list[str] | None
    nets: list[NetJson] | None


class CapSlotJson(TypedDict):
    name: str
    index: int
    action: str
    rate_bps: int
    burst_bytes: int
    classid: str
    counter: str


class PlanJson(TypedDict):
    interfaces: list[str]
    allow: list[NetJson]
    caps: list[CapSlotJson]
    match: list[SelectorJson]
    blocked_budgets: list[str]
    tc: dict[str, list[list[str]]]
    notes: list[str]


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

    def to_json(self) -> CapSlotJson:
        return CapSlotJson(name=self.name, index=self.index, action=self.action, rate_bps=self.rate_bps,
                           burst_bytes=self.burst_bytes, classid=self.classid, counter=self.counter)


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


@dataclass(frozen=True)
class Plan:
    """What to enforce, for any backend: the compiled match, the cap slots and the tc commands."""

    inputs: PlanInputs
    compiled: Compiled
    slots: list[CapSlot]
    tc: dict[str, list[list[str]]]
    interfaces: list[str]
    notes: list[str]

    @property
    def blocked_budgets(self) -> list[str]:
        return self.inputs.blocked_budgets

    def enforced(self) -> list[tuple[Selector, CapSlot]]:
        """The caps the kernel enforces, in policy order, each with its slot (refused ones left out)."""
        return [(cc.selector, slot) for cc, slot in zip(self.compiled.caps, self.slots, strict=True) if cc.enforced]

    def to_json(self) -> PlanJson:
        """Everything the rules depend on (a change here is a change in the kernel), backend-neutral."""
        return {
            "interfaces": self.interfaces,
            "allow": [_net_json(n) for n in self.compiled.allow],
            "caps": [slot.to_json() for slot in self.slots],
            "match": [_selector_json(sel) for sel, _slot in self.enforced()],
            "blocked_budgets": self.blocked_budgets,
            "tc": self.tc,
            "notes": self.notes,
        }


def _net_json(net: Net) -> NetJson:
    return {"network": str(net.network), "ports": list(net.ports)}


def _selector_json(sel: Selector) -> SelectorJson:
    return {"uids": list(sel.uids), "cgroups": list(sel.cgroups),
            "iifnames": None if sel.iifnames is None else list(sel.iifnames),
            "nets": None if sel.nets is None else [_net_json(n) for n in sel.nets]}


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


def build(inputs: PlanInputs) -> Plan:
    compiled = compile_policy(inputs.policy, inputs.resolved, Features(cgroupv2_paths=inputs.cgroupv2_paths),
                              inputs.container_ifaces)
    notes: list[str] = [*compiled.notes, *inputs.container_notes]
    if inputs.blocked_budgets:
        notes.append(f"budget exhausted ({', '.join(inputs.blocked_budgets)}): non-allowlisted egress is blocked")
    slots = [_slot(cc.index, cc.cap) for cc in compiled.caps]
    # Only a policy that shapes touches qdiscs: monitor-only and block-only leave them as they are.
    shaping = any(slot.action == "shape" for slot in slots)
    tc = {iface: tc_commands(iface, slots) for iface in inputs.interfaces} if shaping else {}
    if not inputs.interfaces:
        notes.append("no interface matches the policy: nothing is enforced")
    return Plan(inputs, compiled, slots, tc, list(inputs.interfaces), notes)


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
