"""``weightwarden-agent status``: policy in force, kernel rules, counters, drift."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TypedDict

from weightwarden.agent.enforce import tc
from weightwarden.agent.enforce.enforcer import Enforcer, KernelGeneration, read_json
from weightwarden.agent.enforce.kernel import KernelError
from weightwarden.agent.enforce.plan import CapSlotJson
from weightwarden.jsontypes import JsonObject, JsonValue
from weightwarden.units import format_rate, format_size


class PreviousKernel(TypedDict):
    policy: str | None
    applied_at: float | None
    kernel: KernelGeneration | None


class Status(TypedDict, total=False):
    """``status --json``: what is in force, read back from the kernel and the agent's state files."""

    state_dir: str
    error: str
    in_force: bool
    backend: str
    sensor: JsonValue  # the kernel sensor as the agent last reported it (health.json)
    policy: str | None
    policy_digest: str | None
    policy_path: str | None
    applied_at: float | None
    interfaces: list[str]
    caps: list[CapSlotJson]
    drift: list[str]
    counters: dict[str, dict[str, int]]
    classes: dict[str, dict[str, dict[str, int]]]
    budgets: JsonObject
    agent: JsonObject
    previous_kernel: PreviousKernel


def collect(state_dir: Path, backend: str = "auto") -> Status:
    try:
        enforcer = Enforcer(state_dir, backend)
    except KernelError as exc:
        return {"state_dir": str(state_dir), "error": str(exc), "in_force": False, "drift": []}
    rec = enforcer.record
    out: Status = {"state_dir": str(state_dir), "backend": enforcer.backend, "in_force": rec is not None}
    health = read_json(state_dir / "health.json") or {}
    # The kernel sensor as the agent last reported it: the path, each capability on or off and why.
    out["sensor"] = health.get("sensor")
    if rec is None:
        out.update({"policy": None, "drift": [], "counters": {}, "classes": {}})
        if enforcer.previous_kernel is not None:
            # Rules from before a reboot (or from a namespace since deleted): gone with that kernel.
            before = enforcer.previous_kernel
            out["previous_kernel"] = {"policy": before.get("policy"), "applied_at": before.get("applied_at"),
                                      "kernel": before.get("kernel")}
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


def _obj(value: JsonValue | None) -> JsonObject:
    """A JSON object read back from a state file, or {} for anything else."""
    return value if isinstance(value, dict) else {}


def _num(value: JsonValue | None) -> float:
    return value if isinstance(value, int | float) else 0


def render_sensor(sensor: JsonValue | None) -> list[str]:
    if not isinstance(sensor, dict):
        return []
    state = "DEGRADED" if sensor.get("degraded") else "whole"
    lines = [f"sensor      {sensor.get('path')} on {sensor.get('kernel') or '?'}: {state}"]
    for name, f in sorted(_obj(sensor.get("features")).items()):
        if isinstance(f, dict) and not f.get("on"):
            lines.append(f"            off: {name}: {f.get('reason') or ''}")
    return lines


def render(status: Status) -> str:
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
        watch = _obj(agent.get("file_watch"))
        weights = _obj(agent.get("weights"))
        lines.insert(3, f"file watch  {watch.get('mode', 'off')}: {watch.get('detail', '')}")
        if weights:
            paths = weights.get("paths")
            lines.insert(4, f"weights     {weights.get('files', 0)} files, {format_size(_num(weights.get('total_bytes')))} "
                            f"under {', '.join(str(p) for p in paths) if isinstance(paths, list) else ''}")
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
