"""policy simulate on recorded samples: pure logic, checked against hand-computed answers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.agent.enforce import nftdoc
from weightwarden.agent.enforce.plan import PlanInputs, build
from weightwarden.agent.policy.loader import parse_policy
from weightwarden.agent.policy.match import Flow, classify, compile_policy
from weightwarden.agent.policy.simulate import LinkModel, simulate

HEAD = "apiVersion: weightwarden/v1\nkind: EgressPolicy\nmetadata: {name: s}\nspec:\n"
T0 = 1_700_000_000.0
F4 = 1514 / 1448


def sample(i: int, *procs: dict[str, Any], unowned: int = 0) -> dict[str, Any]:
    return {"ts": T0 + i, "interval_s": 1.0, "interfaces": [{"name": "eth0", "tx_bytes": 1}],
            "processes": list(procs), "unowned_flow_tx_bytes": unowned}


def proc(pid: int, *dests: tuple[str, int, int], uid: int = 0, exe: str = "/usr/bin/curl",
         cgroup: str = "/system.slice/x.service", extra: int = 0) -> dict[str, Any]:
    return {"pid": pid, "uid": uid, "exe": exe, "name": exe.rsplit("/", 1)[-1], "cgroup": cgroup,
            "tx_bytes": sum(d[2] for d in dests) + extra,
            "destinations": [{"address": a, "port": p, "tx_bytes": n} for a, p, n in dests]}


def run(policy_text: str, samples: list[dict[str, Any]]) -> dict[str, Any]:
    return dict(simulate(parse_policy(HEAD + policy_text).policy, samples))


def test_a_burst_is_held_back_for_its_wire_size_over_the_rate() -> None:
    burst = [sample(0), sample(1, proc(7, ("203.0.113.5", 443, 25_000_000)))] + [sample(i) for i in range(2, 20)]
    report = run("  caps: [{name: c, rate: 20Mbit}]\n", burst)
    (cap,) = report["caps"]
    assert cap["matched_bytes"] == 25_000_000
    assert cap["held_back_s"] == pytest.approx(25e6 * F4 * 8 / 20e6, rel=1e-3)  # 10.46 s
    # Spread over its 1 s sample, the last byte waits the rest: to within that interval.
    assert cap["held_back_s"] - 1.0 <= cap["max_delay_s"] <= cap["held_back_s"]
    assert cap["peak_bps"] == pytest.approx(25e6 * F4 * 8, rel=1e-3)
    assert cap["backlog_at_end_bytes"] == 0
    # The recording ends while traffic is still queued: the rest of the wait is counted.
    cut = run("  caps: [{name: c, rate: 20Mbit}]\n", burst[:4])
    assert cut["caps"][0]["held_back_s"] == pytest.approx(cap["held_back_s"], rel=1e-3)


def test_traffic_under_the_rate_is_never_held() -> None:
    steady = [sample(i, proc(7, ("203.0.113.5", 443, 2_000_000))) for i in range(30)]
    (cap,) = run("  caps: [{name: c, rate: 20Mbit}]\n", steady)["caps"]
    assert cap["held_back_s"] == 0 and cap["max_delay_s"] == 0 and cap["matched_bytes"] == 60_000_000


def test_allowlist_first_then_caps_in_order_alerts_go_on() -> None:
    policy = ("  allow: [{cidr: 10.0.0.0/8}, {cidr: 198.18.0.0/15, ports: [443]}]\n"
              "  caps:\n"
              "    - {name: watch, rate: 1Gbit, action: alert}\n"
              "    - {name: nobody, rate: 1Mbit, match: {uids: [65534]}}\n"
              "    - {name: bad, rate: 1kbit, action: block, match: {destinations: [{cidr: 192.0.2.0/24}]}}\n"
              "    - {name: trainer, rate: 50Mbit, match: {cgroups: [system.slice/trainer.service]}}\n")
    samples = [sample(1,
                      proc(1, ("10.1.2.3", 22, 1000), ("198.18.4.4", 443, 2000), ("198.18.4.4", 80, 4000)),
                      proc(2, ("203.0.113.9", 443, 8000), uid=65534),
                      proc(3, ("192.0.2.7", 443, 16000)),
                      proc(4, ("203.0.113.9", 443, 32000), cgroup="/system.slice/trainer.service/worker-1"),
                      proc(5, ("203.0.113.9", 443, 64000), cgroup="/system.slice/trainer.serviceX"),
                      proc(6, extra=128000))]  # bytes whose destination the sample did not keep
    r = run(policy, samples)
    caps = {c["name"]: c for c in r["caps"]}
    assert r["allowlisted_bytes"] == 3000 and [a["bytes"] for a in r["allow"]] == [1000, 2000]
    assert caps["watch"]["matched_bytes"] == 4000 + 8000 + 16000 + 32000 + 64000 + 128000
    assert caps["nobody"]["matched_bytes"] == 8000
    assert caps["bad"]["matched_bytes"] == 16000 and caps["bad"]["blocked_bytes"] == 16000
    assert caps["trainer"]["matched_bytes"] == 32000  # below the cgroup, not a sibling with a longer name
    # Seen only by the alert cap: not limited by any cap.
    assert r["unmatched_bytes"] == 0
    assert r["total_bytes"] == 1000 + 2000 + 4000 + 8000 + 16000 + 32000 + 64000 + 128000


def test_simulation_and_plan_share_one_compiled_match() -> None:
    text = HEAD + ("  caps:\n"
                   "    - {name: prog, rate: 1kbit, match: {executables: [/usr/bin/scp]}}\n"
                   "    - {name: c, rate: 1Mbit, match: {uids: [5], destinations: [{cidr: 192.0.2.0/24, ports: [22]}]}}\n")
    policy = parse_policy(text).policy
    compiled = compile_policy(policy)
    plan = build(PlanInputs(policy, ["eth0"]))
    # The kernel cannot match executables: the plan leaves that cap out (never widened), and so does the
    # simulation: it gives it no traffic.
    assert compiled.notes == tuple(plan.notes) and "'prog': not enforced" in compiled.notes[0]
    assert not any('"cap-0"' in json.dumps(c) for c in nftdoc.commands(plan) if "rule" in c.get("add", {}))
    assert classify(compiled, Flow("192.0.2.1", 22, 5, "/usr/bin/scp")).cap == 1
    assert classify(compiled, Flow("192.0.2.1", 80, 5, "/usr/bin/scp")).cap is None  # port-qualified, in both
    assert any('"dport"' in json.dumps(c) and '"right": 22' in json.dumps(c) for c in nftdoc.commands(plan))
    r = simulate(policy, [sample(1, proc(1, ("192.0.2.1", 22, 1000), uid=5, exe="/usr/bin/scp"))])
    assert [c["matched_bytes"] for c in r["caps"]] == [0, 1000]


def test_budgets_block_after_the_daemons_next_reconciliation_and_thresholds_fire() -> None:
    policy = ("  interval: 2s\n"
              "  budgets: [{name: small, bytes: 10MB, window: 1h, action: block}]\n"
              "  thresholds: [{name: big, bytes: 5MB, window: 1m, severity: high}]\n")
    samples = [sample(i, proc(9, ("203.0.113.5", 443, 4_000_000))) for i in range(6)]
    r = run(policy, samples)
    kinds = [(a["type"], a["name"], a["ts"] - T0) for a in r["alerts"]]
    assert ("threshold_crossed", "big", 1.0) in kinds
    assert ("budget_exhausted", "small", 2.0) in kinds
    # Exhausted at t=2, blocked from the next reconciliation (t=4): samples 4 and 5 are dropped.
    assert r["budget_blocked_bytes"] == 8_000_000
    assert r["budgets"][0]["peak_used_bytes"] == 16_000_000


def test_cap_hits_follow_the_daemons_rule() -> None:
    samples = [sample(i, proc(9, ("203.0.113.5", 443, 3_000_000))) for i in range(130)]
    r = run("  interval: 5s\n  caps: [{name: c, rate: 20Mbit}]\n", samples)
    hits = [a["ts"] - T0 for a in r["alerts"] if a["type"] == "cap_hit"]
    assert len(hits) == 3 and hits[1] - hits[0] >= 60  # at most once a minute
    quiet = run("  caps: [{name: c, rate: 20Mbit}]\n", [sample(i, proc(9, ("203.0.113.5", 443, 100))) for i in range(30)])
    assert quiet["alerts"] == []


def test_link_layer_model() -> None:
    assert LinkModel().factor(False) == pytest.approx(1514 / 1448)
    assert LinkModel(9000).factor(False) == pytest.approx(9014 / 8948)
    ipv6 = run("  caps: [{name: c, rate: 20Mbit}]\n", [sample(1, proc(9, ("2001:db8::5", 443, 1_000_000)))])
    assert ipv6["caps"][0]["matched_wire_bytes"] == round(1_000_000 * 1514 / 1428)


def test_cli_contract_and_exports_of_several_hosts(tmp_path: Path) -> None:
    policy = tmp_path / "p.yaml"
    policy.write_text(HEAD + "  allow: [{cidr: 10.0.0.0/8}]\n  caps: [{name: c, rate: 20Mbit}]\n")
    lines = []
    for i in range(3):
        for host in ("gpu-a", "gpu-b"):
            lines.append(json.dumps({"schema": 1, "id": f"{host}{i}", "host": host, "seq": i + 1, "ts": T0 + i,
                                     "type": "egress_sample",
                                     "data": sample(i, proc(1, ("203.0.113.5", 443, 1000), ("10.0.0.1", 22, 10)))}))
    lines.append(json.dumps({"schema": 1, "id": "hb", "host": "gpu-a", "seq": 9, "ts": T0, "type": "heartbeat",
                             "data": {"uptime_s": 1, "policy": "p", "policy_digest": "d",
                                      "weights": {"total_bytes": 2_000_000_000}}}))
    lines.append("not json")
    samples = tmp_path / "export.jsonl"
    samples.write_text("\n".join(lines) + "\n")
    cmd = [sys.executable, "-m", "weightwarden.agent", "policy", "simulate", str(policy), "--samples", str(samples)]
    both = subprocess.run(cmd + ["--json"], capture_output=True, text=True, check=False)
    assert both.returncode == 2 and "--host" in both.stderr
    out = subprocess.run(cmd + ["--json", "--host", "gpu-a"], capture_output=True, text=True, check=True)
    doc = json.loads(out.stdout)
    assert {"caps", "allowlisted_bytes", "unmatched_bytes", "alerts"} <= set(doc)
    assert set(doc["caps"][0]) >= {"name", "matched_bytes", "peak_bps", "held_back_s", "max_delay_s"}
    assert doc["caps"][0]["matched_bytes"] == 3000 and doc["allowlisted_bytes"] == 30
    assert doc["hosts"] == ["gpu-a"] and doc["skipped_lines"] == 1 and "export.jsonl:8" in doc["skipped"][0]
    assert doc["time_to_exfiltrate"]["weights_bytes"] == 2_000_000_000  # from the heartbeat
    assert doc["time_to_exfiltrate"]["min_seconds_not_allowlisted"] == pytest.approx(2e9 * 8 / 20e6)
    table = subprocess.run(cmd + ["--host", "gpu-a"], capture_output=True, text=True, check=True).stdout
    assert "HELD BACK" in table and "link-layer" in table
