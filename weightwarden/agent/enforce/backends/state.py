"""What every backend hands back, typed: its kernel document, the state it reads back, what it cleared."""

from __future__ import annotations

from collections.abc import Mapping
from typing import NotRequired, TypedDict

from weightwarden.agent.enforce.plan import PlanJson
from weightwarden.agent.enforce.tc import TcState
from weightwarden.jsontypes import JsonValue

# The plan as a backend's own rules (nft's JSON, iptables-restore input, the dry-run's plan): printed by
# ``--dry-run`` and hashed into the plan digest, so JSON-able, whatever its shape.
KernelDocument = Mapping[str, object]

# What ``clear`` removed, by part: a backend's rules (True if there were some), "tc": the interfaces
# whose htb tree went, "owner_resolution": the sampler's NFQUEUE chains.
Cleared = dict[str, bool | list[str]]


class KernelState(TypedDict):
    """What is in force, without counters: equal to a later read iff nothing changed. Kept in the
    enforcement record (JSON on disk), compared at each reconcile."""

    backend: str
    rules: NotRequired[list[JsonValue] | dict[str, list[str]] | None]  # nft's table, or iptables' chains
    tc: NotRequired[dict[str, TcState]]
    plan: NotRequired[PlanJson | None]  # the dry-run backend: the last plan it was given
