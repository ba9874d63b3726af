"""Cap selectors the kernel cannot enforce are refused with the reason (never widened)."""

from __future__ import annotations

import pytest

from tests.agent.enforce.test_plan import HEAD
from weightwarden.agent.enforce.selectors import KernelSupport, refusals, refused_caps
from weightwarden.agent.policy.loader import PolicyError, parse_policy

HYBRID, UNIFIED = KernelSupport(cgroupv2_paths=False), KernelSupport(cgroupv2_paths=True)


def _policy(match: str):  # type: ignore[no-untyped-def]
    return parse_policy(HEAD + f"  caps:\n    - {{name: c, rate: 1Mbit, match: {match}}}\n").policy


def test_cgroups_refused_on_hybrid_accepted_on_unified() -> None:
    policy = _policy("{cgroups: [system.slice/trainer.service]}")
    (reason,) = refusals(policy, HYBRID)
    assert "unified" in reason and "hybrid" in reason and "'c'" in reason
    assert refusals(policy, UNIFIED) == [] and refused_caps(policy, UNIFIED) == set()


def test_executables_are_refused_everywhere() -> None:
    policy = _policy("{executables: [/usr/bin/scp]}")
    for support in (HYBRID, UNIFIED):
        assert refusals(policy, support) and refused_caps(policy, support) == {"c"}


def test_containers_are_enforced_on_hybrid_and_unified_but_not_with_a_uid_or_cgroup() -> None:
    # Matched by the host-side veth, resolved from /proc: no cgroup v2 path reaches nft.
    policy = _policy("{containers: [{pod_namespace: ml, pod_name: serve-0}], destinations: [{cidr: 10.0.0.0/8}]}")
    for support in (HYBRID, UNIFIED):
        assert refusals(policy, support) == [] and refused_caps(policy, support) == set()
    for extra in ("uids: [1000]", "cgroups: [system.slice/x.service]"):
        policy = _policy(f"{{containers: [{{runtime: docker}}], {extra}}}")
        (reason,) = [r for r in refusals(policy, UNIFIED) if "containers" in r]
        assert "no socket" in reason and refused_caps(policy, UNIFIED) == {"c"}


def test_container_selectors_are_validated() -> None:
    with pytest.raises(PolicyError):
        _policy("{containers: [{}]}")  # a selector that selects nothing
    with pytest.raises(PolicyError):
        _policy("{containers: [{id: 'not-hex'}]}")
    assert _policy("{containers: [{id: 3f1c9a7e5b2d, runtime: containerd}]}").spec.caps[0].match.containers


def test_policy_check_refuses_an_unenforceable_selector(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    from weightwarden.agent.cli.main import main

    path = tmp_path / "p.yaml"
    path.write_text(HEAD + "  caps:\n    - {name: c, rate: 1Mbit, match: {executables: [/usr/bin/scp]}}\n")
    assert main(["policy", "check", str(path)]) == 1
    err = capsys.readouterr().err
    assert "executables" in err and "cannot be enforced" in err
