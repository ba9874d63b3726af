"""Enforcement backends: one small interface, three implementations (as CrowdSec's bouncer has).

- ``nftables``: one ``inet weightwarden`` table, replaced in one transaction (``nft -j -f``);
- ``iptables``: the same caps through ``iptables-restore`` (CLASSIFY), for hosts without nft;
- ``dry-run``: touches nothing, keeps what it would have applied (``run --backend dry-run`` lets a
  policy author watch a policy's plans and cap hits on a live host without enforcing anything).

The nft and iptables backends shape with the same htb tree (``tc.py``); the enforcer
never asks which backend it has, it only calls these methods.
"""

from __future__ import annotations

from typing import Any, Protocol

from weightwarden.agent.enforce import iptables, nftables, tc
from weightwarden.agent.enforce.kernel import KernelError
from weightwarden.agent.enforce.plan import Plan, PlanInputs


class Backend(Protocol):
    name: str

    def apply(self, inputs: PlanInputs, plan: Plan) -> None:
        """Put the plan in the kernel: shaping first, then the rules in one transaction."""

    def state(self, interfaces: list[str]) -> dict[str, Any]:
        """What is in force now, without counters: equal to a later read iff nothing changed."""

    def counters(self) -> dict[str, dict[str, int]]:
        """Bytes and packets per named counter (egress, allowed, cap-N...)."""

    def clear(self) -> dict[str, Any]:
        """Remove everything this backend may have left, whatever state it was left in."""


class _Kernel:
    """What both real backends share: the htb tree on each policy interface."""

    name = ""

    def _rules_apply(self, inputs: PlanInputs, plan: Plan) -> None:
        raise NotImplementedError

    def _rules_state(self) -> Any:
        raise NotImplementedError

    def apply(self, inputs: PlanInputs, plan: Plan) -> None:
        # tc first: classes exist before any packet is steered into them.
        for iface, commands in plan.tc.items():
            tc.apply(iface, commands)
        self._rules_apply(inputs, plan)

    def state(self, interfaces: list[str]) -> dict[str, Any]:
        return {"backend": self.name, "rules": self._rules_state(), "tc": {i: tc.read_interface(i) for i in interfaces}}


class NftablesBackend(_Kernel):
    name = "nftables"

    def _rules_apply(self, inputs: PlanInputs, plan: Plan) -> None:
        nftables.apply(plan.nft_document())

    def _rules_state(self) -> Any:
        return nftables.normalize(nftables.read_table())

    def counters(self) -> dict[str, dict[str, int]]:
        return nftables.counters(nftables.read_table())

    def clear(self) -> dict[str, Any]:
        return {"nftables": nftables.clear(), "tc": tc.clear()}


class IptablesBackend(_Kernel):
    name = "iptables"

    def _rules_apply(self, inputs: PlanInputs, plan: Plan) -> None:
        iptables.apply(iptables.build(inputs, plan))

    def _rules_state(self) -> Any:
        return iptables.read_state()

    def counters(self) -> dict[str, dict[str, int]]:
        return iptables.counters()

    def clear(self) -> dict[str, Any]:
        return {"iptables": iptables.clear(), "tc": tc.clear()}


class DryRunBackend:
    """Applies nothing; remembers the last plan so drift checks and status stay meaningful."""

    name = "dry-run"

    def __init__(self) -> None:
        self.applied: list[dict[str, Any]] = []

    def apply(self, inputs: PlanInputs, plan: Plan) -> None:
        self.applied.append(plan.to_json())

    def state(self, interfaces: list[str]) -> dict[str, Any]:
        return {"backend": self.name, "plan": self.applied[-1] if self.applied else None}

    def counters(self) -> dict[str, dict[str, int]]:
        return {}

    def clear(self) -> dict[str, Any]:
        self.applied.clear()
        return {"dry-run": True}


def choose(requested: str = "auto") -> Backend:
    if requested == "dry-run":
        return DryRunBackend()
    if requested == "nftables" or (requested == "auto" and nftables.available()):
        return NftablesBackend()
    if requested in ("auto", "iptables") and iptables.available():
        return IptablesBackend()
    raise KernelError("neither nft nor iptables-restore is usable: cannot enforce caps")


def clear_everything() -> dict[str, Any]:
    """``enforce clear``: every backend's leftovers, whichever backend the agent last used."""
    removed: dict[str, Any] = {"nftables": nftables.clear() if nftables.available() else False,
                               "iptables": iptables.clear() if iptables.available() else False,
                               "tc": tc.clear()}
    return removed


BACKENDS = ("auto", "nftables", "iptables", "dry-run")
