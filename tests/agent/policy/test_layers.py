"""A base policy plus drop-ins: merged in the documented order, every value traceable to its file and line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.agent.policy.test_policy import CONTRACT
from weightwarden.agent.policy.loader import PolicyError, load_policy, stamp


@pytest.fixture
def base(tmp_path: Path) -> Path:
    path = tmp_path / "policy.yaml"
    path.write_text(CONTRACT + "  budgets:\n    - {name: daily, bytes: 50GB, window: 24h}\n")
    (tmp_path / "policy.d").mkdir()
    return path


def drop(base: Path, name: str, text: str) -> Path:
    path = base.parent / "policy.d" / name
    path.write_text(text)
    return path


def test_drop_ins_merge_in_lexical_order_by_name(base: Path) -> None:
    drop(base, "50-gpu.yaml", "spec:\n  caps:\n    - name: host-default\n      rate: 10Mbit\n"
                              "    - name: scp\n      rate: 1Mbit\n      match: {uids: [1000]}\n")
    drop(base, "10-site.yaml", "spec:\n  caps:\n    - name: host-default\n      rate: 50Mbit\n      burst: 64KiB\n")
    drop(base, "90-off.yaml.bak", "spec: {caps: []}\n")  # not *.yaml: ignored
    drop(base, ".hidden.yaml", "spec: {caps: []}\n")
    loaded = load_policy(base)
    caps = loaded.policy.spec.caps
    # 10- then 50-: the later file's rate wins, the earlier one's burst stays; a new name is appended.
    assert [(c.name, c.rate, c.burst) for c in caps] == [("host-default", 10_000_000, 65536), ("scp", 1_000_000, None)]
    assert [Path(f).name for f in loaded.files] == ["policy.yaml", "10-site.yaml", "50-gpu.yaml"]
    assert loaded.sources["spec.caps[0].rate"].endswith("50-gpu.yaml:4")
    assert loaded.sources["spec.caps[0].burst"].endswith("10-site.yaml:5")
    assert loaded.sources["spec.allow[0].cidr"].endswith("policy.yaml:7")
    assert loaded.sources["spec.budgets[0].bytes"].endswith("policy.yaml:12")


def test_plain_lists_are_replaced_and_remove_deletes(base: Path) -> None:
    drop(base, "20.yaml", "spec:\n  allow: [{cidr: 10.0.0.0/8}]\n  budgets:\n    - {name: daily, remove: true}\n")
    spec = load_policy(base).policy.spec
    assert [d.cidr for d in spec.allow] == ["10.0.0.0/8"]
    assert spec.budgets == []
    assert load_policy(base, drop_ins=False).policy.spec.budgets[0].name == "daily"


def test_problems_in_a_drop_in_name_that_file_and_line(base: Path) -> None:
    drop(base, "30.yaml", "spec:\n  caps:\n    - name: host-default\n      rate: 20Mbps\n")
    drop(base, "40.yaml", "spec:\n  budgets:\n    - {name: nope, remove: true}\n")
    with pytest.raises(PolicyError) as err:
        load_policy(base)
    (p,) = err.value.problems
    assert p.file is not None and p.file.endswith("40.yaml") and p.line == 3 and "nothing named 'nope'" in p.message
    (base.parent / "policy.d" / "40.yaml").unlink()
    with pytest.raises(PolicyError) as err:
        load_policy(base)
    (p,) = err.value.problems
    assert p.file is not None and p.file.endswith("30.yaml") and p.line == 4 and p.path == "spec.caps[0].rate"
    assert p.render(str(base)).startswith(p.file + ":4: ")


def test_check_shows_the_merged_result_and_where_each_value_came_from(base: Path) -> None:
    drop(base, "50.yaml", "spec:\n  caps:\n    - name: host-default\n      rate: 5MB/s\n")
    out = subprocess.run([sys.executable, "-m", "weightwarden.agent", "policy", "check", str(base)],
                         capture_output=True, text=True, check=True).stdout
    assert "merged from 2 files" in out
    rate_line = next(line for line in out.splitlines() if line.strip().startswith("rate:"))
    assert "5MB/s" in rate_line and rate_line.rstrip().endswith("50.yaml:4")
    assert "40 Mbit/s (5 MB/s)" in out
    doc = json.loads(subprocess.run([sys.executable, "-m", "weightwarden.agent", "policy", "check", str(base),
                                     "--json"], capture_output=True, text=True, check=True).stdout)
    assert doc["merged"]["spec"]["caps"][0]["rate"] == "5MB/s"
    assert doc["sources"]["spec.caps[0].rate"].endswith("50.yaml:4")


def test_a_new_drop_in_changes_the_reload_stamp(base: Path) -> None:
    before = stamp(base)
    drop(base, "60.yaml", "spec: {interval: 2s}\n")
    assert stamp(base) != before
    first = load_policy(base).digest
    drop(base, "60.yaml", "spec: {interval: 3s}\n")
    assert load_policy(base).digest != first
