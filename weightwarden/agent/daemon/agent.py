"""``weightwarden-agent run``: sample, evaluate the policy, enforce, emit events.

Stages are asyncio tasks in one TaskGroup. The event queue is owned by the
Agent: the sample and enforce loops put events on it, the sink loop alone
takes them off and publishes. Kernel and /proc work runs in worker threads so
a slow netlink dump never stalls the event flow.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time

from pydantic import ValidationError

from weightwarden import __version__, logs
from weightwarden.agent.attribution.sample import SampleJson
from weightwarden.agent.attribution.sampler import Sampler, SamplerConfig
from weightwarden.agent.daemon import sdnotify
from weightwarden.agent.daemon.accounting import CapAccounting
from weightwarden.agent.daemon.config import DaemonConfig, Origin
from weightwarden.agent.daemon.host import HostNames, plan_inputs
from weightwarden.agent.daemon.metrics import AgentMetrics, MetricsServer
from weightwarden.agent.daemon.reload import PolicyReloads
from weightwarden.agent.daemon.samples import crossed, publishable
from weightwarden.agent.daemon.state import FeatureJson, Health, sensor_json
from weightwarden.agent.daemon.weights import WeightWatch
from weightwarden.agent.enforce.budget import BudgetBook, ThresholdWatch
from weightwarden.agent.enforce.enforcer import Enforcer, PolicyMeta, atomic_write, read_json
from weightwarden.agent.enforce.plan import Plan, build
from weightwarden.agent.policy.loader import LoadedPolicy
from weightwarden.agent.policy.source import MqttPolicySource, Refusal
from weightwarden.agent.transport.sink import Sink
from weightwarden.asyncutil import wait_for_stop
from weightwarden.events import (
    AgentStarted,
    AgentStopping,
    BudgetExhausted,
    EnforcementDrift,
    EnforcementError,
    Event,
    EventFactory,
    Heartbeat,
    Payload,
    PolicyApplied,
)
from weightwarden.jsontypes import JsonObject

STUCK_GRACE_S = 10.0


class Agent:
    def __init__(self, cfg: DaemonConfig, loaded: LoadedPolicy, sink: Sink,
                 policy_source: MqttPolicySource | None = None, origin: Origin | None = None) -> None:
        self.cfg = cfg
        self.loaded = loaded
        self.sink = sink
        self.policy_source = policy_source
        self._applied_digest: str | None = None
        self.log = logs.get("agent.run")
        self.policies = PolicyReloads(cfg.policy_path, origin or Origin(), self.emit, self.log)
        self.events = EventFactory(cfg.host_id, sink.prepare(cfg.host_id, cfg.state_dir))
        sink.attach(self.events)
        self.queue: asyncio.Queue[Event | None] = asyncio.Queue(maxsize=10_000)
        self.enforcer = Enforcer(cfg.state_dir, cfg.backend)
        if self.enforcer.previous_kernel is not None:
            self.log.info("enforcement_record_from_previous_kernel",
                          detail="the host rebooted or the namespace is new: rules are applied afresh, not drift",
                          recorded=self.enforcer.previous_kernel.get("kernel"), now=self.enforcer.generation)
        self.budget_path = cfg.state_dir / "budgets.json"
        self.budgets = BudgetBook(loaded.policy.spec.budgets, read_json(self.budget_path))
        self.thresholds = ThresholdWatch(loaded.policy.spec.thresholds)
        self.sampler: Sampler | None = None
        self.stop = asyncio.Event()
        self.hosts = HostNames()
        self.accounting = CapAccounting()
        self.plan: Plan | None = None
        self.started = time.monotonic()
        self.last_sample_done = self.last_enforce_done = self.started
        self.drift_count = 0
        self.last_sample_lag = 0.0
        self.dropped_events = 0
        self.weights = WeightWatch(cfg.state_dir, self.emit)
        self.metrics = AgentMetrics()
        self.metrics.stuck_for = self.stuck_for  # /healthz asks what the watchdog asks
        # Bound here, so a port in use is a start-up error ("cannot start"), not a crash later.
        self.metrics_server = MetricsServer(self.metrics, cfg.metrics_listen) if cfg.metrics_listen else None

    # -- events ---------------------------------------------------------

    def emit(self, data: Payload) -> None:
        event = self.events.make(data)
        self.metrics.observe_event(data)
        try:
            self.queue.put_nowait(event)
        except asyncio.QueueFull:
            # Counted and reported in the next heartbeat: never a silent gap.
            self.dropped_events += 1

    async def _sink_loop(self) -> None:
        while True:
            event = await self.queue.get()
            if event is None:
                return
            try:
                await self.sink.publish(event)
            except Exception as exc:  # noqa: BLE001 - the sink reports; the daemon keeps running
                self.log.error("sink_error", error=repr(exc), event_type=event.type, seq=event.seq)

    # -- policy ---------------------------------------------------------

    def refuse_policy(self, refusal: Refusal) -> None:
        self.policies.refuse(refusal, self.loaded)

    def _maybe_reload(self) -> None:
        offer = self.policies.take_offer()
        if offer is not None:
            self._adopt(offer.loaded)
            return
        if not self.policies.file_changed():
            return
        sdnotify.notify(f"RELOADING=1\nMONOTONIC_USEC={time.monotonic_ns() // 1000}")
        try:
            loaded = self.policies.load_file(self.loaded)
            if loaded is not None:
                self._adopt(loaded)
        finally:
            sdnotify.notify(f"READY=1\nSTATUS={self.status_line()}")

    def _adopt(self, loaded: LoadedPolicy) -> None:
        if loaded.digest == self.loaded.digest:
            return
        self.loaded = loaded
        self.budgets = BudgetBook(loaded.policy.spec.budgets, self.budgets.to_json())
        self.thresholds = ThresholdWatch(loaded.policy.spec.thresholds)
        self.hosts.expire()
        self.weights.update(loaded)
        self._apply_raw_policy()

    def _apply_raw_policy(self) -> None:
        """raw_sockets of the policy in force, to the sensor (in the kernel where it can act)."""
        if self.sampler is not None:
            raw = self.loaded.policy.spec.raw_sockets
            self.sampler.set_raw_policy(raw.action == "kill", list(raw.allow))

    def status_line(self) -> str:
        """One line for systemctl status: the policy in force and what is watched."""
        plan = self.plan
        caps = f"{len(plan.slots)} caps on {', '.join(plan.interfaces) or 'no interface'}" if plan else "no caps yet"
        total = self.weights.total
        watch = f"; watching {total['files']} weight files" if total else ""
        return f"policy {self.loaded.policy.metadata.name}: {caps}{watch}"

    def _policy_meta(self) -> PolicyMeta:
        return {"policy": self.loaded.policy.metadata.name, "policy_digest": self.loaded.digest,
                "policy_path": self.policies.origin.path or str(self.cfg.policy_path)}

    # -- enforcement ----------------------------------------------------

    def _account(self, now: float, interval: float) -> None:
        deltas = self.accounting.deltas(self.enforcer.counters())
        for state in self.budgets.add(now, deltas.get("egress", 0)):
            self.emit(BudgetExhausted(budget=state.name, limit_bytes=state.limit, window_s=state.window.window,
                                      action=state.action, used_bytes=state.window.total(now)))
        atomic_write(self.budget_path, self.budgets.to_json())
        for hit in self.accounting.hits(self.plan, deltas, now, interval) if self.plan is not None else ():
            self.emit(hit)

    def enforce_once(self, interval: float) -> None:
        self._maybe_reload()
        now = time.time()
        if self.plan is not None:
            self._account(now, interval)
        inputs = plan_inputs(self.loaded.policy, self.hosts, self.budgets.blocking())
        plan = build(inputs)
        # A new policy is announced even when its kernel plan is the same (a new version, new thresholds).
        changed = self.plan is None or plan.to_json() != self.plan.to_json() or self._applied_digest != self.loaded.digest
        result = self.enforcer.reconcile(inputs, plan, self._policy_meta())
        if result.error:
            self.log.error("enforcement_error", error=result.error)
            self.emit(EnforcementError(error=result.error))
            return
        if result.drift:
            self.drift_count += 1
            self.log.warning("enforcement_drift", drift=result.drift)
            self.emit(EnforcementDrift(drift=result.drift, restored=result.applied))
        if result.applied:
            self.accounting.restart()
        if changed:
            self.plan = plan
            self._applied_digest = self.loaded.digest
            self.emit(PolicyApplied.model_validate({
                **self._policy_meta(), "backend": self.enforcer.backend, "interfaces": plan.interfaces,
                "notes": plan.notes, "caps": [s.__dict__ for s in plan.slots],
                "blocked_budgets": inputs.blocked_budgets, "source": self.policies.origin.source,
                "version": self.policies.origin.version, "key_id": self.policies.origin.key_id}))
            for note in plan.notes:
                self.log.warning("policy_note", note=note)

    async def _enforce_loop(self) -> None:
        last = time.monotonic()
        while not self.stop.is_set():
            now = time.monotonic()
            try:
                await asyncio.to_thread(self.enforce_once, now - last)
            except Exception as exc:  # noqa: BLE001 - a bug must not stop enforcement for good
                self.log.error("enforce_failed", error=repr(exc)[:2000])
                self.emit(EnforcementError(error=f"internal error, retrying: {exc!r}"[:4000]))
            self.last_enforce_done = time.monotonic()
            last = now
            await wait_for_stop(self.stop, self.loaded.policy.spec.interval)

    # -- sampling -------------------------------------------------------

    def _sample_once(self) -> SampleJson | None:
        if self.sampler is None:
            return None
        return self.sampler.sample().to_json()

    async def _sample_loop(self) -> None:
        deadline = time.monotonic()
        while not self.stop.is_set():
            deadline += self.cfg.sample_interval
            if await wait_for_stop(self.stop, deadline - time.monotonic()):
                return
            self.last_sample_lag = max(0.0, time.monotonic() - deadline)
            took = time.monotonic()
            try:
                sample = await asyncio.to_thread(self._sample_once)
            except Exception as exc:  # noqa: BLE001 - one bad sample must not end measuring
                self.log.error("sample_failed", error=repr(exc)[:2000])
                self.dropped_events += 1
                continue
            finally:
                self.metrics.sample_took(time.monotonic() - took)
            if sample is None:
                continue
            self.last_sample_done = time.monotonic()
            for event in crossed(sample, self.thresholds, time.time()):
                self.emit(event)
            try:
                payload = publishable(sample, self.loaded.policy, self.hosts.resolved)
            except ValidationError as exc:
                # A bug of ours, never the host's doing: say so loudly, keep sampling.
                self.log.error("sample_invalid", error=str(exc)[:2000])
                self.dropped_events += 1
                continue
            self.emit(payload)

    async def _sensor_loop(self) -> None:
        """The sensor's own events as they come: tampering (checked twice a second in the kernel loader),
        packet sockets, unexplained egress."""
        seen = self.sensor_state()
        while not self.stop.is_set():
            if self.sampler is not None:
                for event in self.sampler.take_events():
                    self.emit(event)
                now = self.sensor_state()
                if now != seen:
                    # status reads health.json: a sensor that changed is said there now, not at the next heartbeat
                    seen = now
                    await asyncio.to_thread(atomic_write, self.cfg.state_dir / "health.json",
                                            {**self.health(), "ts": time.time()})
            await wait_for_stop(self.stop, 0.25)

    def sensor_state(self) -> JsonObject:
        return sensor_json(self.sampler)

    async def _heartbeat_loop(self) -> None:
        while not self.stop.is_set():
            health = self.health()
            self.emit(Heartbeat.model_validate(health))
            await asyncio.to_thread(atomic_write, self.cfg.state_dir / "health.json", {**health, "ts": time.time()})
            await wait_for_stop(self.stop, self.cfg.heartbeat_interval)

    def stuck_for(self) -> float:
        """Seconds the sample or enforce loop is overdue (0: both healthy). A sample stuck on a
        kernel or /proc read shows here, while heartbeats alone would stay green."""
        now = time.monotonic()
        sample_due = self.last_sample_done + 2 * self.cfg.sample_interval + STUCK_GRACE_S
        enforce_due = self.last_enforce_done + 2 * self.loaded.policy.spec.interval + STUCK_GRACE_S
        overdue = max(now - sample_due if self.sampler is not None else 0.0, now - enforce_due)
        return round(max(0.0, overdue), 1)

    def health(self) -> Health:
        rec = self.enforcer.record
        sink_stats = self.sink.stats()
        return {
            "uptime_s": round(time.monotonic() - self.started, 1),
            "sampler_lag_s": round(self.last_sample_lag, 3),
            "stuck_s": self.stuck_for(),
            "drift_count": self.drift_count,
            "event_queue": self.queue.qsize(),
            "events_dropped": self.dropped_events,
            "spool_depth": sink_stats.depth,
            "events_replayed": sink_stats.replayed,
            "policy": self.loaded.policy.metadata.name,
            "policy_digest": self.loaded.digest,
            "backend": self.enforcer.backend,
            "rules_in_force": bool(rec),
            "attribution": self.sampler.attribution if self.sampler is not None else "none",
            "sensor": self.sensor_state(),
            "caps": len(rec.get("caps", [])) if rec else 0,
            "budgets": self.budgets.usage(time.time()),
            "weights": self.weights.total,
            "file_watch": self.weights.health(),
        }

    # -- lifecycle ------------------------------------------------------

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self.stop.set)
        loop.add_signal_handler(signal.SIGINT, self.stop.set)
        loop.add_signal_handler(signal.SIGHUP, self.policies.requested.set)
        if self.metrics_server is not None:
            self.metrics_server.start()
        await self.sink.start()
        recovery = self.sink.recovered()
        if recovery is not None:
            # A corrupt spool was moved aside: what it held is lost, and we say so.
            self.log.error("spool_recovered", moved_to=recovery.moved_to, reason=recovery.reason)
            self.emit(recovery)
        sampler = Sampler(SamplerConfig(resolve_with_nfqueue=self.cfg.nfqueue, queue_num=self.cfg.queue_num,
                                        attribution=self.cfg.attribution, bpf_cgroup=self.cfg.bpf_cgroup,
                                        bpf_pin_dir=self.cfg.bpf_pin_dir))
        try:
            await asyncio.to_thread(sampler.start)
            self.sampler = sampler
            await asyncio.to_thread(self._apply_raw_policy)
        except OSError as exc:
            self.log.error("sampler_unavailable", error=str(exc))
        features: dict[str, FeatureJson] = {f.name: {"ok": f.ok, "detail": f.detail} for f in sampler.features}
        # Caps first: whatever happens after (a watcher that cannot start, a crash), the upload
        # caps are already in the kernel, and they stay there.
        await asyncio.to_thread(self.enforce_once, 0.0)
        self.last_enforce_done = time.monotonic()
        features.update(await asyncio.to_thread(self.weights.start, self.loaded))
        for name, feature in features.items():
            (self.log.info if feature["ok"] else self.log.warning)("feature", name=name, detail=feature["detail"])
        sensor = self.sensor_state()
        (self.log.warning if sensor.get("degraded") else self.log.info)("sensor", **sensor)
        self.emit(AgentStarted.model_validate({"pid": os.getpid(), **self._policy_meta(), "features": features,
                                               "weights": self.weights.total, "version": __version__,
                                               "attribution": sampler.attribution, "sensor": sensor}))
        await asyncio.to_thread(self.enforce_once, 0.0)
        sdnotify.notify("READY=1")
        sdnotify.notify(f"STATUS={self.status_line()}")
        try:
            async with asyncio.TaskGroup() as tg:
                sink_task = tg.create_task(self._sink_loop())
                workers = [tg.create_task(self._enforce_loop()), tg.create_task(self._sample_loop()),
                           tg.create_task(self._heartbeat_loop()), tg.create_task(self._sensor_loop())]
                if self.weights.files is not None:
                    workers.append(tg.create_task(self.weights.loop(self.stop)))
                if self.policy_source is not None:
                    workers.append(tg.create_task(self.policy_source.run(self.stop, self.policies.offer,
                                                                         self.refuse_policy)))
                every = sdnotify.watchdog_interval()
                if every:
                    workers.append(tg.create_task(sdnotify.watchdog_loop(self.stop, every, self.stuck_for, self.log)))
                await self.stop.wait()
                sdnotify.notify("STOPPING=1")
                for task in workers:
                    await task
                if self.sampler is not None:
                    for event in self.sampler.take_events():
                        self.emit(event)
                await self.weights.close()
                # Caps stay in force: stopping the agent never opens the gate.
                self.emit(AgentStopping(reason="signal", rules_left_in_force=True))
                await self.queue.put(None)
                await sink_task
        finally:
            await self.weights.close()
            await asyncio.to_thread(sampler.close)
            await self.sink.close()
            if self.metrics_server is not None:
                self.metrics_server.close()
        return 0
