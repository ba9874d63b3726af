from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

from tests.helpers.netns import NetnsPair, make_pair

if TYPE_CHECKING:
    from tests.helpers.broker import Broker

REQUIRE_PRIVILEGED = os.environ.get("WEIGHTWARDEN_REQUIRE_PRIVILEGED") == "1"
# Agents started by tests measure their own network namespace (the fallback path): eBPF attribution
# would watch this machine's whole cgroup hierarchy. Its tests give it a cgroup of their own.
os.environ.setdefault("WEIGHTWARDEN_ATTRIBUTION", "nfqueue")
# Nor do they pin programs in the host's bpf filesystem: a test that pins gives a bpffs of its own.
os.environ.setdefault("WEIGHTWARDEN_BPF_PIN_DIR", "none")
PRIVILEGED_TOOLS = ("ip", "iptables", "iperf3", "curl")


def _privileged_missing() -> str | None:
    if os.geteuid() != 0:
        return "needs root for network namespaces, netfilter and sock_diag destroy events"
    for tool in PRIVILEGED_TOOLS:
        if shutil.which(tool) is None:
            return f"needs {tool} (run scripts/bootstrap.sh)"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    reason = _privileged_missing()
    if reason is None:
        return
    for item in items:
        if "privileged" in item.keywords:
            if REQUIRE_PRIVILEGED:
                # In CI a privileged test that cannot run is a failure, never a silent skip.
                item.user_properties.append(("privileged_missing", reason))
            else:
                item.add_marker(pytest.mark.skip(reason=f"privileged: {reason}"))


@pytest.fixture(autouse=True)
def _fail_unrunnable_privileged(request: pytest.FixtureRequest) -> None:
    for key, value in request.node.user_properties:
        if key == "privileged_missing":
            pytest.fail(f"WEIGHTWARDEN_REQUIRE_PRIVILEGED=1 but this privileged test cannot run: {value}")


@pytest.fixture
def netns_pair() -> Iterator[NetnsPair]:
    pair = make_pair()
    try:
        yield pair
    finally:
        pair.teardown()


@pytest.fixture
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    from tests.helpers.broker import Broker

    if shutil.which("mosquitto") is None and not os.path.exists("/usr/sbin/mosquitto"):
        if REQUIRE_PRIVILEGED:
            pytest.fail("mosquitto is not installed (run scripts/bootstrap.sh)")
        pytest.skip("mosquitto is not installed")
    b = Broker(tmp_path_factory.mktemp("broker")).start()
    try:
        yield b
    finally:
        b.stop()
