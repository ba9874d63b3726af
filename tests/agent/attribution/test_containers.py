"""Container identity from real-world cgroup v2 paths (as /proc/PID/cgroup shows them)."""

from __future__ import annotations

import pytest

from weightwarden.agent.attribution.containers import parse, with_pod_names

CID = "3f1c9a7e5b2d4c6a8e0f1a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f"
UID = "6b0f9b2c-1f3c-4e8a-9d6f-0123456789ab"
UID_ = UID.replace("-", "_")

CASES = [
    # docker, systemd cgroup driver (Debian, Ubuntu defaults)
    (f"/system.slice/docker-{CID}.scope", "docker", CID, None, f"docker-{CID}.scope"),
    # docker, cgroupfs driver
    (f"/docker/{CID}", "docker", CID, None, None),
    # Kubernetes + containerd, systemd driver, burstable and guaranteed pods
    (f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/cri-containerd-{CID}.scope",
     "containerd", CID, UID, f"cri-containerd-{CID}.scope"),
    (f"/kubepods.slice/kubepods-pod{UID_}.slice/cri-containerd-{CID}.scope", "containerd", CID, UID,
     f"cri-containerd-{CID}.scope"),
    # Kubernetes + CRI-O
    (f"/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice/crio-{CID}.scope",
     "cri-o", CID, UID, f"crio-{CID}.scope"),
    # Kubernetes, cgroupfs driver (k3s, kind): the runtime is not in the path
    (f"/kubepods/besteffort/pod{UID}/{CID}", None, CID, UID, None),
    # containerd running as a service with the systemd driver's colon form
    (f"/system.slice/containerd.service/kubepods-burstable-pod{UID_}.slice:cri-containerd:{CID}",
     "containerd", CID, UID, "containerd.service"),
    # podman rootful, with its "container" sub-cgroup, and rootless
    (f"/machine.slice/libpod-{CID}.scope/container", "podman", CID, None, f"libpod-{CID}.scope"),
    (f"/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{CID}.scope", "podman", CID, None,
     f"libpod-{CID}.scope"),
    # podman with the cgroupfs driver (no systemd: seen from a real podman + runc here), alone and in a pod's slice
    (f"/libpod_parent/libpod-{CID}", "podman", CID, None, None),
    (f"/kubepods/besteffort/pod{UID}/libpod-{CID}", "podman", CID, UID, None),
    (f"/node-cgroup-root/kubepods/besteffort/pod{UID}/libpod-{CID}", "podman", CID, UID, None),
    # Slurm (cgroup/v2 plugin); enroot/pyxis containers run inside the job's step
    ("/system.slice/slurmstepd.scope/job_48213/step_0/user/task_0", "slurm", "48213", None, "slurmstepd.scope"),
    ("/slurm/uid_1000/job_77/step_batch", "slurm", "77", None, None),
    ("/lxc.payload.trainer", "lxc", "trainer", None, None),
    # no container: a systemd service or a login session
    ("/system.slice/nginx.service", None, None, None, "nginx.service"),
    ("/user.slice/user-1000.slice/session-3.scope", None, None, None, "session-3.scope"),
]


@pytest.mark.parametrize(("path", "runtime", "cid", "pod", "unit"), CASES)
def test_real_world_paths(path: str, runtime: str | None, cid: str | None, pod: str | None, unit: str | None) -> None:
    c = parse(path)
    assert c is not None
    assert (c.cgroup, c.runtime, c.id, c.pod_uid, c.unit) == (path, runtime, cid, pod, unit)


@pytest.mark.parametrize("path", [None, "", "/", "/init.scope/../x", "/user.slice", "/ww-test/app"])
def test_paths_that_show_nothing(path: str | None) -> None:
    c = parse(path)
    assert c is None or (c.runtime is None and c.id is None and c.pod_uid is None)


def test_a_short_hex_directory_outside_docker_or_pods_is_not_a_container() -> None:
    assert parse("/system.slice/deadbeefcafe0123") is None


def test_pod_names_come_only_from_what_the_node_knows() -> None:
    c = parse(f"/kubepods.slice/kubepods-pod{UID_}.slice/cri-containerd-{CID}.scope")
    named = with_pod_names(c, {UID: ("ml", "llama-serve-0")})
    assert named is not None and (named.pod_namespace, named.pod_name) == ("ml", "llama-serve-0")
    assert with_pod_names(c, {}) == c
