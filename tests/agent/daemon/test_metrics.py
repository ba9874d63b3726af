"""The agent's /metrics: numbers pushed by the daemon, served over HTTP from a thread."""

from __future__ import annotations

import urllib.request

from weightwarden.agent.daemon.metrics import AgentMetrics, MetricsServer
from weightwarden.events import EgressSample, EnforcementDrift, Heartbeat


def test_metrics_server_reports_what_the_daemon_pushed() -> None:
    m = AgentMetrics()
    sample = EgressSample.model_validate({"ts": 1.0, "interval_s": 1.0, "lost_events": 3, "interfaces": [
        {"name": "eth0", "tx_bytes": 1500, "rx_bytes": 100, "tx_packets": 2}]})
    m.observe_event(sample)
    m.observe_event(sample)
    m.observe_event(EnforcementDrift(drift=["table gone"], restored=True))
    m.observe_event(Heartbeat(uptime_s=1.0, policy="p", policy_digest="d", spool_depth=42, events_dropped=1))
    m.sample_took(0.004)
    server = MetricsServer(m, "127.0.0.1:0").start()
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=5) as resp:
            text = resp.read().decode()
    finally:
        server.close()
    values = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
              if line and not line.startswith("#")}
    assert values['weightwarden_agent_interface_transmit_bytes_total{interface="eth0"}'] == 3000
    assert values["weightwarden_agent_lost_kernel_events_total"] == 6
    assert values["weightwarden_agent_enforcement_drift_total"] == 1
    assert values["weightwarden_agent_spool_depth"] == 42
    assert values["weightwarden_agent_sample_duration_seconds_count"] == 1
    assert values["weightwarden_agent_resident_memory_bytes"] > 1e6
    assert values["weightwarden_agent_cpu_seconds_total"] > 0
