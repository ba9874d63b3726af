"""policy diff in words, explain's fastest route not allowlisted, and the JSON Schema editors use."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

from weightwarden.agent.policy.diff import diff
from weightwarden.agent.policy.explain import explain
from weightwarden.agent.policy.loader import parse_policy
from weightwarden.agent.policy.schema import policy_schema, schema_text, shipped_text

REPO = Path(__file__).resolve().parents[3]
HEAD = "apiVersion: weightwarden/v1\nkind: EgressPolicy\nmetadata: {name: d}\nspec:\n"
OLD = HEAD + ("  allow: [{cidr: 10.0.0.0/8}, {cidr: 192.168.0.0/16}]\n"
              "  caps:\n    - {name: scp, rate: 1Mbit, match: {uids: [1000]}}\n    - {name: host, rate: 20Mbit}\n"
              "  budgets: [{name: daily, bytes: 50GB}]\n")


def test_diff_follows_each_change_to_the_traffic_it_concerns() -> None:
    new = HEAD + ("  allow: [{cidr: 10.0.0.0/8}, {cidr: 203.0.113.0/24}]\n"
                  "  caps:\n    - {name: host, rate: 100Mbit}\n"
                  "  budgets: [{name: daily, bytes: 20GB, action: block}]\n")
    report = diff(parse_policy(OLD).policy, parse_policy(new).policy, 140 * 10**9)
    text = "\n".join(report["changes"])
    assert "Traffic to 192.168.0.0/16 is no longer allowlisted: it is now shaped by cap 'host' to 100 Mbit/s" in text
    assert "Traffic to 203.0.113.0/24 is now allowlisted (measured, never capped); it was shaped by cap 'host' to " \
           "20 Mbit/s" in text
    assert "Cap 'scp' (shape at 1 Mbit/s (125 kB/s), uid 1000 to any non-allowlisted destination) is removed: that " \
           "traffic is now shaped by cap 'host' to 100 Mbit/s" in text
    assert "Cap 'host' (any process to any non-allowlisted destination): shape at 20 Mbit/s (2.5 MB/s) -> shape at " \
           "100 Mbit/s (12.5 MB/s) (5x faster)" in text
    assert "Budget 'daily': 50 GB per 1d, then alert -> 20 GB per 1d, then block" in text
    t = report["time_to_exfiltrate"]
    assert t["before"]["min_seconds_not_allowlisted"] == pytest.approx(140e9 * 8 / 20e6)  # the 20 Mbit cap
    assert t["after"]["min_seconds_not_allowlisted"] == 6 * 86400  # 7 windows of 20 GB: the last starts on day 6
    assert diff(parse_policy(OLD).policy, parse_policy(OLD).policy)["changes"] == []


def test_explain_names_the_fastest_route_that_is_not_allowlisted() -> None:
    report = explain(parse_policy(OLD).policy, 140 * 10**9)
    assert report["min_time"].startswith("limited only by link speed (via allow:10.0.0.0/8)")
    # The allowlist is the fast way out, by design; the question is the fastest other route: the 20 Mbit cap.
    assert report["min_time_not_allowlisted"] == "15h 33m (via cap:host)"
    out = subprocess.run([sys.executable, "-m", "weightwarden.agent", "policy", "explain", "-", "--weights-size",
                          "1GB"], capture_output=True, text=True, check=False)
    assert out.returncode == 1 and "cannot read policy" in out.stderr


def test_diff_cli(tmp_path: Path) -> None:
    old, new = tmp_path / "old.yaml", tmp_path / "new.yaml"
    old.write_text(OLD)
    new.write_text(OLD.replace("rate: 20Mbit", "rate: 10Mbit"))
    out = subprocess.run([sys.executable, "-m", "weightwarden.agent", "policy", "diff", str(old), str(new),
                          "--weights-size", "140GB"], capture_output=True, text=True, check=True).stdout
    assert "20 Mbit/s (2.5 MB/s) -> shape at 10 Mbit/s (1.25 MB/s) (2x slower)" in out
    assert "fastest route not allowlisted" in out


def test_shipped_schema_is_what_the_model_generates() -> None:
    assert shipped_text() == schema_text(), \
        "regenerate: weightwarden-agent policy schema > weightwarden/policies/policy.schema.json"
    assert (REPO / "weightwarden" / "policies" / "policy.schema.json").read_text() == schema_text()
    out = subprocess.run([sys.executable, "-m", "weightwarden.agent", "policy", "schema"], capture_output=True,
                         text=True, check=True).stdout
    assert json.loads(out) == policy_schema()


@pytest.mark.parametrize("path", sorted((REPO / "weightwarden" / "policies").glob("*.yaml")), ids=lambda p: p.name)
def test_examples_reference_the_schema_and_validate_against_it(path: Path) -> None:
    text = path.read_text()
    assert text.startswith("# yaml-language-server: $schema=policy.schema.json\n")
    jsonschema.validate(yaml.safe_load(text), policy_schema())


@pytest.mark.parametrize(("fragment", "valid"), [
    ("caps: [{name: c, rate: 20Mbit}]", True), ("caps: [{name: c, rate: 2.5MB/s}]", True),
    ("caps: [{name: c, rate: 20Mbps}]", False), ("caps: [{name: c, rate: 20Mbit, brust: 1}]", False),
    ("budgets: [{name: b, bytes: 50GB, window: 24h}]", True), ("budgets: [{name: b, bytes: 50G}]", False),
    ("caps: [{name: Bad, rate: 1Mbit}]", False), ("intervall: 5s", False),
])
def test_the_schema_agrees_with_the_loader_on_the_usual_mistakes(fragment: str, valid: bool) -> None:
    text = HEAD + "  " + fragment + "\n"
    errors = list(jsonschema.Draft202012Validator(policy_schema()).iter_errors(yaml.safe_load(text)))
    assert (not errors) == valid, errors
    try:
        parse_policy(text)
        loader_valid = True
    except Exception:  # noqa: BLE001 - PolicyError
        loader_valid = False
    assert loader_valid == valid
