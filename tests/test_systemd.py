"""The shipped unit is valid systemd, hardened, and runs the policy check first."""

import configparser
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
UNITS = sorted((REPO / "systemd").glob("*.service"))


def _unit(path: Path) -> configparser.RawConfigParser:
    parser = configparser.RawConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(path.read_text().replace("\nExecReload=", "\nExecReload2=").replace(
        "\nSystemCallFilter=~", "\nSystemCallFilterDeny=~"))
    return parser


@pytest.mark.parametrize("path", UNITS, ids=lambda p: p.name)
def test_unit_is_hardened(path: Path) -> None:
    svc = _unit(path)["Service"]
    assert svc["Restart"] == "on-failure"
    if "agent" in path.name:
        assert svc["Type"] == "notify" and "WatchdogSec" in svc
    assert svc["NoNewPrivileges"] == "yes" and svc["ProtectSystem"] == "strict"
    assert "policy check" in svc.get("ExecStartPre", "") or "collector" in path.name


@pytest.mark.parametrize("path", UNITS, ids=lambda p: p.name)
def test_systemd_analyze_verify(path: Path, tmp_path: Path) -> None:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed")
    binary = Path(sys.executable).parent
    text = path.read_text().replace("/usr/local/bin/", f"{binary}/")
    unit = tmp_path / path.name
    unit.write_text(text)
    res = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True)
    problems = [ln for ln in res.stderr.splitlines() if path.name in ln]
    assert res.returncode == 0 and not problems, res.stderr
