"""The Kubernetes manifests (packaging/kubernetes): every object valid against the Kubernetes schemas
(bundled by kubernetes-validate, offline, strict: an unknown field fails), reached from the top
kustomization, and consistent with the code they run: the agent's capabilities are its systemd unit's,
the probes hit the paths and ports the daemons serve, the arguments parse with the real CLIs, the
policy passes `policy check` and names the weights the DaemonSet mounts."""

from __future__ import annotations

import configparser
import copy
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "packaging" / "kubernetes"
# The oldest Kubernetes still in common support on GPU clusters, and the newest the schemas know.
VERSIONS = ("1.28.0", "1.37.0")
Doc = dict[str, Any]


def resolve(directory: Path, seen: list[Path]) -> list[Doc]:
    """Resources of a kustomization (only `resources:` is used here), recursively, in order."""
    kust = yaml.safe_load((directory / "kustomization.yaml").read_text())
    assert set(kust) <= {"apiVersion", "kind", "resources"}, f"{directory}: only resources, so files stand alone"
    docs: list[Doc] = []
    for res in kust["resources"]:
        path = directory / res
        if path.is_dir():
            docs += resolve(path, seen)
        else:
            seen.append(path)
            docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


@pytest.fixture(scope="module")
def objects() -> list[Doc]:
    seen: list[Path] = []
    docs = resolve(K8S, seen)
    files = sorted(p for p in K8S.rglob("*.yaml") if p.name != "kustomization.yaml")
    assert sorted(seen) == files, "every manifest is reached once from packaging/kubernetes/kustomization.yaml"
    return docs


def find(objects: list[Doc], kind: str, name: str) -> Doc:
    [obj] = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    return obj


def container(workload: Doc) -> Doc:
    [c] = workload["spec"]["template"]["spec"]["containers"]
    return c  # type: ignore[no-any-return]


@pytest.mark.parametrize("version", VERSIONS)
def test_every_object_is_valid_against_the_kubernetes_schemas(objects: list[Doc], version: str) -> None:
    for obj in objects:
        kubernetes_validate.validate(obj, version, strict=True)
        assert obj["metadata"].get("namespace", "weightwarden") == "weightwarden" or obj["kind"] == "Namespace"
    kinds = sorted({o["kind"] for o in objects})
    assert {"DaemonSet", "Deployment", "StatefulSet", "Service", "ConfigMap", "Secret", "Namespace"} <= set(kinds)


def test_the_validation_catches_a_broken_manifest(objects: list[Doc]) -> None:
    agent = copy.deepcopy(find(objects, "DaemonSet", "weightwarden-agent"))
    agent["spec"]["template"]["spec"]["hostPID"] = "yes"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(agent, VERSIONS[0], strict=True)
    agent = copy.deepcopy(find(objects, "DaemonSet", "weightwarden-agent"))
    container(agent)["securityContext"]["capabilitiez"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(agent, VERSIONS[0], strict=True)


def unit_capabilities() -> set[str]:
    unit = configparser.RawConfigParser(strict=False)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read_string((REPO / "weightwarden" / "systemd" / "weightwarden-agent.service").read_text()
                     .replace("\nSystemCallFilter=", "\n#"))
    return {c.removeprefix("CAP_") for c in unit["Service"]["CapabilityBoundingSet"].split()}


def expand(args: list[str], env: list[Doc]) -> list[str]:
    names = {e["name"] for e in env}
    for arg in args:
        for ref in re.findall(r"\$\((\w+)\)", arg):
            assert ref in names, f"{arg} refers to ${ref}, which the container does not define"
    return [re.sub(r"\$\((\w+)\)", "mqtt://broker:1883" if "BROKER" in arg else "x", a) for a in args]


def probe_port(c: Doc, probe: str) -> int:
    port = c[probe]["httpGet"]["port"]
    [named] = [p for p in c["ports"] if p["name"] == port]
    return int(named["containerPort"])


def test_the_agent_daemonset_has_the_host_views_mounts_and_only_its_units_capabilities(objects: list[Doc]) -> None:
    from weightwarden.agent.cli.main import build_parser

    ds = find(objects, "DaemonSet", "weightwarden-agent")
    pod = ds["spec"]["template"]["spec"]
    assert pod["hostPID"] is True and pod["hostNetwork"] is True
    c = container(ds)
    sc = c["securityContext"]
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert set(sc["capabilities"]["add"]) == unit_capabilities(), "the capabilities the systemd unit has, no more"
    assert sc["privileged"] is False and sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"]
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    for path in ("/sys/fs/bpf", "/sys/fs/cgroup", "/var/lib/weightwarden", "/srv/models"):
        assert path in mounts, path
        assert volumes[mounts[path]["name"]]["hostPath"]["path"] == path, "the node's own path, at the same place"
    assert mounts["/srv/models"]["readOnly"] is True and mounts["/sys/fs/cgroup"]["readOnly"] is True
    assert not mounts["/var/lib/weightwarden"].get("readOnly"), "its state directory is written"
    args = build_parser().parse_args(expand(c["args"], c["env"]))
    assert args.command == "run" and args.policy == "/etc/weightwarden/policy.yaml"
    assert mounts["/etc/weightwarden"]["name"] == "policy"
    listen = int(args.metrics_listen.rsplit(":", 1)[1])
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz" and probe_port(c, "livenessProbe") == listen
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz" and probe_port(c, "readinessProbe") == listen


def test_the_collector_runs_unprivileged_with_its_health_listener_and_a_secret_database(objects: list[Doc]) -> None:
    from weightwarden.collector.cli.main import build_parser

    dep = find(objects, "Deployment", "weightwarden-collector")
    pod, c = dep["spec"]["template"]["spec"], container(dep)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert c["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    args = build_parser().parse_args(expand(c["args"], c["env"]))
    assert args.health_listen and "--db" not in c["args"], "the database URL (a password) stays off the command line"
    [db] = [e for e in c["env"] if e["name"] == "WEIGHTWARDEN_DB"]
    secret = find(objects, "Secret", db["valueFrom"]["secretKeyRef"]["name"])
    assert db["valueFrom"]["secretKeyRef"]["key"] in secret["stringData"]
    listen = int(args.health_listen.rsplit(":", 1)[1])
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz" and probe_port(c, "livenessProbe") == listen
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz" and probe_port(c, "readinessProbe") == listen
    # The dependencies answer at the names the settings give.
    broker = find(objects, "ConfigMap", "weightwarden-settings")["data"]["broker"]
    assert "weightwarden-broker.weightwarden.svc:1883" in broker
    assert find(objects, "Service", "weightwarden-broker")["spec"]["ports"][0]["port"] == 1883
    assert "weightwarden-postgres.weightwarden.svc:5432" in secret["stringData"]["url"]
    pg = container(find(objects, "StatefulSet", "weightwarden-postgres"))
    [pw] = [e for e in pg["env"] if e["name"] == "POSTGRES_PASSWORD"]
    assert pw["valueFrom"]["secretKeyRef"]["name"] == secret["metadata"]["name"]
    assert f":{secret['stringData']['password']}@" in secret["stringData"]["url"]


def test_the_policy_passes_check_and_watches_what_the_daemonset_mounts(objects: list[Doc], tmp_path: Path) -> None:
    policy = find(objects, "ConfigMap", "weightwarden-policy")["data"]["policy.yaml"]
    (tmp_path / "policy.yaml").write_text(policy)
    res = subprocess.run([sys.executable, "-m", "weightwarden.agent", "policy", "check", str(tmp_path / "policy.yaml")],
                         capture_output=True, text=True, cwd=str(REPO), timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
    paths = yaml.safe_load(policy)["spec"]["weights"]["paths"]
    assert paths and all(p.startswith("/srv/models/") for p in paths)
