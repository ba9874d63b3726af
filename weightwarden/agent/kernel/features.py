"""What this kernel and these privileges let us measure, found once at start.

Each missing feature becomes one plain sentence: what is missing, what we do
instead, and how to fix it. The sampler keeps measuring what it can.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

CAP_NET_ADMIN = 12


@dataclass(frozen=True, slots=True)
class Feature:
    name: str
    ok: bool
    detail: str


def has_net_admin(proc_root: str = "/proc") -> bool:
    try:
        for line in Path(proc_root, "self", "status").read_text().splitlines():
            if line.startswith("CapEff:"):
                return bool(int(line.split()[1], 16) >> CAP_NET_ADMIN & 1)
    except (OSError, ValueError, IndexError):
        pass
    return os.geteuid() == 0


def cgroup_layout(proc_root: str = "/proc") -> Feature:
    """unified (cgroup v2 only), hybrid (v2 beside v1 controllers), or v1 only.

    Read from /proc/self/cgroup, not from mounts: ``ip netns exec`` remounts
    /sys, so /sys/fs/cgroup may look empty inside a namespace.
    """
    try:
        lines = Path(proc_root, "self", "cgroup").read_text().splitlines()
    except OSError:
        return Feature("cgroup", False, "cannot read /proc/self/cgroup: processes are reported without a cgroup")
    has_v2 = any(line.startswith("0::") for line in lines)
    has_v1 = any(not line.startswith("0::") for line in lines if line)
    if has_v2 and not has_v1:
        return Feature("cgroup", True, "cgroup v2 unified: processes carry their cgroup path")
    if has_v2:
        return Feature(
            "cgroup",
            True,
            "cgroup v2 is mounted hybrid beside v1 controllers (e.g. /sys/fs/cgroup/unified): processes carry "
            "their v2 path, but nft 'socket cgroupv2' path matching cannot find it, so per-cgroup kernel "
            "matching falls back to uid and executable",
        )
    return Feature("cgroup", False, "cgroup v1 only: processes are reported with no v2 cgroup path")
