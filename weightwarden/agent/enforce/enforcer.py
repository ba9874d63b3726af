"""Plan -> kernel, and back: apply in one step, detect drift, clear.

The enforcer remembers a fingerprint of the kernel state it left (rules and
qdiscs without counters). Each reconcile reads the state again; any
difference (rules flushed, qdisc deleted, a rule added to our table) is drift:
it is reported and the plan is applied again. The record is kept on disk so
`status` and a restarted agent know what was in force. It names the kernel it
was made on (boot id, network namespace): after a reboot the rules are gone
because the kernel is new, not because someone removed them, so a record from
another kernel is set aside instead of being reported as drift.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypedDict, cast

from weightwarden.agent.enforce import backends
from weightwarden.agent.enforce.kernel import KernelError
from weightwarden.agent.enforce.plan import CapSlotJson, Plan, PlanInputs
from weightwarden.events import write_private
from weightwarden.jsontypes import JsonObject


class KernelGeneration(TypedDict):
    """What identifies the kernel state our rules live in: this boot, this network namespace."""

    boot_id: str | None
    netns: int | None


class PolicyMeta(TypedDict):
    """Which policy a plan came from, as the record and the agent's events name it."""

    policy: str
    policy_digest: str
    policy_path: str


class EnforcementRecord(PolicyMeta, total=False):
    """``enforcement.json``: what the enforcer left in the kernel (read back from disk, so any key may
    be missing from a record an older agent wrote)."""

    backend: str
    plan_digest: str
    interfaces: list[str]
    caps: list[CapSlotJson]
    applied_at: float
    kernel: KernelGeneration
    tc_interfaces: list[str]
    fingerprint: backends.KernelState


@dataclass
class ReconcileResult:
    applied: bool
    drift: list[str] = field(default_factory=list)
    error: str | None = None


def plan_digest(plan: Plan, backend: backends.Backend) -> str:
    """What the backend would write for this plan: a change in its rules is a change of plan."""
    doc = {"plan": plan.to_json(), "rules": backend.build(plan)}
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()[:16]


def atomic_write(path: Path, data: Mapping[str, object]) -> None:
    """A state file, replaced atomically, readable by root only (it names processes and policies)."""
    write_private(path, json.dumps(data, indent=1, sort_keys=True))


def read_json(path: Path) -> JsonObject | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def read_record(path: Path) -> EnforcementRecord | None:
    """The enforcement record on disk; its keys are checked where they are read (``.get``)."""
    return cast(EnforcementRecord | None, read_json(path))


def kernel_generation() -> KernelGeneration:
    """What identifies the kernel state our rules live in: this boot, this network namespace."""
    try:
        boot_id = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        boot_id = None
    try:
        netns = Path("/proc/self/ns/net").stat().st_ino
    except OSError:
        netns = None
    return {"boot_id": boot_id, "netns": netns}


def same_kernel(record: EnforcementRecord, generation: KernelGeneration) -> bool:
    """A record without a generation (written before it was kept) counts as this kernel's."""
    kept = record.get("kernel")
    return not isinstance(kept, dict) or kept == generation


class Enforcer:
    def __init__(self, state_dir: Path, backend: str = "auto") -> None:
        self.record_path = state_dir / "enforcement.json"
        self.generation = kernel_generation()
        self.record: EnforcementRecord | None = read_record(self.record_path)
        if backend == "auto" and self.record is not None and self.record.get("backend") in backends.BACKENDS:
            # What is in force decides: status, drift checks and clear read the backend that applied it.
            backend = str(self.record["backend"])
        self.kernel: backends.Backend = backends.choose(backend)
        self.backend = self.kernel.name
        # Set when the record on disk came from an earlier boot or namespace: nothing of it is in force.
        self.previous_kernel: EnforcementRecord | None = None
        if self.record is not None and not same_kernel(self.record, self.generation):
            self.previous_kernel, self.record = self.record, None

    def fingerprint(self, interfaces: list[str]) -> backends.KernelState:
        return self.kernel.state(interfaces)

    def counters(self) -> dict[str, dict[str, int]]:
        return self.kernel.counters()

    def apply(self, inputs: PlanInputs, plan: Plan, policy_meta: PolicyMeta) -> None:
        self.kernel.apply(plan)
        self.record = {
            **policy_meta,
            "backend": self.backend,
            "plan_digest": plan_digest(plan, self.kernel),
            "interfaces": plan.interfaces,
            "caps": [s.to_json() for s in plan.slots],
            "applied_at": time.time(),
            "kernel": self.generation,
            "tc_interfaces": sorted(plan.tc),
            "fingerprint": self.fingerprint(sorted(plan.tc)),
        }
        atomic_write(self.record_path, self.record)

    def drift(self, interfaces: list[str]) -> list[str]:
        """What differs between the kernel and what we left there."""
        if self.record is None:
            return []
        expected = self.record.get("fingerprint", {})
        now = self.fingerprint(interfaces)
        found = []
        if now.get("rules") != expected.get("rules") or now.get("plan") != expected.get("plan"):
            missing = now.get("rules", now.get("plan")) is None
            found.append(f"{self.backend} rules missing" if missing else f"{self.backend} rules changed")
        for iface in interfaces:
            want, have = expected.get("tc", {}).get(iface), now.get("tc", {}).get(iface)
            if want != have:
                qdiscs = (have or {}).get("qdiscs", [])
                missing = not qdiscs or not any(q["parent"] == "root" and q["handle"] == "7757:0" for q in qdiscs)
                found.append(f"tc qdisc missing on {iface}" if missing else f"tc classes changed on {iface}")
        return found

    def reconcile(self, inputs: PlanInputs, plan: Plan, policy_meta: PolicyMeta) -> ReconcileResult:
        """Apply when the plan changed; otherwise repair drift. Never raises for kernel refusals."""
        try:
            if self.record is None or self.record.get("plan_digest") != plan_digest(plan, self.kernel) \
                    or self.record.get("backend") != self.backend:
                self.apply(inputs, plan, policy_meta)
                return ReconcileResult(applied=True)
            found = self.drift(sorted(plan.tc))
            if found:
                self.apply(inputs, plan, policy_meta)
                return ReconcileResult(applied=True, drift=found)
            return ReconcileResult(applied=False)
        except KernelError as exc:
            return ReconcileResult(applied=False, error=str(exc))

    def clear(self) -> backends.Cleared:
        """Remove every trace of ours, whatever state a killed agent left: caps (nft, iptables, tc)
        and the owner-resolution rules (NFQUEUE chains) that only a clean stop removes; forget the record."""
        if isinstance(self.kernel, backends.DryRunBackend):
            removed = self.kernel.clear()
        else:
            removed = backends.clear_everything()
            removed["owner_resolution"] = clear_resolution_rules()
        self.record = None
        self.record_path.unlink(missing_ok=True)
        return removed


def clear_resolution_rules() -> bool:
    """The sampler's NFQUEUE chains (WEIGHTWARDEN-RESOLVE, WEIGHTWARDEN-DNS): a clean stop removes
    them, a killed agent leaves them (they only bypass then, but they are ours to remove)."""
    from weightwarden.agent.attribution.nfqueue import rules as resolve_rules

    tools = resolve_rules.available_tools()
    if not tools:
        return False
    before = any(resolve_rules.CHAIN in resolve_rules.saved(t) or resolve_rules.DNS_CHAIN in resolve_rules.saved(t)
                 for t in tools)
    resolve_rules.remove(resolve_rules.plan(0, tools))
    return before
