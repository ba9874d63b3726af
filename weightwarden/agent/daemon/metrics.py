"""``weightwarden-agent run --metrics-listen HOST:PORT``: the agent's own health in Prometheus text.

The daemon pushes numbers in (:meth:`AgentMetrics.observe_event`, after each
sample and heartbeat); a stdlib HTTP server in a daemon thread renders them.
Nothing here calls back into the daemon, so a slow or hostile scraper never
blocks sampling, enforcement or the sink. CPU and RSS are read from /proc at
scrape time (psutil, this process only).

The same server answers ``/healthz`` (live: the sample and enforcement loops make progress,
the test the systemd watchdog uses) and ``/readyz`` (ready: started, policy applied, not
stopping), for Kubernetes probes; see :meth:`AgentMetrics.live`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import psutil

from weightwarden import health
from weightwarden.events import (
    AgentStarted,
    AgentStopping,
    EgressSample,
    EnforcementDrift,
    Heartbeat,
    Payload,
    SensorState,
    SensorTampered,
)


def _label(value: object) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


class AgentMetrics:
    """Counters and gauges the daemon updates; :meth:`render` may run in any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.started = time.time()
        self.events: dict[str, int] = {}
        self.samples = 0
        self.sample_seconds_sum = 0.0
        self.last_sample_seconds = 0.0
        self.lost_kernel_events = 0
        self.drift = 0
        self.spool_depth = 0
        self.events_dropped = 0
        self.iface_tx: dict[str, int] = {}
        self.iface_rx: dict[str, int] = {}
        self.iface_packets: dict[str, int] = {}
        self.iface_unexplained: dict[str, int] = {}
        self.sensor: SensorState | None = None
        self.tampered = 0
        self._process = psutil.Process()
        # Health: the daemon sets stuck_for (its watchdog's test); started/stopping follow its events.
        self.stuck_for: Callable[[], float] | None = None
        self.agent_started = False
        self.agent_stopping = False

    def sample_took(self, seconds: float) -> None:
        with self._lock:
            self.samples += 1
            self.sample_seconds_sum += seconds
            self.last_sample_seconds = seconds

    def observe_event(self, data: Payload) -> None:
        """Every event the daemon emits passes here (one call in ``Agent.emit``)."""
        self._observe_lifecycle(data)
        with self._lock:
            self.events[data.TYPE] = self.events.get(data.TYPE, 0) + 1
            if isinstance(data, (EgressSample, Heartbeat, AgentStarted)) and data.sensor is not None:
                self.sensor = data.sensor
            if isinstance(data, EgressSample):
                self.lost_kernel_events += data.lost_events
                for i in data.interfaces:
                    self.iface_tx[i.name] = self.iface_tx.get(i.name, 0) + i.tx_bytes
                    self.iface_rx[i.name] = self.iface_rx.get(i.name, 0) + i.rx_bytes
                    self.iface_packets[i.name] = self.iface_packets.get(i.name, 0) + i.tx_packets
                    if i.unexplained_tx_bytes is not None:
                        self.iface_unexplained[i.name] = self.iface_unexplained.get(i.name, 0) + i.unexplained_tx_bytes
            elif isinstance(data, SensorTampered):
                self.tampered += 1
            elif isinstance(data, EnforcementDrift):
                self.drift += 1
            elif isinstance(data, Heartbeat):
                # The heartbeat carries the spool depth and the running total of drops.
                self.spool_depth = data.spool_depth
                self.events_dropped = data.events_dropped

    # -- health ---------------------------------------------------------

    def _observe_lifecycle(self, data: Payload) -> None:
        if isinstance(data, AgentStarted):
            self.agent_started = True
        elif isinstance(data, AgentStopping):
            self.agent_stopping = True

    def live(self) -> health.Probe:
        """Alive while starting, and afterwards while no sample or enforcement pass is overdue."""
        if not self.agent_started:
            return health.Probe(True, "starting", "loading the policy and the sensors")
        stuck = self.stuck_for() if self.stuck_for is not None else 0.0
        if stuck > 0:
            return health.Probe(False, "stuck", f"a sample or enforcement pass is {stuck:g} s overdue")
        return health.Probe(True, "ok")

    def ready(self) -> health.Probe:
        if self.agent_stopping:
            return health.Probe(False, "stopping")
        if not self.agent_started:
            return health.Probe(False, "starting", "loading the policy and the sensors")
        probe = self.live()
        return probe if not probe.ok else health.Probe(True, "ok")

    def render(self) -> str:
        lines: list[str] = []

        def family(name: str, kind: str, help_: str, samples: list[tuple[dict[str, object], float]]) -> None:
            lines.extend([f"# HELP {name} {help_}", f"# TYPE {name} {kind}"])
            for labels, value in samples:
                lab = ",".join(f'{k}="{_label(v)}"' for k, v in labels.items())
                lines.append(f"{name}{{{lab}}} {value:g}" if lab else f"{name} {value:g}")

        try:
            with self._process.oneshot():
                cpu = self._process.cpu_times()
                rss = self._process.memory_info().rss
        except psutil.Error:
            cpu, rss = None, 0
        with self._lock:
            family("weightwarden_agent_cpu_seconds_total", "counter", "CPU time of the agent process (user + system).",
                   [({}, (cpu.user + cpu.system) if cpu else 0.0)])
            family("weightwarden_agent_resident_memory_bytes", "gauge", "Resident memory of the agent process.",
                   [({}, float(rss))])
            family("weightwarden_agent_uptime_seconds", "gauge", "Seconds since the agent started.",
                   [({}, round(time.time() - self.started, 3))])
            family("weightwarden_agent_sample_duration_seconds", "summary", "Time to take one egress sample.", [])
            lines.append(f"weightwarden_agent_sample_duration_seconds_sum {self.sample_seconds_sum:g}")
            lines.append(f"weightwarden_agent_sample_duration_seconds_count {self.samples}")
            family("weightwarden_agent_last_sample_duration_seconds", "gauge", "Duration of the latest sample.",
                   [({}, round(self.last_sample_seconds, 6))])
            family("weightwarden_agent_lost_kernel_events_total", "counter",
                   "Kernel events (netlink, NFQUEUE) lost because the agent was too slow.",
                   [({}, self.lost_kernel_events)])
            family("weightwarden_agent_spool_depth", "gauge", "Events in the spool not yet acknowledged by the broker "
                   "(as of the last heartbeat).", [({}, self.spool_depth)])
            family("weightwarden_agent_events_dropped_total", "counter", "Events the agent could not queue.",
                   [({}, self.events_dropped)])
            family("weightwarden_agent_enforcement_drift_total", "counter",
                   "Times the kernel rules were found changed behind the agent's back.", [({}, self.drift)])
            family("weightwarden_agent_events_total", "counter", "Events emitted, by type.",
                   [({"type": t}, n) for t, n in sorted(self.events.items())])
            family("weightwarden_agent_interface_transmit_bytes_total", "counter", "Bytes sent per interface.",
                   [({"interface": i}, n) for i, n in sorted(self.iface_tx.items())])
            family("weightwarden_agent_interface_receive_bytes_total", "counter", "Bytes received per interface.",
                   [({"interface": i}, n) for i, n in sorted(self.iface_rx.items())])
            family("weightwarden_agent_interface_transmit_packets_total", "counter", "Packets sent per interface.",
                   [({"interface": i}, n) for i, n in sorted(self.iface_packets.items())])
            family("weightwarden_agent_interface_unexplained_transmit_bytes_total", "counter",
                   "Bytes sent per interface that neither a process nor protocol overhead explains.",
                   [({"interface": i}, n) for i, n in sorted(self.iface_unexplained.items())])
            sensor = self.sensor
            family("weightwarden_agent_sensor_degraded", "gauge", "1 when a capability of the kernel sensor is off or "
                   "attribution runs on the fallback path (labels: the path, the kernel).",
                   [({"path": sensor.path, "kernel": sensor.kernel or ""}, float(sensor.degraded))] if sensor else [])
            family("weightwarden_agent_sensor_feature", "gauge", "1 when a capability of the kernel sensor is on.",
                   [({"feature": name}, float(f.on)) for name, f in sorted(sensor.features.items())] if sensor else [])
            family("weightwarden_agent_sensor_tampered_total", "counter",
                   "Times the sensor found its programs, links, maps or rules changed behind its back.",
                   [({}, self.tampered)])
        return "\n".join(lines) + "\n"


class MetricsServer:
    """GET /metrics (and /healthz, /readyz) on HOST:PORT, served from a daemon thread."""

    def __init__(self, metrics: AgentMetrics, listen: str) -> None:
        host, sep, port = listen.rpartition(":")
        if not sep or not port.isdigit():
            raise ValueError(f"--metrics-listen {listen!r}: use HOST:PORT")
        owner = metrics

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
                if health.answer(self, owner.live, owner.ready):
                    return
                if self.path.split("?", 1)[0] != "/metrics":
                    self.send_error(404, "only /metrics, /healthz and /readyz here")
                    return
                body = owner.render().encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's signature
                return None

        ThreadingHTTPServer.daemon_threads = True
        self.server = ThreadingHTTPServer((host.strip("[]") or "0.0.0.0", int(port)), Handler)
        self.server.timeout = 5
        self.thread = threading.Thread(target=self.server.serve_forever, name="ww-metrics", daemon=True)

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def start(self) -> MetricsServer:
        self.thread.start()
        return self

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
