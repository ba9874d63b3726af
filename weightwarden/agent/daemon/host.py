"""What the policy's names mean on this host, read afresh each interval (interfaces, host names, containers'
veths, cgroup paths), and what a sample needs from the policy before it leaves (allowlisted or not)."""

from __future__ import annotations

import fnmatch
import socket
from pathlib import Path

import psutil

from weightwarden.agent.attribution.sampler import SampleJson
from weightwarden.agent.enforce.container_links import Resolution, resolve_host
from weightwarden.agent.files.patterns import WeightPaths
from weightwarden.agent.policy.loader import LoadedPolicy
from weightwarden.agent.policy.match import Flow, allowed_by, allowlist
from weightwarden.agent.policy.model import Policy


def resolve_interfaces(patterns: list[str]) -> list[str]:
    names = sorted(n for n in psutil.net_if_stats() if n != "lo")
    if not patterns:
        return names
    return [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in patterns)]


def resolve_hosts(hosts: list[str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for host in hosts:
        try:
            infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
        except OSError:
            continue
        out[host] = sorted({str(info[4][0]) for info in infos})
    return out


def weight_paths(loaded: LoadedPolicy) -> WeightPaths:
    w = loaded.policy.spec.weights
    return WeightPaths(list(w.paths), list(w.canaries))


def annotate_allowed(sample: SampleJson, policy: Policy, resolved: dict[str, list[str]]) -> None:
    """Mark each destination allowlisted or not, so the collector can weigh it (the plan's own match)."""
    allow = allowlist(policy, resolved)
    for proc in sample["processes"]:
        for d in proc["destinations"]:
            d["allowed"] = allowed_by(allow, Flow(d["address"], d["port"])) is not None


def process_alive(key: tuple[int, float | None]) -> bool:
    """Whether (pid, start time) still names a running process (a reused pid does not)."""
    pid, started = key
    try:
        return started is None or psutil.Process(pid).create_time() == started
    except (psutil.NoSuchProcess, psutil.AccessDenied, ProcessLookupError):
        return False


def resolve_containers(policy: Policy) -> Resolution:
    """The host-side veths of each container cap's containers, read now; a failed read (netlink refused,
    /proc unreadable) is a note, and the caps it concerns match nothing until the next interval."""
    try:
        return resolve_host(policy)
    except Exception as exc:  # noqa: BLE001 - enforcement of every other cap goes on
        return Resolution(notes=(f"cannot resolve container interfaces: {type(exc).__name__}: {exc}"[:500],))


def cgroupv2_paths_usable() -> bool:
    # nft resolves 'socket cgroupv2' paths under /sys/fs/cgroup, so only a
    # unified mount there works; hybrid hosts keep v2 at .../unified.
    return Path("/sys/fs/cgroup/cgroup.controllers").exists()
