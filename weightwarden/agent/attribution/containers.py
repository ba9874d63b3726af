"""Which container a process runs in, read from its cgroup v2 path. Pure: a string in, a model out.

Only what the path shows is reported, nothing is guessed: a Kubernetes path
carries the pod's UID but not its namespace or name (``pod_names`` can add
those from the kubelet's log directories, see ``weightwarden/agent/kernel/cgroupfs.py``). Shapes
recognised (systemd and cgroupfs drivers):

    /system.slice/docker-<id>.scope                               docker
    /docker/<id>                                                  docker
    /kubepods.slice/kubepods-burstable.slice/
        kubepods-burstable-pod<uid_>.slice/cri-containerd-<id>.scope  containerd, pod
    /kubepods/besteffort/pod<uid>/<id>                            (runtime unknown), pod
    .../kubepods-pod<uid_>.slice/crio-<id>.scope                  cri-o, pod
    /system.slice/containerd.service/kubepods-...-pod<uid_>.slice:cri-containerd:<id>
    /machine.slice/libpod-<id>.scope[/container]                  podman (also rootless, under user@.service)
    /libpod_parent/libpod-<id>                                    podman, cgroupfs driver (no systemd)
    /system.slice/slurmstepd.scope/job_<n>/step_<s>/user/task_0  slurm (enroot/pyxis run inside the job)
    /slurm/uid_<u>/job_<n>/step_<s>                               slurm (cgroup v1 layout)
    /lxc.payload.<name>                                           lxc
    /system.slice/nginx.service                                   systemd unit only
"""

from __future__ import annotations

import re

from weightwarden.events import Container

_ID = r"[0-9a-f]{12,64}"
_POD_SYSTEMD = re.compile(r"^kubepods(?:-[a-z]+)?-pod([0-9a-f_]{36})\.slice$")
_POD_CGROUPFS = re.compile(r"^pod([0-9a-f-]{36})$")
_SCOPES = (
    (re.compile(rf"^docker-({_ID})\.scope$"), "docker"),
    (re.compile(rf"^cri-containerd-({_ID})\.scope$"), "containerd"),
    (re.compile(rf"^crio-({_ID})\.scope$"), "cri-o"),
    (re.compile(rf"^libpod-({_ID})\.scope$"), "podman"),
    (re.compile(rf"^libpod-({_ID})$"), "podman"),  # the cgroupfs driver's name: no .scope
)
_COLON = re.compile(rf"^(kubepods[a-z0-9_-]*\.slice):(cri-containerd|crio|docker):({_ID})$")
_BARE_ID = re.compile(rf"^{_ID}$")
_SLURM_JOB = re.compile(r"^job_(\d+)$")
_LXC = re.compile(r"^lxc\.payload\.(.+)$")
_UNIT = re.compile(r"^[^/]+\.(service|scope)$")
_RUNTIME_OF_COLON = {"cri-containerd": "containerd", "crio": "cri-o", "docker": "docker"}


def parse(cgroup: str | None) -> Container | None:
    """The container (or systemd unit) a cgroup path shows; None for the root or no path."""
    if not cgroup or cgroup == "/":
        return None
    parts = [p for p in cgroup.split("/") if p]
    runtime: str | None = None
    cid: str | None = None
    pod_uid: str | None = None
    unit: str | None = None
    for i, part in enumerate(parts):
        colon = _COLON.match(part)
        if colon:
            pod = _POD_SYSTEMD.match(colon.group(1))
            if pod:
                pod_uid = pod.group(1).replace("_", "-")
            runtime, cid = _RUNTIME_OF_COLON[colon.group(2)], colon.group(3)
            continue
        if m := _POD_SYSTEMD.match(part):
            pod_uid = m.group(1).replace("_", "-")
            continue
        # kubelet's cgroupfs driver: /kubepods/<qos>/pod<uid>, at the root or below a --cgroup-root
        # (a node in a container: kind, k3s; here, a test's own subtree)
        if (m := _POD_CGROUPFS.match(part)) and "kubepods" in parts[:i]:
            pod_uid = m.group(1)
            continue
        for pattern, name in _SCOPES:
            if m := pattern.match(part):
                runtime, cid = name, m.group(1)
                break
        else:
            if _BARE_ID.match(part) and i > 0 and (parts[i - 1] == "docker" or pod_uid):
                runtime = runtime or ("docker" if parts[i - 1] == "docker" else None)
                cid = part
            elif (m := _SLURM_JOB.match(part)) and any(p.startswith("slurm") for p in parts[:i]):
                runtime, cid = "slurm", m.group(1)
            elif m := _LXC.match(part):
                runtime, cid = "lxc", m.group(1)
        if _UNIT.match(part):
            unit = part
    if runtime is None and cid is None and pod_uid is None and unit is None:
        return None
    return Container(cgroup=cgroup, runtime=runtime, id=cid, pod_uid=pod_uid, unit=unit)


def with_pod_names(container: Container | None, pod_names: dict[str, tuple[str, str]]) -> Container | None:
    """Add the pod's namespace and name when the node knows them (pod UID -> (namespace, name))."""
    if container is None or container.pod_uid is None or container.pod_uid not in pod_names:
        return container
    namespace, name = pod_names[container.pod_uid]
    return container.model_copy(update={"pod_namespace": namespace, "pod_name": name})
