"""Signed central policies, end to end: a real Mosquitto in namespace B, a real agent in namespace A,
the real publisher; the policy reaches the kernel, everything untrustworthy is refused with an event."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.agent_run import DaemonRun
from tests.helpers.broker import Broker
from tests.helpers.netns import NetnsPair, wait_for
from weightwarden.policysign import generate_key, load_private_key, sign, topic

pytestmark = pytest.mark.privileged

HOSTS = "test-*"  # DaemonRun's host id is test-host
BOOT = """apiVersion: weightwarden/v1
kind: EgressPolicy
metadata: {name: bootstrap}
spec:
  interval: 1s
"""


def capped(rate: str, name: str = "central") -> str:
    return BOOT.replace("bootstrap", name) + f"  caps: [{{name: host-default, rate: {rate}}}]\n"


@pytest.fixture
def lab(netns_pair: NetnsPair, tmp_path: Path) -> Iterator[tuple[NetnsPair, Broker]]:
    broker = Broker(tmp_path / "broker", host=netns_pair.addr_b, port=18831, netns=netns_pair.b).start()
    yield netns_pair, broker
    broker.stop()


def kernel_rates(pair: NetnsPair) -> list[int]:
    """The htb class rates on the agent's interface, read back over netlink."""
    code = ("import json, sys; from weightwarden.agent.enforce.tc import read_interface; "
            "print(json.dumps(read_interface(sys.argv[1])))")
    state = json.loads(pair.run(pair.a, sys.executable, "-c", code, pair.veth_a).stdout)
    return [c["rate_bps"] for c in state.get("classes", [])]


def test_signed_policies_are_applied_and_everything_else_refused(lab: tuple[NetnsPair, Broker], tmp_path: Path) -> None:
    pair, broker = lab
    k1, k1_pub, _ = generate_key(tmp_path / "k1")
    k2, k2_pub, _ = generate_key(tmp_path / "k2")
    key1 = load_private_key(k1)
    url = f"mqtt://{pair.addr_b}:{broker.port}"
    boot = tmp_path / "policy.yaml"
    boot.write_text(BOOT)
    daemon = DaemonRun(pair, boot, tmp_path / "state", "--policy-source", "mqtt", "--policy-broker",
                       f"{url}?keepalive=2", "--trust-key", str(k1_pub), "--trust-key", str(k2_pub))
    daemon.wait_event("policy_applied", source="file")

    # A hostile local file on reload: refused with lines, the daemon keeps running.
    boot.write_bytes(b"\xff\xfe" + b"spec: " + b"[" * 3000)
    rejected = daemon.wait_event("policy_rejected", source="file")
    assert "not UTF-8" in rejected["data"]["problems"][0] and daemon.proc.poll() is None

    def publish_cli(policy: str, key: Path, version: int, hosts: str = HOSTS) -> Any:
        path = tmp_path / f"p{version}.yaml"
        path.write_text(policy)
        return pair.run(pair.b, sys.executable, "-m", "weightwarden.collector", "policy", "publish", str(path),
                        "--key", str(key), "--hosts", hosts, "--broker", url, "--version", str(version), check=False)

    def publish_raw(payload: bytes, hosts: str = HOSTS) -> None:
        path = tmp_path / "raw.json"
        path.write_bytes(payload)
        pair.run(pair.b, sys.executable, "-m", "tests.helpers.publish_raw", pair.addr_b, str(broker.port), topic(hosts),
                 str(path))

    # 1. Signed, newer, valid: applied, and in the kernel.
    out = publish_cli(capped("7Mbit"), k1, 10)
    assert out.returncode == 0, out.stderr
    applied = daemon.wait_event("policy_applied", version=10, source="mqtt")
    assert applied["data"]["policy"] == "central" and applied["data"]["policy_path"] == f"mqtt:{topic(HOSTS)}"
    assert kernel_rates(pair) == [7_000_000]
    mark = len(daemon.events)

    # 2. Tampered after signing: a bad signature.
    doc = json.loads(sign(capped("7Mbit"), HOSTS, 11, key1).to_json())
    doc["policy"] = doc["policy"].replace("7Mbit", "700Mbit")
    publish_raw(json.dumps(doc).encode())
    assert "bad signature" in daemon.wait_event("policy_rejected", version=11, after=mark)["data"]["problems"][0]
    # 3. Older than the one in force: no rollback.
    publish_raw(sign(capped("500Mbit"), HOSTS, 9, key1).to_json())
    assert "not newer than version 10" in daemon.wait_event("policy_rejected", version=9, after=mark)["data"]["problems"][0]
    # 4. Validly signed for another host group, copied onto this group's topic.
    publish_raw(sign(capped("500Mbit"), "train-*", 12, key1).to_json())
    assert "another host group" in daemon.wait_event("policy_rejected", version=12, after=mark)["data"]["problems"][0]
    # 5. Signed, newer, but fails policy check (and the publisher itself refuses to send it).
    bad = capped("7Mbps")
    assert publish_cli(bad, k1, 13).returncode == 1
    publish_raw(sign(bad, HOSTS, 13, key1).to_json())
    problems = daemon.wait_event("policy_rejected", version=13, after=mark)["data"]["problems"]
    assert any("spec.caps[0].rate" in p for p in problems)
    refusals = [e for e in daemon.events[mark:] if e["type"] == "policy_rejected"]
    assert all(e["data"]["source"] == "mqtt" and e["data"]["kept"] == "central" for e in refusals)
    assert not [e for e in daemon.events[mark:] if e["type"] == "policy_applied"], "the policy in force stayed"
    assert kernel_rates(pair) == [7_000_000]

    # 6. Offline while the next version is published (signed with the second key: rotation); applied on reconnect.
    pair.run(pair.a, "ip", "link", "set", pair.veth_a, "down")
    out = publish_cli(capped("9Mbit"), k2, 20)
    assert out.returncode == 0, out.stderr
    assert wait_for(lambda: any("policy_source_disconnected" in line for line in daemon.stderr), 10), \
        "the agent should have lost the broker"
    time.sleep(0.5)
    assert not [e for e in daemon.events[mark:] if e["type"] == "policy_applied"]
    pair.run(pair.a, "ip", "link", "set", pair.veth_a, "up")
    daemon.wait_event("policy_applied", version=20, source="mqtt", timeout=30)
    assert kernel_rates(pair) == [9_000_000]
    assert daemon.stop() == 0
