"""Enforcement backends: one small interface, a registry, three implementations (as CrowdSec's
bouncer has). Each backend owns its builder (the plan as its own rules, pure) beside its applier.

- ``nftables``: one ``inet weightwarden`` table, replaced in one transaction (``nft -j -f``);
- ``iptables``: the same caps through ``iptables-restore`` (CLASSIFY), for hosts without nft;
- ``dry-run``: touches nothing, keeps what it would have applied.

The nft and iptables backends shape with the same htb tree (``enforce/tc.py``); the enforcer never
asks which backend it has, it only calls these methods. A new backend is one module here and one
line in ``REGISTRY``; ``tests/agent/enforce/test_backends.py`` is the conformance test each passes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from weightwarden.agent.enforce import tc
from weightwarden.agent.enforce.backends.dryrun import DryRunBackend
from weightwarden.agent.enforce.backends.iptables import IptablesBackend
from weightwarden.agent.enforce.backends.nftables import NftablesBackend
from weightwarden.agent.enforce.backends.state import Cleared, KernelDocument, KernelState
from weightwarden.agent.enforce.kernel import KernelError
from weightwarden.agent.enforce.plan import Plan


class Backend(Protocol):
    name: str

    @staticmethod
    def available() -> bool:
        """Whether this host has what the backend needs (the tool, a kernel that answers it)."""

    def build(self, plan: Plan) -> KernelDocument:
        """The plan as this backend's kernel document (pure, JSON-able): what ``--dry-run`` prints."""

    def apply(self, plan: Plan) -> None:
        """Put the plan in the kernel: shaping first, then the rules in one transaction."""

    def state(self, interfaces: list[str]) -> KernelState:
        """What is in force now, without counters: equal to a later read iff nothing changed."""

    def counters(self) -> dict[str, dict[str, int]]:
        """Bytes and packets per named counter (egress, allowed, cap-N...)."""

    def clear(self) -> Cleared:
        """Remove everything this backend may have left, whatever state it was left in."""


# By name; ``auto`` tries KERNEL_BACKENDS in order, and dry-run is never chosen automatically.
REGISTRY: dict[str, Callable[[], Backend]] = {
    NftablesBackend.name: NftablesBackend,
    IptablesBackend.name: IptablesBackend,
    DryRunBackend.name: DryRunBackend,
}
KERNEL_BACKENDS = (NftablesBackend.name, IptablesBackend.name)
BACKENDS = ("auto", *REGISTRY)


def choose(requested: str = "auto") -> Backend:
    if requested != "auto":
        if requested not in REGISTRY:
            raise KernelError(f"unknown enforcement backend {requested!r}: one of {', '.join(BACKENDS)}")
        return REGISTRY[requested]()
    for name in KERNEL_BACKENDS:
        backend = REGISTRY[name]()
        if backend.available():
            return backend
    raise KernelError("neither nft nor iptables-restore is usable: cannot enforce caps")


def documents(plan: Plan) -> dict[str, KernelDocument]:
    """Every kernel backend's document for one plan (``enforce apply --dry-run``)."""
    return {name: REGISTRY[name]().build(plan) for name in KERNEL_BACKENDS}


def clear_everything() -> Cleared:
    """``enforce clear``: every backend's leftovers, whichever backend the agent last used."""
    kernel: tuple[NftablesBackend | IptablesBackend, ...] = (NftablesBackend(), IptablesBackend())
    removed: Cleared = {b.name: b.clear_rules() if b.available() else False for b in kernel}
    removed["tc"] = tc.clear()
    return removed


__all__ = ["BACKENDS", "KERNEL_BACKENDS", "REGISTRY", "Backend", "Cleared", "DryRunBackend", "IptablesBackend",
           "KernelDocument", "KernelState", "NftablesBackend", "choose", "clear_everything", "documents"]
