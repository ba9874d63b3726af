"""Upload caps enforced in the kernel, against real iperf3 traffic between namespaces.

Cap rates are link-layer rates (what the interface sends, headers included),
so precision is measured on the interface's own byte counter; TCP goodput
sits about 4.4% lower (66 header bytes per 1514-byte frame).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.agent.policy.test_policy import CONTRACT
from tests.helpers.agent_run import REPO, DaemonRun
from tests.helpers.netns import NetnsPair, wait_for

pytestmark = pytest.mark.privileged

ALLOW_A, ALLOW_B = "198.18.9.1", "198.18.9.2"
CAP = 20_000_000


@pytest.fixture
def lab(netns_pair: NetnsPair) -> NetnsPair:
    """The pair plus an allowlisted subnet, with iperf3 servers on both addresses."""
    pair = netns_pair
    vb = pair.veth_a.replace("wwa", "wwb")
    pair.run(pair.a, "ip", "addr", "add", f"{ALLOW_A}/24", "dev", pair.veth_a)
    pair.run(pair.b, "ip", "addr", "add", f"{ALLOW_B}/24", "dev", vb)
    for port in ("5201", "5202", "5203"):
        pair.popen(pair.b, "iperf3", "-s", "-p", port, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert wait_for(lambda: pair.run(pair.b, "ss", "-ltn").stdout.count(":520") >= 3)
    return pair


def iperf(pair: NetnsPair, dst: str, port: int = 5201, seconds: float = 4, uid: int | None = None,
          rate: str | None = None) -> dict:  # type: ignore[type-arg]
    argv = ["iperf3", "-c", dst, "-p", str(port), "-t", str(seconds), "-J"] + (["-b", rate] if rate else [])
    if uid is not None:
        argv = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", *argv]
    out = pair.run(pair.a, *argv, check=False)
    report = json.loads(out.stdout)
    assert "error" not in report, report.get("error")
    return report  # type: ignore[no-any-return]


def goodput(report: dict) -> float:  # type: ignore[type-arg]
    return float(report["end"]["sum_received"]["bits_per_second"])


def tx_bytes(pair: NetnsPair) -> int:
    return int(pair.run(pair.a, "cat", f"/sys/class/net/{pair.veth_a}/statistics/tx_bytes").stdout)


def wire_rate(pair: NetnsPair, dst: str, seconds: float = 6) -> tuple[float, float]:
    """(link-layer bits/s on the interface, TCP goodput) of one iperf3 upload."""
    before, t0 = tx_bytes(pair), time.monotonic()
    report = iperf(pair, dst, seconds=seconds)
    elapsed = time.monotonic() - t0
    return (tx_bytes(pair) - before) * 8 / elapsed, goodput(report)


def write_policy(tmp_path: Path, text: str, name: str = "policy.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def agent(pair: NetnsPair, *args: str) -> subprocess.CompletedProcess[str]:
    return pair.run(pair.a, sys.executable, "-m", "weightwarden.agent", *args, check=False)


@pytest.fixture(params=["nftables", "iptables"])
def backend(request: pytest.FixtureRequest) -> str:
    """The caps tests run once per enforcement backend."""
    return str(request.param)


def test_cap_holds_and_allowlist_keeps_its_speed(lab: NetnsPair, tmp_path: Path, backend: str) -> None:
    pair = lab
    state = tmp_path / "state"
    daemon = DaemonRun(pair, write_policy(tmp_path, CONTRACT), state, "--backend", backend)
    applied = daemon.wait_event("policy_applied")
    assert applied["data"]["backend"] == backend
    if backend == "iptables":
        assert "WEIGHTWARDEN-CAPS" in pair.run(pair.a, "iptables-save", "-t", "mangle").stdout
        assert "weightwarden" not in pair.run(pair.a, "nft", "list", "tables").stdout

    wire, tcp = wire_rate(pair, pair.addr_b)
    assert abs(wire - CAP) / CAP < 0.05, f"link-layer rate {wire / 1e6:.2f} Mbit/s"
    assert 0.90 * CAP < tcp < 1.05 * CAP, f"goodput {tcp / 1e6:.2f} Mbit/s"
    assert goodput(iperf(pair, ALLOW_B, 5202, 2)) > 100 * CAP, "the allowlisted route is not capped"
    assert daemon.stop() == 0

    # What the rules cost allowed traffic, apart from the agent's own CPU (which on this
    # 2-core machine competes with iperf3 itself; bench/egress_sampler.py measures that):
    # rules stay in force after the agent stops, so measure with them, clear, measure without.
    # At a fixed offered load well below what this 2-core machine saturates at (12-18
    # Gbit/s, drifting 10-20% between runs, which no 5% comparison survives): allowed
    # traffic must get its full rate with the rules as without. Saturated throughput
    # with and without rules is measured in bench/caps.py.
    policy = tmp_path / "policy.yaml"
    with_rules, without = [], []
    for _ in range(2):
        assert agent(pair, "enforce", "apply", "--policy", str(policy), "--state-dir", str(state),
                     "--backend", backend).returncode == 0
        with_rules.append(goodput(iperf(pair, ALLOW_B, 5202, 2, rate="4G")))
        assert agent(pair, "enforce", "clear", "--state-dir", str(state)).returncode == 0
        without.append(goodput(iperf(pair, ALLOW_B, 5202, 2, rate="4G")))
    assert min(with_rules) >= 0.95 * 4e9 and sum(with_rules) >= 0.95 * sum(without), \
        f"allowlisted with rules {[round(x / 1e9, 2) for x in with_rules]} vs without " \
        f"{[round(x / 1e9, 2) for x in without]} Gbit/s"


def test_only_the_matched_uid_is_capped(lab: NetnsPair, tmp_path: Path, backend: str) -> None:
    pair = lab
    policy = CONTRACT.replace("rate: 20Mbit", "rate: 20Mbit\n      match:\n        uids: [65534]")
    daemon = DaemonRun(pair, write_policy(tmp_path, policy), tmp_path / "state", "--backend", backend)
    daemon.wait_event("policy_applied")
    procs = {}
    for name, port, uid in (("nobody", 5201, 65534), ("root", 5203, None)):
        argv = ["iperf3", "-c", pair.addr_b, "-p", str(port), "-t", "4", "-J"]
        if uid is not None:
            argv = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", *argv]
        procs[name] = pair.popen(pair.a, *argv, stdout=subprocess.PIPE)
    rates = {name: goodput(json.loads(p.communicate(timeout=60)[0])) for name, p in procs.items()}
    assert 0.90 * CAP < rates["nobody"] < 1.05 * CAP, rates
    assert rates["root"] > 10 * CAP, rates
    daemon.stop()


def test_budget_blocks_and_survives_a_restart(lab: NetnsPair, tmp_path: Path) -> None:
    pair = lab
    policy = write_policy(tmp_path, CONTRACT.replace(
        "  caps:\n    - name: host-default\n      rate: 20Mbit\n",
        "  interval: 1s\n  budgets:\n    - name: small\n      bytes: 3MB\n      window: 1h\n      action: block\n"))
    state = tmp_path / "state"
    daemon = DaemonRun(pair, policy, state)
    daemon.wait_event("policy_applied")
    # Twice the budget, sent in a blink (before the next reconcile can block it mid-way).
    pair.run(pair.a, "iperf3", "-c", pair.addr_b, "-n", "6M", check=False)
    exhausted = daemon.wait_event("budget_exhausted", timeout=10)
    assert exhausted["data"]["budget"] == "small" and exhausted["data"]["used_bytes"] >= 3_000_000
    daemon.wait_event("policy_applied", blocked_budgets=["small"], timeout=10)
    blocked = pair.run(pair.a, "iperf3", "-c", pair.addr_b, "-p", "5203", "-t", "1", "--connect-timeout", "1500",
                       check=False)
    assert blocked.returncode != 0
    # The allowlist stays open while the budget blocks.
    assert goodput(iperf(pair, ALLOW_B, 5202, 1)) > 10 * CAP

    daemon.kill()
    restarted = DaemonRun(pair, policy, state)
    restarted.wait_event("policy_applied", blocked_budgets=["small"])
    still = pair.run(pair.a, "iperf3", "-c", pair.addr_b, "-p", "5203", "-t", "1", "--connect-timeout", "1500",
                     check=False)
    assert still.returncode != 0, "a restart must not reset the budget"
    restarted.stop()
    assert agent(pair, "enforce", "clear", "--state-dir", str(state)).returncode == 0
    assert goodput(iperf(pair, pair.addr_b, seconds=1)) > 10 * CAP


def test_kill_9_keeps_caps_drift_is_repaired_and_clear_leaves_no_trace(lab: NetnsPair, tmp_path: Path,
                                                                      backend: str) -> None:
    pair = lab
    policy = write_policy(tmp_path, CONTRACT + "  interval: 1s\n")
    state = tmp_path / "state"
    daemon = DaemonRun(pair, policy, state, "--backend", backend)
    daemon.wait_event("policy_applied")
    daemon.kill()
    wire, _ = wire_rate(pair, pair.addr_b, seconds=3)
    assert wire < 1.05 * CAP, "caps must stay in force when the agent dies"
    status = agent(pair, "status", "--json", "--state-dir", str(state))
    assert status.returncode == 0 and json.loads(status.stdout)["policy"] == "example"

    daemon = DaemonRun(pair, policy, state, "--backend", backend)
    daemon.wait_event("heartbeat")
    mark = len(daemon.events)
    if backend == "nftables":
        pair.run(pair.a, "nft", "delete", "table", "inet", "weightwarden")
    else:
        pair.run(pair.a, "iptables", "-t", "mangle", "-F", "WEIGHTWARDEN-CAPS")
    pair.run(pair.a, "tc", "qdisc", "del", "dev", pair.veth_a, "root")
    drift = daemon.wait_event("enforcement_drift", timeout=5, after=mark)
    assert drift["data"]["restored"] and any("missing" in d for d in drift["data"]["drift"])
    # The two deletions are two commands: the agent may repair the first before the second lands, and the
    # second at its next check. Both repaired within a few checks, then the cap holds.
    table = "table inet weightwarden" if backend == "nftables" else "WEIGHTWARDEN-CAPS"
    assert wait_for(lambda: "7757" in pair.run(pair.a, "tc", "qdisc", "show").stdout and table in pair.run(
        pair.a, *(("nft", "list", "tables") if backend == "nftables" else ("iptables-save", "-t", "mangle"))).stdout,
        10), "drift not repaired"
    wire, _ = wire_rate(pair, pair.addr_b, seconds=3)
    assert wire < 1.05 * CAP
    assert daemon.stop() == 0
    assert daemon.events[-1]["type"] == "agent_stopping"
    assert "7757" in pair.run(pair.a, "tc", "qdisc", "show").stdout, "SIGTERM leaves caps in force"

    # Killed again, mid-flight: `enforce clear` must still leave no trace of anything of ours,
    # caps and the owner-resolution (NFQUEUE) chains alike.
    daemon = DaemonRun(pair, policy, state, "--backend", backend)
    daemon.wait_event("heartbeat")
    assert "WEIGHTWARDEN-RESOLVE" in pair.run(pair.a, "iptables-save", "-t", "mangle").stdout
    daemon.kill()
    cleared = agent(pair, "enforce", "clear", "--json", "--state-dir", str(state))
    assert cleared.returncode == 0 and json.loads(cleared.stdout)[backend] is True
    assert json.loads(cleared.stdout)["owner_resolution"] is True
    assert "weightwarden" not in pair.run(pair.a, "nft", "list", "ruleset").stdout
    assert "7757" not in pair.run(pair.a, "tc", "qdisc", "show").stdout
    for tool in ("iptables-save", "ip6tables-save"):
        assert "WEIGHTWARDEN" not in pair.run(pair.a, tool).stdout, tool
    assert agent(pair, "status", "--state-dir", str(state)).returncode == 0  # nothing in force, nothing drifted


def test_a_reboot_is_not_reported_as_tampering(netns_pair: NetnsPair, tmp_path: Path) -> None:
    """A host that reboots loses every rule; the agent's record says rules were in force. That is a
    new kernel, not someone removing the caps: no drift alert (SOC would get one per reboot)."""
    pair = netns_pair
    policy = write_policy(tmp_path, CONTRACT + "  interval: 1s\n")
    state = tmp_path / "state"

    def empty_kernel() -> None:
        pair.run(pair.a, "nft", "delete", "table", "inet", "weightwarden")
        pair.run(pair.a, "tc", "qdisc", "del", "dev", pair.veth_a, "root")

    def start_and_settle() -> DaemonRun:
        daemon = DaemonRun(pair, policy, state)
        daemon.wait_event("heartbeat")
        time.sleep(1.5)  # a reconcile or two after the start
        return daemon

    daemon = DaemonRun(pair, policy, state)
    daemon.wait_event("policy_applied")
    assert daemon.stop() == 0
    empty_kernel()
    record = json.loads((state / "enforcement.json").read_text())
    record["kernel"]["boot_id"] = "an-earlier-boot"
    (state / "enforcement.json").write_text(json.dumps(record))
    status = agent(pair, "status", "--json", "--state-dir", str(state))
    assert status.returncode == 0
    doc = json.loads(status.stdout)
    assert doc["in_force"] is False and doc["previous_kernel"]["policy"] == "example"

    daemon = start_and_settle()
    types = [e["type"] for e in daemon.events]
    assert "policy_applied" in types and "enforcement_drift" not in types, types
    assert "weightwarden" in pair.run(pair.a, "nft", "list", "tables").stdout
    assert daemon.stop() == 0

    # The control: the same kernel with its rules removed while the agent was down is drift.
    empty_kernel()
    daemon = start_and_settle()
    drift = daemon.wait_event("enforcement_drift", timeout=5)
    assert any("missing" in d for d in drift["data"]["drift"])
    assert daemon.stop() == 0
    assert agent(pair, "enforce", "clear", "--state-dir", str(state)).returncode == 0
    # Nothing of ours is left, not even the empty mangle table iptables-nft made for the queue rules.
    assert pair.run(pair.a, "nft", "list", "tables").stdout.strip() == ""


def test_a_changed_cap_is_replaced_in_place(lab: NetnsPair, tmp_path: Path) -> None:
    """Re-applying changes the htb tree in place: the root qdisc (and its byte counter) lives on,
    so there is no moment without caps, and a cap the policy dropped loses its class."""
    pair = lab
    state = tmp_path / "state"
    two = CONTRACT + "    - name: second\n      rate: 5Mbit\n      match:\n        uids: [65534]\n"
    policy = write_policy(tmp_path, two)
    assert agent(pair, "enforce", "apply", "--policy", str(policy), "--state-dir", str(state)).returncode == 0
    pair.run(pair.a, "iperf3", "-c", pair.addr_b, "-n", "2M", check=False)

    def root_bytes() -> int:
        for q in json.loads(pair.run(pair.a, "tc", "-s", "-j", "qdisc", "show", "dev", pair.veth_a).stdout):
            if q.get("handle") == "7757:" and q.get("root"):
                return int(q["bytes"])
        raise AssertionError("our root qdisc is gone")

    before = root_bytes()
    assert before > 1_000_000
    policy.write_text(CONTRACT.replace("20Mbit", "30Mbit"))
    assert agent(pair, "enforce", "apply", "--policy", str(policy), "--state-dir", str(state)).returncode == 0
    assert root_bytes() >= before, "the root qdisc was deleted and rebuilt, not changed in place"
    classes = pair.run(pair.a, "tc", "class", "show", "dev", pair.veth_a).stdout
    assert "rate 30Mbit" in classes and "7757:101" not in classes, classes
    assert agent(pair, "enforce", "clear", "--state-dir", str(state)).returncode == 0


def test_bad_reload_keeps_the_old_policy(lab: NetnsPair, tmp_path: Path) -> None:
    pair = lab
    policy = write_policy(tmp_path, CONTRACT + "  interval: 1s\n")
    daemon = DaemonRun(pair, policy, tmp_path / "state")
    first = daemon.wait_event("policy_applied")
    mark = len(daemon.events)
    policy.write_text(CONTRACT.replace("20Mbit", "20Mbps"))
    daemon.proc.send_signal(1)  # SIGHUP
    rejected = daemon.wait_event("policy_rejected", after=mark)
    assert any("spec.caps[0].rate" in p for p in rejected["data"]["problems"])
    # Valid YAML, but a selector no kernel rule can match: refused, never widened to the whole host.
    mark = len(daemon.events)
    policy.write_text(CONTRACT.replace("rate: 20Mbit", "rate: 1Mbit\n      match:\n        executables: [/usr/bin/curl]"))
    daemon.proc.send_signal(1)
    rejected = daemon.wait_event("policy_rejected", after=mark)
    assert any("'executables' cannot be enforced" in p for p in rejected["data"]["problems"]), rejected
    wire, _ = wire_rate(pair, pair.addr_b, seconds=3)
    assert abs(wire - CAP) / CAP < 0.05, "the old caps stay while the new policy is bad"
    policy.write_text(CONTRACT.replace("20Mbit", "40Mbit") + "  interval: 1s\n")
    daemon.proc.send_signal(1)
    second = daemon.wait_event("policy_applied", after=mark)
    assert second["data"]["policy_digest"] != first["data"]["policy_digest"]
    assert second["data"]["caps"][0]["rate_bps"] == 40_000_000
    daemon.stop()
    assert agent(pair, "enforce", "clear", "--state-dir", str(tmp_path / "state")).returncode == 0


def test_policy_commands_work_inside_a_namespace(netns_pair: NetnsPair, tmp_path: Path) -> None:
    pair = netns_pair
    good = write_policy(tmp_path, CONTRACT)
    check = agent(pair, "policy", "check", str(good))
    assert check.returncode == 0
    explain = agent(pair, "policy", "explain", str(good), "--weights-size", "140GB", "--json")
    assert json.loads(explain.stdout)["routes"][1]["seconds"] == pytest.approx(56_000)
    bad = write_policy(tmp_path, CONTRACT.replace("cidr: 198.18.9.0/24", "cidr: 198.18.9.0/33"), "bad.yaml")
    res = agent(pair, "policy", "check", str(bad))
    assert res.returncode == 1 and f"{bad}:7: spec.allow[0].cidr" in res.stderr


def test_no_kernel_command_goes_through_a_shell() -> None:
    for path in list((REPO / "weightwarden" / "agent").rglob("*.py")) + list((REPO / "weightwarden" / "collector").rglob("*.py")):
        text = path.read_text()
        assert "shell=True" not in text and "os.system(" not in text and "os.popen(" not in text, path


def test_dry_run_backend_plans_and_reports_but_touches_nothing(lab: NetnsPair, tmp_path: Path) -> None:
    pair = lab
    daemon = DaemonRun(pair, write_policy(tmp_path, CONTRACT), tmp_path / "state", "--backend", "dry-run")
    applied = daemon.wait_event("policy_applied")
    assert applied["data"]["backend"] == "dry-run" and applied["data"]["caps"][0]["rate_bps"] == CAP
    daemon.wait_event("heartbeat")
    assert "weightwarden" not in pair.run(pair.a, "nft", "list", "tables").stdout
    assert "7757" not in pair.run(pair.a, "tc", "qdisc", "show").stdout
    assert "WEIGHTWARDEN-CAPS" not in pair.run(pair.a, "iptables-save").stdout
    assert goodput(iperf(pair, pair.addr_b, seconds=1)) > 10 * CAP, "nothing is capped"
    assert daemon.stop() == 0, "".join(daemon.stderr[-10:])
