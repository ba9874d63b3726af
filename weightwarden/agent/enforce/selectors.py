"""Which cap selectors this host's kernel can enforce, and why not. Pure: a policy and facts in, reasons out.

A selector the kernel cannot enforce is refused (``policy check`` fails and names
the reason); it is never quietly turned into a host-wide cap, and the plan leaves
such a cap out rather than widen it.

What nftables can match at postrouting, where caps live:
- ``socket cgroupv2``: the cgroup of the sending socket, resolved from a path
  under /sys/fs/cgroup when the rule loads, so only with cgroup v2 mounted
  unified there (hybrid hosts keep it at /sys/fs/cgroup/unified: nft cannot
  resolve those paths), and only for sockets in the enforcing network namespace:
  a container with its own namespace sends forwarded packets, which carry no
  socket by the time they reach the host's postrouting hook;
- nothing that names a program: executables cannot be matched;
- ``iifname``: the device a forwarded packet came in by. A container with its own
  network namespace routed through the host is matched by its host-side veth,
  resolved each interval from its processes' cgroups (``container_links.py``), so
  ``containers`` works on unified, hybrid and v1 hosts alike. Its packets carry
  no socket at postrouting, so a cap that asks for the container *and* a uid or
  cgroup would match nothing: refused. Containers on the host's own network
  (host networking) and ones without a veth to the host (macvlan, ipvlan) cannot
  be told apart by interface: the plan notes them as not capped.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from weightwarden.agent.policy.model import Policy


@dataclass(frozen=True)
class KernelSupport:
    cgroupv2_paths: bool  # nft 'socket cgroupv2' can resolve policy paths (cgroup v2 unified at /sys/fs/cgroup)


def detect(sys_fs_cgroup: str = "/sys/fs/cgroup") -> KernelSupport:
    return KernelSupport(cgroupv2_paths=Path(sys_fs_cgroup, "cgroup.controllers").exists())


def refusals(policy: Policy, support: KernelSupport) -> list[str]:
    """One sentence per cap selector this kernel cannot enforce (empty: all enforceable)."""
    out: list[str] = []
    for cap in policy.spec.caps:
        m = cap.match
        if m.executables:
            out.append(f"cap {cap.name!r}: 'executables' cannot be enforced in the kernel (nftables matches sockets "
                       "by uid and cgroup, never by program); match the program's uid or cgroup instead")
        if m.cgroups and not support.cgroupv2_paths:
            out.append(f"cap {cap.name!r}: 'cgroups' needs cgroup v2 mounted unified at /sys/fs/cgroup (nft "
                       "'socket cgroupv2'); this host mounts it hybrid (e.g. /sys/fs/cgroup/unified), where nft "
                       "cannot resolve cgroup paths")
        if m.containers and (m.uids or m.cgroups):
            out.append(f"cap {cap.name!r}: 'containers' cannot be combined with 'uids' or 'cgroups': a container's "
                       "packets are matched by the host-side veth they are forwarded from, and carry no socket "
                       "(no uid, no cgroup) there, so the cap would match nothing; use separate caps")
    return out


def refused_caps(policy: Policy, support: KernelSupport) -> set[str]:
    """Names of caps with a selector the kernel cannot enforce: the plan leaves them out."""
    return {cap.name for cap in policy.spec.caps
            if cap.match.executables or (cap.match.cgroups and not support.cgroupv2_paths)
            or (cap.match.containers and (cap.match.uids or cap.match.cgroups))}
