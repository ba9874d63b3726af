from pathlib import Path

import pytest

from weightwarden.agent.policy.loader import PolicyError, load_policy, parse_policy
from weightwarden.units import format_duration, parse_duration, parse_rate, parse_size

REPO = Path(__file__).resolve().parents[3]

CONTRACT = """apiVersion: weightwarden/v1
kind: EgressPolicy
metadata:
  name: example
spec:
  allow:
    - cidr: 198.18.9.0/24
  caps:
    - name: host-default
      rate: 20Mbit
"""


def test_contract_policy_is_accepted_as_is() -> None:
    policy = parse_policy(CONTRACT).policy
    assert policy.spec.caps[0].rate == 20_000_000
    assert policy.spec.caps[0].action == "shape"
    assert policy.spec.caps[0].match.destinations == []
    assert policy.spec.allow[0].cidr == "198.18.9.0/24"
    assert policy.spec.interfaces == []  # every non-loopback interface


def test_empty_spec_is_monitor_only() -> None:
    policy = parse_policy("apiVersion: weightwarden/v1\nkind: EgressPolicy\nmetadata: {name: m}\nspec: {}\n").policy
    assert policy.spec.caps == [] and policy.spec.budgets == []


@pytest.mark.parametrize("path", sorted((REPO / "weightwarden" / "policies").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_policies_are_valid(path: Path) -> None:
    load_policy(path)


def test_every_problem_is_named_with_path_and_line() -> None:
    text = CONTRACT.replace("name: example", "name: Bad Name").replace("20Mbit", "20Mbps") + "      burts: 1\n"
    with pytest.raises(PolicyError) as err:
        parse_policy(text)
    found = {(p.path, p.line) for p in err.value.problems}
    assert ("metadata.name", 4) in found
    assert ("spec.caps[0].rate", 10) in found
    assert ("spec.caps[0].burts", 11) in found
    assert any("Mbit" in p.message for p in err.value.problems)


def test_yaml_syntax_error_has_a_line() -> None:
    with pytest.raises(PolicyError) as err:
        parse_policy("apiVersion: weightwarden/v1\nkind: [oops\n")
    assert err.value.problems[0].line is not None


@pytest.mark.parametrize("hostile", [
    "caps: [{name: 'x\"; flush ruleset', rate: 1Mbit}]",
    "interfaces: ['eth0; rm -rf /']",
    "interfaces: ['$(reboot)']",
    "allow: [{host: 'evil\"; flush ruleset'}]",
    "allow: [{cidr: '10.0.0.0/8 drop'}]",
    "caps: [{name: ok, rate: 1Mbit, match: {cgroups: ['../../etc']}}]",
    "caps: [{name: ok, rate: 1Mbit, match: {executables: ['python3']}}]",
    "caps: [{name: ok, rate: '1Mbit; tc qdisc del'}]",
])
def test_hostile_values_never_reach_the_kernel(hostile: str) -> None:
    text = "apiVersion: weightwarden/v1\nkind: EgressPolicy\nmetadata: {name: h}\nspec:\n  " + hostile + "\n"
    with pytest.raises(PolicyError):
        parse_policy(text)


def test_duplicate_cap_names_rejected() -> None:
    text = CONTRACT + "    - name: host-default\n      rate: 1Mbit\n"
    with pytest.raises(PolicyError, match="unique"):
        parse_policy(text)


@pytest.mark.parametrize(("text", "bps"), [("20Mbit", 20_000_000), ("1.5Gbit", 1_500_000_000),
                                            ("500kbit", 500_000), ("100 Mbit/s", 100_000_000), (64000, 64000)])
def test_rates(text: str, bps: int) -> None:
    assert parse_rate(text) == bps


@pytest.mark.parametrize("text", ["20Mbps", "20MB", "fast", "-1Mbit", "0bit", ""])
def test_bad_rates(text: str) -> None:
    with pytest.raises(ValueError):
        parse_rate(text)


def test_sizes_and_durations() -> None:
    assert parse_size("50GB") == 50 * 10**9
    assert parse_size("256KiB") == 256 * 1024
    assert parse_size(1234) == 1234
    with pytest.raises(ValueError):
        parse_size("50G")  # G what? bytes or bits: say B
    assert parse_duration("24h") == 86400
    assert parse_duration("10m") == 600
    assert format_duration(56000) == "15h 33m"
