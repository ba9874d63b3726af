"""The nft document a plan builds, as plain JSON for tests to pick apart (the builder types it as JsonValue)."""

import json
from typing import Any

from weightwarden.agent.enforce.backends import nftables
from weightwarden.agent.enforce.plan import Plan


def commands(plan: Plan) -> list[dict[str, Any]]:
    """The nft commands of the plan's table, in order."""
    doc: dict[str, list[dict[str, Any]]] = json.loads(json.dumps(nftables.build(plan)))
    return doc["nftables"]


def rules(plan: Plan) -> list[dict[str, Any]]:
    """The ``add rule`` commands' bodies."""
    return [c["add"]["rule"] for c in commands(plan) if "rule" in c.get("add", {})]
