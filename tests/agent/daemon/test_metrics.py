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


def test_metrics_carry_the_sensor_and_what_it_could_not_explain() -> None:
    from weightwarden.events import SensorFeature, SensorState, SensorTampered, TamperChange

    m = AgentMetrics()
    sensor = SensorState(path="ebpf", kernel="6.18.0", degraded=True, features={
        "dns_names": SensorFeature(on=False, reason="ww_ingress: refused"), "egress_bytes": SensorFeature(on=True)})
    m.observe_event(Heartbeat(uptime_s=1.0, policy="p", policy_digest="d", sensor=sensor))
    m.observe_event(EgressSample.model_validate({"ts": 1.0, "interval_s": 1.0, "interfaces": [
        {"name": "eth0", "tx_bytes": 5000, "unexplained_tx_bytes": 4000}]}))
    m.observe_event(SensorTampered(changes=[TamperChange(kind="link_detached", name="ww_egress")], reattached=True,
                                   detected_ts=1.0))
    text = m.render()
    assert 'weightwarden_agent_sensor_degraded{path="ebpf",kernel="6.18.0"} 1' in text
    assert 'weightwarden_agent_sensor_feature{feature="dns_names"} 0' in text
    assert 'weightwarden_agent_sensor_feature{feature="egress_bytes"} 1' in text
    assert "weightwarden_agent_sensor_tampered_total 1" in text
    assert 'weightwarden_agent_interface_unexplained_transmit_bytes_total{interface="eth0"} 4000' in text
