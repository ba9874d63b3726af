"""raw_sockets: who may send on packet sockets, and what happens to the others; validated, in the schema,
explained."""

from __future__ import annotations

from typing import Any

import pytest

from weightwarden.agent.policy.explain import explain
from weightwarden.agent.policy.loader import PolicyError, parse_policy
from weightwarden.agent.policy.schema import policy_schema

HEAD = "apiVersion: weightwarden/v1\nkind: EgressPolicy\nmetadata: {name: p}\nspec:\n"


def test_default_is_alert_with_nobody_allowed() -> None:
    spec = parse_policy(HEAD + "  interval: 5s\n").policy.spec
    assert spec.raw_sockets.action == "alert" and spec.raw_sockets.allow == []


def test_kill_with_an_allowlist() -> None:
    spec = parse_policy(HEAD + "  raw_sockets:\n    action: kill\n    allow: [/usr/sbin/dhclient, /usr/sbin/lldpd]\n"
                        ).policy.spec
    assert spec.raw_sockets.action == "kill" and spec.raw_sockets.allow == ["/usr/sbin/dhclient", "/usr/sbin/lldpd"]


@pytest.mark.parametrize("fragment, words", [
    ("  raw_sockets: {action: drop}\n", "action"),
    ("  raw_sockets: {allow: [dhclient]}\n", "absolute paths"),
    ("  raw_sockets: {alow: [/usr/sbin/dhclient]}\n", "alow"),  # a typo is an error, not a default
])
def test_mistakes_are_errors_that_say_what_is_wrong(fragment: str, words: str) -> None:
    with pytest.raises(PolicyError) as err:
        parse_policy(HEAD + fragment)
    assert any(words in p.render("p.yaml") for p in err.value.problems), [p.render("p.yaml") for p in err.value.problems]


def test_schema_and_explain() -> None:
    schema: Any = policy_schema()  # JSON: picked apart by key
    raw = schema["$defs"]["RawSockets"]
    assert raw["additionalProperties"] is False and raw["properties"]["action"]["enum"] == ["alert", "kill"]
    policy = parse_policy(HEAD + "  raw_sockets: {action: kill, allow: [/usr/sbin/dhclient]}\n").policy
    text = " ".join(explain(policy, 10**9)["summary"])
    assert "except /usr/sbin/dhclient is killed in the kernel" in text
    alert = " ".join(explain(parse_policy(HEAD + "  interval: 5s\n").policy, 10**9)["summary"])
    assert "Packet sockets (AF_PACKET, AF_XDP): every one in use is reported" in alert
