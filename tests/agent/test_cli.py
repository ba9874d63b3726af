import json
import subprocess
import sys

from agent import resolve_rules


def _agent(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agent", *args], capture_output=True, text=True, timeout=60)


def test_help_shows_an_example() -> None:
    out = _agent("top", "--help")
    assert out.returncode == 0
    assert "weightwarden-agent top --json --interval 1 --count 5" in out.stdout


def test_bad_arguments_exit_2_with_message_on_stderr() -> None:
    out = _agent("top", "--interval", "-1")
    assert out.returncode == 2
    assert "must be > 0" in out.stderr and out.stdout == ""


def test_dry_run_prints_rules_as_data_and_changes_nothing() -> None:
    out = _agent("top", "--dry-run", "--json", "--queue-num", "77")
    assert out.returncode == 0
    plan = json.loads(out.stdout)
    assert ["iptables", "-w", "-t", "mangle", "-N", resolve_rules.CHAIN] in plan["install"]
    assert all(isinstance(arg, str) for argv in plan["install"] for arg in argv)
    assert any("--queue-bypass" in argv and "77" in argv for argv in plan["install"])


def test_rule_plan_is_removed_in_reverse_shape() -> None:
    plan = resolve_rules.plan(5, ("iptables",))
    assert plan.install[-1][-3:] == ["OUTPUT", "-j", resolve_rules.CHAIN]
    assert plan.remove[0][4:] == ["-D", "OUTPUT", "-j", resolve_rules.CHAIN]
    assert [a[4] for a in plan.remove] == ["-D", "-F", "-X", "-D", "-F", "-X"]  # new flows, DNS answers


def test_python_m_collector() -> None:
    out = subprocess.run([sys.executable, "-m", "collector", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and "weightwarden-collector" in out.stdout
