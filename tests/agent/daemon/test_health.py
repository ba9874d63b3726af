"""The agent's /healthz and /readyz (for Kubernetes probes), on the --metrics-listen server."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.helpers.agent_run import DaemonRun
from tests.helpers.broker import free_port
from tests.helpers.netns import NetnsPair, wait_for
from weightwarden.agent.daemon.metrics import AgentMetrics, MetricsServer
from weightwarden.events import AgentStarted, AgentStopping


def get(url: str) -> tuple[int, dict[str, str]]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_health_follows_the_daemon_start_progress_and_stop() -> None:
    m = AgentMetrics()
    stuck = [0.0]
    m.stuck_for = lambda: stuck[0]
    server = MetricsServer(m, "127.0.0.1:0").start()
    base = f"http://127.0.0.1:{server.port}"
    try:
        assert get(base + "/healthz") == (200, {"status": "starting", "detail": "loading the policy and the sensors"})
        assert get(base + "/readyz")[0] == 503, "not ready before the policy is applied"
        m.observe_event(AgentStarted.model_validate({"pid": 1, "policy": "p", "policy_digest": "d", "policy_path": "/p"}))
        assert get(base + "/healthz") == (200, {"status": "ok", "detail": ""})
        assert get(base + "/readyz") == (200, {"status": "ok", "detail": ""})
        stuck[0] = 12.5  # the watchdog's own test: a sample or enforcement pass overdue
        assert get(base + "/healthz") == (503, {"status": "stuck", "detail": "a sample or enforcement pass is 12.5 s "
                                                                             "overdue"})
        assert get(base + "/readyz")[0] == 503
        stuck[0] = 0.0
        m.observe_event(AgentStopping(reason="signal", rules_left_in_force=True))
        assert get(base + "/readyz") == (503, {"status": "stopping", "detail": ""})
        assert get(base + "/healthz")[0] == 200
        with urllib.request.urlopen(base + "/metrics", timeout=5) as resp:
            assert b"weightwarden_agent_uptime_seconds" in resp.read(), "/metrics still served beside them"
    finally:
        server.close()


@pytest.mark.privileged
def test_a_running_agent_answers_its_probes(netns_pair: NetnsPair, tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text("apiVersion: weightwarden/v1\nkind: EgressPolicy\nmetadata: {name: probes}\nspec: {}\n")
    port = free_port()
    agent = DaemonRun(netns_pair, policy, tmp_path / "state", "--no-nfqueue", "--metrics-listen",
                      f"{netns_pair.addr_a}:{port}")

    def probe(path: str) -> tuple[int, str]:
        res = netns_pair.run(netns_pair.b, "curl", "-s", "-o", "/dev/stderr", "-w", "%{http_code}",
                             f"http://{netns_pair.addr_a}:{port}{path}", check=False)
        return int(res.stdout or 0), res.stderr

    try:
        assert probe("/readyz")[0] in (0, 503), "not ready before it has started"
        assert wait_for(lambda: probe("/readyz")[0] == 200 or agent.proc.poll() is not None, 30), agent.stderr[-5:]
        agent.wait_event("agent_started", timeout=5)  # ready means: started, policy applied
        code, body = probe("/healthz")
        assert code == 200 and json.loads(body)["status"] == "ok"
    finally:
        assert agent.stop() == 0
    code, _ = probe("/healthz")
    assert code == 0, "the probe server goes with the agent"
