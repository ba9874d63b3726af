"""``weightwarden-agent status``: policy in force, kernel rules, counters, drift."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from weightwarden.agent.enforce import tc
from weightwarden.agent.enforce.enforcer import Enforcer, read_json
from weightwarden.agent.enforce.kernel import KernelError
from weightwarden.units import format_rate, format_size


def collect(state_dir: Path, backend: str = "auto") -> dict[str, Any]:
    try:
        enforcer = Enforcer(state_dir, backend)
    except KernelError as exc:
        return {"state_dir": str(state_dir), "error": str(exc), "in_force": False, "drift": []}
    rec = enforcer.record
    out: dict[str, Any] = {"state_dir": str(state_dir), "backend": enforcer.backend, "in_force": rec is not None}
    health = read_json(state_dir / "health.json") or {}
    # The kernel sensor as the agent last reported it: the path, each capability on or off and why.
    out["sensor"] = health.get("sensor")
    if rec is None:
        out.update({"policy": None, "drift": [], "counters": {}, "classes": {}})
        if enforcer.previous_kernel is not None:
            # Rules from before a reboot (or from a namespace since deleted): gone with that kernel.
            out["previous_kernel"] = {k: enforcer.previous_kernel.get(k) for k in ("policy", "applied_at", "kernel")}
        return out
    interfaces = rec.get("interfaces", [])
    out.update({
        "policy": rec.get("policy"),
        "policy_digest": rec.get("policy_digest"),
        "policy_path": rec.get("policy_path"),
        "applied_at": rec.get("applied_at"),
        "interfaces": interfaces,
        "caps": rec.get("caps", []),
        "drift": enforcer.drift(rec.get("tc_interfaces", [])),
        "counters": enforcer.counters(),
        "classes": {i: tc.class_stats(i) for i in rec.get("tc_interfaces", [])},
        "budgets": read_json(state_dir / "budgets.json") or {},
    })
    out["agent"] = health
    return out


def render_sensor(sensor: dict[str, Any] | None) -> list[str]:
    if not isinstance(sensor, dict):
        return []
    state = "DEGRADED" if sensor.get("degraded") else "whole"
    lines = [f"sensor      {sensor.get('path')} on {sensor.get('kernel') or '?'}: {state}"]
    for name, f in sorted((sensor.get("features") or {}).items()):
        if isinstance(f, dict) and not f.get("on"):
            lines.append(f"            off: {name}: {f.get('reason') or ''}")
    return lines


def render(status: dict[str, Any]) -> str:
    if status.get("error"):
        return f"error: {status['error']}"
    sensor = render_sensor(status.get("sensor"))
    if not status["in_force"]:
        before = status.get("previous_kernel")
        if before:
            return "\n".join([f"No policy in force (state in {status['state_dir']}): policy {before.get('policy')} was "
                              "applied before this boot or in another network namespace; the agent applies it again "
                              "when it starts.", *sensor])
        return "\n".join([f"No policy in force (state in {status['state_dir']}).", *sensor])
    lines = [
        f"policy      {status['policy']} ({status['policy_digest']}) from {status.get('policy_path')}",
        f"applied     {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(status['applied_at']))} "
        f"via {status['backend']} on {', '.join(status['interfaces']) or '(no interface)'}",
        "drift       " + ("; ".join(status["drift"]) if status["drift"] else "none: the kernel matches the policy"),
        "",
        f"{'CAP':<24} {'ACTION':<7} {'RATE':>14} {'MATCHED':>12}",
    ]
    agent = status.get("agent") or {}
    if agent:
        watch = agent.get("file_watch", {})
        weights = agent.get("weights", {})
        lines.insert(3, f"file watch  {watch.get('mode', 'off')}: {watch.get('detail', '')}")
        if weights:
            lines.insert(4, f"weights     {weights.get('files', 0)} files, {format_size(weights.get('total_bytes', 0))} "
                            f"under {', '.join(weights.get('paths', []))}")
    lines[3:3] = sensor
    counters = status["counters"]
    for cap in status["caps"]:
        matched = counters.get(cap["counter"], {}).get("bytes", 0)
        lines.append(f"{cap['name']:<24} {cap['action']:<7} {format_rate(cap['rate_bps']):>14} "
                     f"{format_size(matched):>12}")
    for name in ("egress", "allowed", "budget-block"):
        if name in counters:
            lines.append(f"{'(' + name + ')':<24} {'':<7} {'':>14} {format_size(counters[name]['bytes']):>12}")
    return "\n".join(lines)
