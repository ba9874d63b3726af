"""The container a process runs in, from its cgroup v2 path. Pure.

A minimal reading of the common layouts, kept here until the agent-wide
parser (``agent/containers.py``) lands; its signature is the same so the
watcher switches by changing one import.
"""

from __future__ import annotations

import re

from weightwarden.events import Container

_HEX64 = r"[0-9a-f]{64}"
_POD = re.compile(r"kubepods(?:[.-][a-z]+)*[.-]pod([0-9a-f_-]{36})(?:\.slice)?(?:/|$)")
_RUNTIMES = (
    ("docker", re.compile(rf"(?:docker-|/docker/)({_HEX64})")),
    ("cri-o", re.compile(rf"crio-(?:conmon-)?({_HEX64})")),
    ("containerd", re.compile(rf"cri-containerd-({_HEX64})")),
    ("podman", re.compile(rf"libpod-(?:conmon-)?({_HEX64})")),
)
_SLURM = re.compile(r"/slurm[^/]*/uid_\d+/job_(\d+)")
_UNIT = re.compile(r"([^/]+\.(?:service|scope))$")


def container_of(cgroup_path: str) -> Container | None:
    """Runtime, id, pod UID and systemd unit where the path shows them; None for host processes."""
    runtime = cid = pod_uid = None
    pod = _POD.search(cgroup_path)
    if pod:
        pod_uid = pod.group(1).replace("_", "-")
    for name, pattern in _RUNTIMES:
        m = pattern.search(cgroup_path)
        if m:
            runtime, cid = name, m.group(1)
            break
    if runtime is None and pod_uid is not None:
        leaf = cgroup_path.rstrip("/").rsplit("/", 1)[-1]
        if re.fullmatch(_HEX64, leaf):
            runtime, cid = "containerd", leaf
    slurm = _SLURM.search(cgroup_path)
    if runtime is None and slurm:
        runtime, cid = "slurm", slurm.group(1)
    if runtime is None and pod_uid is None:
        return None
    unit = _UNIT.search(cgroup_path)
    return Container(cgroup=cgroup_path, runtime=runtime, id=cid, pod_uid=pod_uid,
                     unit=unit.group(1) if unit else None)
