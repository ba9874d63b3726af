"""The policy's host names are looked up at the first plan, whatever the machine's uptime."""

from __future__ import annotations

import pytest

import weightwarden.agent.daemon.host as host
from weightwarden.agent.policy.loader import parse_policy

POLICY = """apiVersion: weightwarden/v1
kind: EgressPolicy
metadata: {name: named}
spec:
  allow: [{host: mirror.internal}]
  caps:
    - name: uploads
      rate: 20Mbit
      match: {destinations: [{host: uploads.example}]}
"""


@pytest.mark.parametrize("uptime", [12.0, 299.0, 4000.0])
def test_names_are_resolved_at_the_first_plan_after_boot(monkeypatch: pytest.MonkeyPatch, uptime: float) -> None:
    asked: list[list[str]] = []

    def resolve(hosts: list[str]) -> dict[str, list[str]]:
        asked.append(sorted(hosts))
        return {h: ["198.18.7.1"] for h in hosts}

    monkeypatch.setattr(host, "resolve_hosts", resolve)
    monkeypatch.setattr("weightwarden.agent.daemon.host.time.monotonic", lambda: uptime)  # counts from boot
    names = host.HostNames()
    policy = parse_policy(POLICY).policy
    assert names.refresh(policy) == {"mirror.internal": ["198.18.7.1"], "uploads.example": ["198.18.7.1"]}
    assert asked == [["mirror.internal", "uploads.example"]]
    names.refresh(policy)
    assert len(asked) == 1, "looked up again before HOST_REFRESH_S"
    names.expire()
    names.refresh(policy)
    assert len(asked) == 2, "a new policy looks its names up at once"
