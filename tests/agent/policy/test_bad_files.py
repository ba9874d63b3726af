"""Issue 14's policy defects: every bad file is a PolicyError with lines, never a traceback or a silent change."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.agent.enforce import nftdoc
from weightwarden.agent.enforce.plan import PlanInputs, build
from weightwarden.agent.policy.lint import host_checks, lint
from weightwarden.agent.policy.loader import PolicyError, load_policy, parse_policy
from weightwarden.units import parse_rate

REPO = Path(__file__).resolve().parents[3]
HEAD = "apiVersion: weightwarden/v1\nkind: EgressPolicy\nmetadata: {name: p}\nspec:\n"


def problems(text: str | bytes) -> list[tuple[str, int | None, str]]:
    with pytest.raises(PolicyError) as err:
        parse_policy(text)
    return [(p.path, p.line, p.message) for p in err.value.problems]


def test_a_key_written_twice_is_refused_with_both_lines() -> None:
    # YAML keeps the last value: the stricter 1Mbit would silently become 100Mbit.
    found = problems(HEAD + "  caps:\n    - name: a\n      rate: 1Mbit\n      rate: 100Mbit\n")
    assert found == [("spec.caps[0].rate", 8, "key 'rate' is written twice (first on line 7); keep one")]
    top = problems(HEAD + "  caps: []\n  caps: [{name: a, rate: 1Mbit}]\n")
    assert top[0][:2] == ("spec.caps", 6)


def test_non_utf8_is_a_problem_with_its_line() -> None:
    found = problems((HEAD + "  interfaces: [eth0]\n  # caf\xe9\n").encode("latin-1"))
    assert found[0][1] == 6 and "not UTF-8" in found[0][2]


def test_a_400_digit_rate_is_a_problem_not_an_overflow() -> None:
    digits = "1" + "0" * 400
    for value in (digits + "Mbit", digits, digits + "MB/s"):
        path, line, message = problems(HEAD + f"  caps: [{{name: a, rate: '{value}'}}]\n")[0]
        assert path == "spec.caps[0].rate" and line == 5
        assert "limit" in message or "invalid rate" in message
    # Unquoted: a YAML integer of 400 digits, and one past Python's conversion limit.
    assert "over the limit" in problems(HEAD + f"  caps: [{{name: a, rate: {digits}}}]\n")[0][2]
    assert "5,001 digits" in problems(HEAD + "  caps: [{name: a, rate: 1" + "0" * 5000 + "}]\n")[0][2]
    assert "over the limit" in problems(HEAD + "  budgets: [{name: b, bytes: '" + digits + "GB'}]\n")[0][2]
    assert "ten years" in problems(HEAD + "  budgets: [{name: b, bytes: 1GB, window: '" + digits + "s'}]\n")[0][2]


def test_yaml_nested_3000_deep_is_a_problem() -> None:
    found = problems(HEAD + "  weights: " + "[" * 3000 + "]" * 3000 + "\n")
    assert found[0][1] == 5 and "nested more than" in found[0][2]


def test_an_alias_bomb_is_a_problem() -> None:
    lines = ['a: &a ["x","x","x","x","x","x","x","x","x"]']
    for prev, name in zip("abcdef", "bcdefg", strict=True):
        lines.append(f"{name}: &{name} [" + ",".join([f"*{prev}"] * 9) + "]")
    assert "once aliases are expanded" in problems("\n".join(lines) + "\n")[0][2]


@pytest.mark.parametrize(("text", "expect"), [
    ("  allow: [{cidr: 10.0.0.0/0}]\n", "means 0.0.0.0/0 (every IPv4 address)"),
    ("  allow: [{cidr: 10.1.2.3/8}]\n", "write 10.0.0.0/8 if that is what you meant, or 10.1.2.3/32"),
    ("  allow: [{cidr: '2001:db8::1/32'}]\n", "2001:db8::/32"),
])
def test_host_bits_in_a_cidr_are_refused_saying_what_was_meant(text: str, expect: str) -> None:
    path, line, message = problems(HEAD + text)[0]
    assert path == "spec.allow[0].cidr" and line == 5 and expect in message


@pytest.mark.parametrize("text", [
    '  interfaces: ["eth0\\n"]\n',
    '  allow: [{host: "objstore.internal\\n"}]\n',
    '  caps: [{name: c, rate: 1Mbit, match: {cgroups: ["system.slice/x.service\\n"]}}]\n',
    '  caps: [{name: "c\\n", rate: 1Mbit}]\n',
])
def test_a_trailing_newline_never_passes_a_name_check(text: str) -> None:
    assert problems(HEAD + text)


def test_every_cgroup_of_a_cap_is_enforced() -> None:
    policy = parse_policy(HEAD + "  caps: [{name: c, rate: 1Mbit, match: {cgroups: [a.slice/x.service, "
                                 "b.slice/y.service, /c.slice/]}}]\n").policy
    plan = build(PlanInputs(policy, ["eth0"]))
    rules = [json.dumps(r) for r in nftdoc.rules(plan)]
    for path, level in (("a.slice/x.service", 2), ("b.slice/y.service", 2), ("c.slice", 1)):
        assert any(f'"right": "{path}"' in r and f'"level": {level}' in r for r in rules), path
    assert not any("only the first cgroup" in n for n in plan.notes)


@pytest.mark.parametrize(("path", "why"), [
    ("/", "whole filesystem"), ("/**/*.safetensors", "whole filesystem"), ("/*", "whole filesystem"),
    ("/proc/1/root/srv/models", "pseudo-filesystem"), ("/sys/fs", "pseudo-filesystem"), ("/dev/sda", "pseudo"),
])
def test_weight_roots_that_walk_the_machine_are_refused(path: str, why: str) -> None:
    assert why in problems(HEAD + f"  weights: {{paths: ['{path}']}}\n")[0][2]


def test_dev_shm_and_model_directories_are_fine_and_system_trees_warn() -> None:
    fine = parse_policy(HEAD + "  weights: {paths: [/dev/shm/models, /srv/models/**/*.safetensors, /models]}\n")
    assert lint(fine) == []
    wide = lint(parse_policy(HEAD + "  weights: {paths: [/srv/m, /home/**/*.gguf]}\n"))
    assert [(w.path, w.severity) for w in wide] == [("spec.weights.paths[1]", "warning")]
    assert "all of /home" in wide[0].message


def test_an_interface_that_matches_nothing_warns_and_fails_strict(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(HEAD + "  interfaces: [eht0]\n  caps: [{name: c, rate: 20Mbit}]\n")
    warnings = host_checks(load_policy(path), ["lo", "eth0", "eth1"])
    assert len(warnings) == 1 and warnings[0].line == 5 and "nothing is enforced" in warnings[0].message
    assert host_checks(load_policy(path), ["eht0"]) == []
    fleet = load_policy(REPO / "weightwarden" / "policies" / "single-gpu-host.yaml")  # eth*, ens*, enp*: one scheme per host
    assert host_checks(fleet, ["lo", "ens5"]) == []
    run = [sys.executable, "-m", "weightwarden.agent", "policy", "check", str(path)]
    relaxed = subprocess.run(run, capture_output=True, text=True, check=False)
    strict = subprocess.run([*run, "--strict"], capture_output=True, text=True, check=False)
    assert "eht0" in relaxed.stderr and "nothing is enforced" in relaxed.stderr
    if not any(line.startswith("eht0") for line in Path("/proc/net/dev").read_text().split()):
        assert relaxed.returncode == 0 and strict.returncode == 1


def test_bytes_per_second_are_said_in_bits_too(tmp_path: Path) -> None:
    assert parse_rate("20MB/s") == 160_000_000
    assert parse_rate("2.5MB/s") == 20_000_000
    with pytest.raises(ValueError, match="that is 160 Mbit/s"):
        parse_rate("20MB")
    with pytest.raises(ValueError, match="that is 160 Mbit/s"):
        parse_rate("20Mbps")
    path = tmp_path / "p.yaml"
    path.write_text(HEAD + "  caps: [{name: c, rate: 20MB/s}]\n")
    out = subprocess.run([sys.executable, "-m", "weightwarden.agent", "policy", "check", str(path)],
                         capture_output=True, text=True, check=True)
    assert "160 Mbit/s (20 MB/s)" in out.stdout
    explained = subprocess.run([sys.executable, "-m", "weightwarden.agent", "policy", "explain", str(path),
                                "--weights-size", "1GB"], capture_output=True, text=True, check=True)
    assert "160 Mbit/s (20 MB/s)" in explained.stdout


def test_hostile_files_never_raise_anything_but_policy_error(tmp_path: Path) -> None:
    """What the daemon catches on reload is PolicyError: anything else would make it exit."""
    cases = [b"\xff\xfe\x00", b"\x00\x01\x02", b"- - - [", b"!!python/object:os.system {}", b"a: !!binary AAAA",
             b"---\na: 1\n---\nb: 2\n", b"", b"[]", b"spec: " + b"{a: " * 40 + b"}" * 40, b"\t\x0b\x0c",
             (HEAD + "  interval: 0.01s\n").encode(), (HEAD + "  interval: .nan\n").encode(),
             (HEAD + "  caps: [{name: c, rate: .inf}]\n").encode(), b"<<: {a: 1}\n", b"? [a, b]\n: 1\n"]
    for raw in cases:
        path = tmp_path / "p.yaml"
        path.write_bytes(raw)
        with pytest.raises(PolicyError):
            load_policy(path)
