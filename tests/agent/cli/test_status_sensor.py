"""status says what the sensor can see, and its exit code says when it is degraded (4)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from weightwarden.agent.attribution.sample import SampleJson

DEGRADED = {"path": "nfqueue", "kernel": "6.18.0", "degraded": True, "features": {
    "ebpf_path": {"on": False, "reason": "the kernel refused ww_egress, which attribution cannot do without: R2 "
                                         "type=untrusted_ptr_ expected=ptr_"}}}
WHOLE = {"path": "ebpf", "kernel": "6.18.0", "degraded": False, "features": {"egress_bytes": {"on": True}}}


def _status(state: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "weightwarden.agent", "status", "--state-dir", str(state),
                           "--backend", "dry-run", *args], capture_output=True, text=True, timeout=60)


def test_a_degraded_sensor_exits_4_and_says_why(tmp_path: Path) -> None:
    (tmp_path / "health.json").write_text(json.dumps({"sensor": DEGRADED}))
    out = _status(tmp_path, "--json")
    assert out.returncode == 4, out.stderr
    assert json.loads(out.stdout)["sensor"] == DEGRADED
    human = _status(tmp_path)
    assert human.returncode == 4
    assert "DEGRADED" in human.stdout and "off: ebpf_path: the kernel refused ww_egress" in human.stdout


def test_a_whole_sensor_exits_0(tmp_path: Path) -> None:
    (tmp_path / "health.json").write_text(json.dumps({"sensor": WHOLE}))
    out = _status(tmp_path, "--json")
    assert out.returncode == 0 and json.loads(out.stdout)["sensor"]["path"] == "ebpf"


def test_the_fallback_chosen_on_purpose_is_degraded_but_exits_0(tmp_path: Path) -> None:
    chosen = {"path": "nfqueue", "degraded": True, "features": {"nfqueue": {"on": True}}}
    (tmp_path / "health.json").write_text(json.dumps({"sensor": chosen}))
    out = _status(tmp_path, "--json")
    assert out.returncode == 0 and json.loads(out.stdout)["sensor"]["degraded"] is True
    lost = {"path": "ebpf", "degraded": True, "features": {"dns_names": {"on": False, "reason": "ww_ingress: ..."}}}
    (tmp_path / "health.json").write_text(json.dumps({"sensor": lost}))
    assert _status(tmp_path).returncode == 4


def test_top_says_when_the_sensor_is_degraded_and_what_is_unexplained() -> None:
    from weightwarden.agent.cli.topview import TopState

    sample: SampleJson = {
        "ts": 1.0, "interval_s": 1.0, "layer": "transport-payload", "processes": [], "attributed_tx_bytes": 0,
        "unattributed_tx_bytes": 5000, "unowned_flow_tx_bytes": 0, "lost_events": 0,
        "interfaces": [{"name": "eth0", "tx_bytes": 5000, "rx_bytes": 0, "tx_packets": 0, "tx_rate_bps": 0.0,
                        "unexplained_tx_bytes": 3072}],
        "sensor": {"path": "ebpf", "degraded": True, "features": {"dns_names": {"on": False}}}}
    text = TopState().render(sample)
    assert "UNEXPLAINED 3.0 KiB" in text and "sensor DEGRADED (ebpf): off: dns_names" in text
    whole = TopState().render(sample | {"interfaces": [], "sensor": {"path": "ebpf", "degraded": False}})
    assert "DEGRADED" not in whole and "UNEXPLAINED" not in whole
