"""``sensor_degraded``: the agent's sensor cannot see everything on this kernel.

From the ``sensor`` state heartbeats and ``agent_started`` carry: high when attribution runs on the
fallback path (or not at all: flows then go unowned or unattributed, and a sender's bytes may never
be named), medium when a feature of the eBPF sensor is off (the kernel's reason is quoted). Resolved
when the sensor is whole again. The latest report by the agent's clock decides, whatever the
arrival order: the store keeps the latest whole and the latest degraded report (``sensors``); the
alert is open while the latest degraded report is newer than the latest whole one.
"""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import Connection, text

from weightwarden.collector.detect.common import Draft, clock
from weightwarden.collector.detect.facts import sensor_whole
from weightwarden.collector.detect.keys import AlertKey
from weightwarden.collector.detect.registry import register
from weightwarden.collector.detect.rule import Context, Hint, Look, Rule
from weightwarden.collector.store import agent_facts as a
from weightwarden.events import AgentStarted, Event, Heartbeat, SensorState


def whole(s: SensorState) -> bool:
    """Nothing to say: the eBPF path, nothing degraded. The agent decides what degrades it (an optional
    capability the kernel was not built for, AF_XDP bytes or the bpf LSM, is reported off without it), and
    the host-level rule reads the same verdict (facts.sensor_whole)."""
    return sensor_whole(s)


def forced(s: SensorState) -> bool:
    """Off the eBPF path because a path was refused (the agent names each as a ``<path>_path`` feature off),
    not because the operator chose the fallback (``--attribution nfqueue``)."""
    return any(name.endswith("_path") and not f.on for name, f in s.features.items())


def severity_of(s: SensorState) -> str:
    """medium: a feature of the eBPF sensor is off; high: no path, or the fallback because eBPF was refused;
    low: the fallback the operator configured (a known limit of this host, said once, not an incident)."""
    path = s.path
    if path == "ebpf":
        return "medium"
    if path == "none" or forced(s):
        return "high"
    return "low"


def state_words(s: SensorState, severity: str) -> str:
    path = s.path
    if path == "ebpf":
        return "features off"
    if path == "none":
        return "no attribution path"
    return "configured fallback path" if severity == "low" else "fallback path"


def lost(s: SensorState) -> list[str]:
    """What the host's detection lacks, in words: each feature off with the kernel's reason."""
    out = [f"{name} ({f.reason or 'off'})" for name, f in sorted(s.features.items()) if not f.on]
    path = s.path
    if path == "none":
        out.insert(0, "attribution (no path runs: senders are not named)")
    elif path != "ebpf":
        out.insert(0, f"eBPF attribution (on the {path} fallback: this network namespace only, flows opened in "
                      f"bursts may go unowned, no unix-socket hand-overs)")
    return out


class SensorDegradedRule(Rule[str]):
    name = "sensor"
    kinds = ("sensor_degraded",)
    events = (AgentStarted,)
    renew_lately = True  # collectors judging at once from snapshots converge in the sweep

    def subject(self, key: AlertKey) -> str | None:
        return key.host if key.rule == self.name and not key.parts else None

    def on_event(self, ctx: Context, conn: Connection, ev: Event, now: float) -> Iterable[str | Look]:
        d = ev.data
        if isinstance(d, AgentStarted) and d.sensor is not None:
            a.record_sensor(conn, ev.host, d.sensor.model_dump_json(exclude_none=True), ev.ts, whole(d.sensor))
            return [ev.host]
        return []

    def on_heartbeats(self, ctx: Context, conn: Connection, events: list[Event], now: float) -> Iterable[str]:
        reports: list[tuple[str, str, float, bool]] = []
        degraded: set[str] = set()
        for ev in events:
            if isinstance(ev.data, Heartbeat) and ev.data.sensor is not None:
                ok = whole(ev.data.sensor)
                reports.append((ev.host, ev.data.sensor.model_dump_json(exclude_none=True), ev.ts, ok))
                if not ok:
                    degraded.add(ev.host)
        if not reports:
            return []
        for host, state, ts, ok in sorted(reports):  # in key order: two collectors never wait in a cycle
            a.record_sensor(conn, host, state, ts, ok)
        hosts = sorted({r[0] for r in reports})
        params = {f"h{i}": h for i, h in enumerate(hosts)}
        # Whole reports matter only to hosts that were ever degraded: theirs may resolve an alert.
        ever = set(conn.execute(text(f"SELECT host FROM sensors WHERE degraded_at IS NOT NULL AND host IN "
                                     f"({', '.join(':' + k for k in params)})"), params).scalars())
        return sorted(degraded | ever)

    def judge(self, ctx: Context, conn: Connection, subject: str, hint: Hint, now: float) -> None:
        host = str(subject)
        row = a.sensor_of(conn, host)
        if row is None or row["degraded_at"] is None or row["degraded"] is None:
            return
        key = AlertKey(self.name, host)
        s = SensorState.model_validate_json(row["degraded"])
        since = float(row["degraded_at"])
        ctx.put(conn, self.draft(host, s, since), now)
        whole_at = row["whole_at"]
        if whole_at is None or float(whole_at) < since:
            ctx.resolve(conn, key, "", now, open_=True, reopen_after=since)
        else:
            ctx.resolve(conn, key, f"the sensor is whole again (since {clock(float(whole_at))})", now)

    def draft(self, host: str, s: SensorState, since: float) -> Draft:
        kernel = s.kernel or "an unknown kernel"
        missing = lost(s)
        severity = severity_of(s)
        what = "; ".join(missing) if missing else (s.detail or "the agent says it is degraded")
        explanation = (
            f"The sensor on {host} (kernel {kernel}) cannot see everything: {what}. "
            + ("Attribution is on the eBPF path, but what these features give detection is missing. "
               if s.path == "ebpf" else
               ("The agent was configured for this fallback. " if severity == "low" else "")
               + "Attribution is not on the eBPF path, so uploads may go without an owner and relays unseen: the "
               "host-level rule stays high here, and linked verdicts may miss a link. ")
            + (f"{s.detail}. " if s.detail else "")
            + f"Reported at {clock(since)}; resolved when the agent reports the sensor whole again.")
        evidence = {"sensor": s.model_dump(mode="json", exclude_none=True), "kernel": s.kernel, "path": s.path,
                    "lost": missing,
                    "process": None, "files": [], "destinations": [], "events": []}
        draft = Draft(AlertKey(self.name, host), host, "sensor_degraded", severity,
                      f"Sensor degraded on {host}: {state_words(s, severity)} "
                      f"(kernel {kernel})", explanation, evidence, since, since)
        # The latest degraded report describes it (from the stored facts: written only when it changes);
        # whether it is open is the facts' too (judge), not a repeat's.
        draft.reopen = False
        return draft


RULE = register(SensorDegradedRule())
