"""What the policy's names mean on this host, read afresh each interval: interfaces, host names, containers'
veths, cgroup paths, weight paths."""

from __future__ import annotations

import fnmatch
import socket
import time
from pathlib import Path

import psutil

from weightwarden.agent.enforce.container_links import Resolution, resolve_host
from weightwarden.agent.enforce.plan import PlanInputs
from weightwarden.agent.files.patterns import WeightPaths
from weightwarden.agent.policy.loader import LoadedPolicy
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


HOST_REFRESH_S = 300.0


class HostNames:
    """The policy's host names (allowlist and cap destinations) as addresses, looked up again every
    HOST_REFRESH_S, or at once after a new policy (``expire``). An answer that fails keeps the last."""

    def __init__(self) -> None:
        self.resolved: dict[str, list[str]] = {}
        # None: never looked up. Not 0.0: the monotonic clock starts at boot, and an agent started
        # by the boot would wait HOST_REFRESH_S with its host-named caps unenforced.
        self._at: float | None = None

    def expire(self) -> None:
        self._at = None

    def refresh(self, policy: Policy) -> dict[str, list[str]]:
        spec = policy.spec
        hosts = [d.host for d in spec.allow if d.host] + [
            d.host for c in spec.caps for d in c.match.destinations if d.host]
        if hosts and (self._at is None or time.monotonic() - self._at > HOST_REFRESH_S):
            self.resolved = {**self.resolved, **resolve_hosts(hosts)}
            self._at = time.monotonic()
        return self.resolved


def plan_inputs(policy: Policy, hosts: HostNames, blocked_budgets: list[str]) -> PlanInputs:
    """What the kernel plan depends on, read from this host now. Containers come and go: resolved every
    interval, so a new one is capped within one and a gone one's interface leaves the rule (the plan
    changes, the table is replaced in one transaction)."""
    ctrs = resolve_containers(policy)
    return PlanInputs(policy, resolve_interfaces(policy.spec.interfaces), hosts.refresh(policy), blocked_budgets,
                      cgroupv2_paths_usable(), ctrs.interfaces, ctrs.notes)
