"""The dry-run backend: touches nothing, keeps what it would have applied (``run --backend dry-run``
lets a policy author watch a policy's plans and cap hits on a live host without enforcing anything)."""

from __future__ import annotations

from weightwarden.agent.enforce.backends.state import Cleared, KernelState
from weightwarden.agent.enforce.plan import Plan, PlanJson


class DryRunBackend:
    name = "dry-run"

    def __init__(self) -> None:
        self.applied: list[PlanJson] = []

    @staticmethod
    def available() -> bool:
        return True

    def build(self, plan: Plan) -> PlanJson:
        return plan.to_json()

    def apply(self, plan: Plan) -> None:
        self.applied.append(self.build(plan))

    def state(self, interfaces: list[str]) -> KernelState:
        return {"backend": self.name, "plan": self.applied[-1] if self.applied else None}

    def counters(self) -> dict[str, dict[str, int]]:
        return {}

    def clear(self) -> Cleared:
        self.applied.clear()
        return {"dry-run": True}
