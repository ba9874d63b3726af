"""What a policy would have done to recorded traffic. Pure: samples in, a report out.

Each sample's bytes (per process and destination) go through the policy's
compiled match (``policy.match``, the code the kernel plan is built from), then:

- shape caps: a fluid queue per cap drains at the cap's rate. Within a sample
  interval the bytes are taken as spread evenly, so the time the cap holds
  traffic back is exact for the total (a burst of D bytes is held D/rate
  seconds wherever it falls) and the largest delay is known to within one
  sample interval;
- block caps drop what they match; alert caps count it;
- budgets and thresholds run through the agent's own ``BudgetBook`` and
  ``ThresholdWatch``, and cap hits follow the daemon's rule (90% of the rate
  over one enforcement interval, at most once a minute), so the alerts listed
  are the events the agent would have sent.

Units: samples count transport payload; the kernel's caps count link-layer
frames (payload plus TCP/IP and Ethernet headers). A payload of P bytes is
modelled as P * (MSS + headers) / MSS on the wire (full-sized segments, TCP
timestamps; 1514/1448 = 1.0456 for IPv4 at MTU 1500), the factor
``tests/agent/enforce/test_caps_netns.py`` measures. Budgets count IP packets
as the kernel sees them before segmentation (GSO), which is payload within a
fraction of a percent; they are modelled as payload.
"""

from __future__ import annotations

import fnmatch
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from weightwarden.agent.enforce.budget import BudgetBook, ThresholdWatch
from weightwarden.agent.policy.explain import describe_dest
from weightwarden.agent.policy.fluid import CapSim, LinkModel
from weightwarden.agent.policy.match import Compiled, Features, Flow, Verdict, classify, compile_policy
from weightwarden.agent.policy.model import Policy
from weightwarden.agent.policy.simreport import Alert, CapReport, SimReport
from weightwarden.jsontypes import JsonObject, JsonValue

# The simulation's keys: (address, port key, uid, executable, cgroup) for a flow, (uid, exe, cgroup) for a
# process (None where unknown), and a destination's (address, port key), or its address alone.
FlowKey = tuple[str | None, int | None, int | None, str | None, str | None]
ProcKey = tuple[int | None, str | None, str | None]
DestKey = tuple[str, int | None] | str

CAP_HIT_FRACTION = 0.9  # the daemon's rule (daemon/accounting.py)
CAP_HIT_REPEAT_S = 60.0

__all__ = ["Alert", "CapReport", "CapSim", "LinkModel", "SimReport", "Simulation", "simulate"]


@dataclass
class Simulation:
    """Feed samples with :meth:`add`, then :meth:`report`."""

    policy: Policy
    resolved: dict[str, list[str]] = field(default_factory=dict)
    features: Features = field(default_factory=Features)
    link: LinkModel = field(default_factory=LinkModel)

    def __post_init__(self) -> None:
        spec = self.policy.spec
        self.compiled: Compiled = compile_policy(self.policy, self.resolved, self.features)
        self.caps = [CapSim(c.name, c.action, c.rate) for c in spec.caps]
        self.budgets = BudgetBook(spec.budgets)
        self.thresholds = ThresholdWatch(spec.thresholds)
        self.allow_bytes = [0] * len(spec.allow)
        self.allowlisted = 0
        self.unmatched = 0
        self.budget_blocked = 0
        self.total = 0
        self.unknown_destination = 0
        self.uncovered = 0
        self.covered_iface = 0
        self.all_iface = 0
        self.alerts: list[Alert] = []
        self.blocking_from: dict[str, float] = {}  # budget -> when the kernel would start dropping
        self.peak_budget: dict[str, int] = {b.name: 0 for b in spec.budgets}
        self.samples = 0
        self.first_ts: float | None = None
        self.last_ts: float | None = None
        self._window_start: float | None = None
        self._cache: dict[ProcKey, dict[DestKey, int]] = {}  # process key -> destination key -> slot
        self._index_of_key: dict[FlowKey, int] = {}  # flow key -> verdict index
        self._verdicts: list[Verdict] = []
        self._iface_cache: dict[str, bool] = {}
        self._index: dict[Verdict, int] = {}
        self._factor4 = self.link.factor(False)
        self._factor6 = self.link.factor(True)

    # -- one sample -----------------------------------------------------------

    def _verdict(self, key: FlowKey) -> int:
        """The index of this flow key's verdict in ``self._verdicts``."""
        found = self._index_of_key.get(key)
        if found is None:
            verdict = classify(self.compiled, Flow(*key))
            found = self._index.setdefault(verdict, len(self._verdicts))
            if found == len(self._verdicts):
                self._verdicts.append(verdict)
            if len(self._index_of_key) < 1_000_000:
                self._index_of_key[key] = found
        return found

    def _slot(self, d: JsonValue, uid: int | None, exe: str | None, cgroup: str | None) -> int | None:
        """The slow path of one destination: checked field by field, classified, remembered.
        None: no usable address (its bytes count with the process's rest)."""
        if not isinstance(d, dict):
            return None
        address, port = _str(d.get("address")), _int(d.get("port"))
        if address is None:
            return None
        portkey = self.compiled.port_key(port)
        slot = self._verdict((address, portkey, uid, exe, cgroup)) * 2 + (":" in address)
        per_process = self._cache.setdefault((uid, exe, cgroup), {})
        if len(per_process) < 1_000_000:
            # Only keys with a text address: a hit never needs checking again. Without ports in the policy
            # the address alone is the key (no tuple to build and hash per destination).
            per_process[(address, portkey) if self.compiled.ports else address] = slot
        return slot

    def _iface_covered(self, name: str) -> bool:
        hit = self._iface_cache.get(name)
        if hit is None:
            patterns = self.policy.spec.interfaces
            hit = not patterns or any(fnmatch.fnmatchcase(str(name), p) for p in patterns)
            if len(self._iface_cache) < 10_000:
                self._iface_cache[name] = hit
        return hit

    def _covered(self, sample: JsonObject) -> bool:
        total = covered = 0
        seen = False
        ifaces = sample.get("interfaces")
        for i in ifaces if isinstance(ifaces, list) else ():
            if not isinstance(i, dict) or i.get("name") == "lo":
                continue
            seen = True
            n = _count(i.get("tx_bytes"))
            total += n
            name = i.get("name")
            if isinstance(name, str) and self._iface_covered(name):
                covered += n
        self.all_iface += total
        self.covered_iface += covered
        # Flows are not tagged with their interface: a sample is enforced unless none of its interfaces is covered.
        return not seen or covered > 0 or total == 0

    def add(self, sample: JsonObject) -> None:
        """One recorded sample (JSON as read: every field is checked before it is used)."""
        ts_value = sample["ts"]
        if not isinstance(ts_value, int | float):
            raise ValueError(f"a sample's ts is not a number: {ts_value!r}")
        ts = float(ts_value)
        dt = _positive(sample.get("interval_s")) or (ts - self.last_ts if self.last_ts is not None and
                                                     ts > self.last_ts else 1.0)
        self.samples += 1
        self.first_ts = ts - dt if self.first_ts is None else self.first_ts
        self.last_ts = ts
        covered = self._covered(sample)
        blocking = any(ts >= start for start in self.blocking_from.values())
        offered = [0.0] * len(self.caps)
        # Bytes per slot (verdict index * 2 + IPv6) in this sample: the per-destination loop, run millions of
        # times a day, only builds a key, looks its slot up and adds; accounting happens once per slot below.
        totals: defaultdict[int, int] = defaultdict(int)
        compiled, verdict_of, ports = self.compiled, self._verdict, self.compiled.ports
        procs = sample["processes"]
        for proc in procs if isinstance(procs, list) else ():
            if not isinstance(proc, dict):
                continue
            uid, exe, cgroup = compiled.process_key(_int(proc.get("uid")), _str(proc.get("exe")),
                                                    _str(proc.get("cgroup")))
            sent = _count(proc.get("tx_bytes"))
            named = 0
            dests = proc.get("destinations")
            cache = self._cache.get((uid, exe, cgroup)) or {}
            # The fast path reads a destination unchecked (Any): a malformed one raises and takes the slow,
            # checked path (_slot), which is also the first sight of every key.
            fast: list[Any] = dests if isinstance(dests, list) else []
            for d in fast:
                try:
                    n = d["tx_bytes"]
                    if ports:
                        port = d["port"]
                        slot = cache[(d["address"], port if port in ports else None)]
                    else:
                        slot = cache[d["address"]]
                except (KeyError, TypeError):  # first sight of this key, or a malformed destination
                    found = self._slot(d, uid, exe, cgroup)
                    if found is None:
                        continue
                    slot, n = found, d.get("tx_bytes")
                if type(n) is not int or n <= 0:
                    continue
                named += n
                totals[slot] += n
            rest = sent - named  # destinations past the sample's bound: owner known, address not
            if rest > 0:
                self.unknown_destination += rest
                totals[verdict_of((None, None, uid, exe, cgroup)) * 2] += rest
            pid = _int(proc.get("pid"))
            if sent > 0 and pid is not None:
                started = proc.get("start_time")
                # (pid, start time), as the daemon keys it: a recycled pid is another process.
                key = (pid, float(started) if isinstance(started, (int, float)) else None)
                for th, total in self.thresholds.add(ts, key, sent):
                    self.alerts.append({"type": "threshold_crossed", "name": th.name, "ts": ts, "severity": th.severity,
                                        "bytes_in_window": total, "process": proc.get("name") or proc.get("exe"),
                                        "pid": pid})
        if self.samples % 60 == 0:
            # ThresholdWatch.forget walks every window it holds; once a minute rather than every second (as
            # the daemon does) keeps a day's replay fast. Recorded samples cannot say whether a process is
            # still alive, so none is taken for dead: a window goes when its bytes have aged out, which is
            # what the daemon does for a live process (a dead one sends nothing more either way). The only
            # difference: a process silent for a whole window whose first sample back crosses the threshold
            # alone may be reported once less if that falls within the minute its window emptied.
            self.thresholds.forget(ts, _always_alive)
        unowned = _count(sample.get("unowned_flow_tx_bytes"))
        if unowned > 0:
            self.unknown_destination += unowned
            totals[verdict_of((None, None, None, None, None)) * 2] += unowned
        outward = 0
        for slot, n in totals.items():
            outward += self._flow(offered, self._verdicts[slot // 2], n, bool(slot % 2), covered, blocking)
        for cap, wire in zip(self.caps, offered, strict=True):
            self._cap(cap, ts, dt, wire)
        if covered:
            for state in self.budgets.add(ts, outward):
                # The daemon notices at its next reconciliation and blocks from then on.
                if state.action == "block":
                    self.blocking_from[state.name] = ts + self.policy.spec.interval
                self.alerts.append({"type": "budget_exhausted", "name": state.name, "ts": ts, "action": state.action,
                                    "used_bytes": state.window.total(ts), "limit_bytes": state.limit})
            if outward > 0:  # totals only fall between additions: the peak can only move now
                for name, state in self.budgets.budgets.items():
                    self.peak_budget[name] = max(self.peak_budget[name], state.window.total(ts))
            for name in [n for n in self.blocking_from if not self.budgets.budgets[n].exhausted]:
                del self.blocking_from[name]
        self._cap_hits(ts)

    def _flow(self, offered: list[float], verdict: Verdict, n: int, ipv6: bool, covered: bool, blocking: bool) -> int:
        """Account bytes that met one verdict; returns what the budgets count (non-allowlisted, let through)."""
        self.total += n
        if verdict.allowed:
            self.allowlisted += n
            if verdict.allow_index is not None:
                self.allow_bytes[verdict.allow_index] += n
            return 0
        if not covered:
            self.uncovered += n
            self.unmatched += n
            return 0
        if blocking:
            self.budget_blocked += n
            return 0
        if not verdict.matched:
            self.unmatched += n
        wire = n * (self._factor6 if ipv6 else self._factor4)
        for index in verdict.matched:
            cap = self.caps[index]
            cap.matched_bytes += n
            cap.matched_wire_bytes += wire
            offered[index] += wire
            if cap.action == "block":
                cap.blocked_bytes += n
        return n

    def _cap(self, cap: CapSim, ts: float, dt: float, wire: float) -> None:
        if wire <= 0 and cap.backlog <= 0:
            return  # nothing offered, nothing queued: nothing to hold, count or peak
        bps = wire * 8 / dt
        if bps > cap.peak_bps:
            cap.peak_bps, cap.peak_at = bps, ts
        if cap.action == "shape":
            cap.window_bytes += cap.queue(ts, wire, dt)
        else:
            cap.window_bytes += wire

    def _cap_hits(self, ts: float) -> None:
        """The daemon reads the cap counters once per enforcement interval."""
        if self._window_start is None:
            self._window_start = (self.first_ts or ts)
        interval = ts - self._window_start
        if interval + 1e-9 < self.policy.spec.interval:
            return
        for cap in self.caps:
            rate = cap.window_bytes * 8 / interval
            hit = (cap.action == "block" and cap.window_bytes > 0) or (
                cap.action != "block" and rate >= CAP_HIT_FRACTION * cap.rate_bps)
            if hit and ts - cap.last_hit >= CAP_HIT_REPEAT_S:
                cap.last_hit = ts
                self.alerts.append({"type": "cap_hit", "name": cap.name, "ts": ts, "action": cap.action,
                                    "rate_bps": cap.rate_bps, "observed_bps": round(rate)})
            cap.window_bytes = 0.0
        self._window_start = ts

    # -- the result -------------------------------------------------------------

    def report(self) -> SimReport:
        spec = self.policy.spec
        notes = [self.link.describe(), *self.compiled.notes]
        if self.unknown_destination:
            notes.append(f"{self.unknown_destination:,} bytes had no recorded destination (past a sample's bound, or "
                         "flows whose owner was not named): they count only against caps and allowlist entries that "
                         "need no destination")
        if self.all_iface and self.covered_iface < self.all_iface:
            share = 100 * (1 - self.covered_iface / self.all_iface)
            notes.append(f"{share:.0f}% of interface bytes left through interfaces spec.interfaces does not cover; "
                         "samples do not say which flow used which interface, so a sample counts as enforced when "
                         "any of its interfaces is covered")
        if any(c.action == "shape" for c in self.caps):
            notes.append("held_back_s: seconds a shaping cap would have kept traffic queued; max_delay_s: the longest "
                         "any byte would have waited (to within one sample interval: bytes are taken as spread "
                         "evenly over their interval); burst allowances (milliseconds at the rate) are ignored")
        return {
            "policy": self.policy.metadata.name,
            "samples": self.samples,
            "from_ts": self.first_ts,
            "to_ts": self.last_ts,
            "duration_s": round((self.last_ts or 0) - (self.first_ts or 0), 3),
            "total_bytes": self.total,
            "caps": [c.report() for c in self.caps],
            "allowlisted_bytes": self.allowlisted,
            "allow": [{"destination": describe_dest(d), "bytes": n} for d, n in zip(spec.allow, self.allow_bytes,
                                                                              strict=True)],
            "unmatched_bytes": self.unmatched,
            "budget_blocked_bytes": self.budget_blocked,
            "uncovered_bytes": self.uncovered,
            "budgets": [{"name": b.name, "limit_bytes": b.bytes, "window_s": b.window, "action": b.action,
                         "peak_used_bytes": self.peak_budget[b.name]} for b in spec.budgets],
            "alerts": sorted(self.alerts, key=lambda a: a["ts"]),
            "notes": notes,
        }


def _count(value: JsonValue | None) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def _always_alive(_key: tuple[int, float | None]) -> bool:
    return True


def _int(value: JsonValue | None) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _str(value: JsonValue | None) -> str | None:
    return value if isinstance(value, str) else None


def _positive(value: JsonValue | None) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0 else 0.0


def simulate(policy: Policy, samples: Iterable[JsonObject], resolved: dict[str, list[str]] | None = None,
             link: LinkModel | None = None) -> SimReport:
    sim = Simulation(policy, resolved or {}, link=link or LinkModel())
    for sample in samples:
        sim.add(sample)
    return sim.report()
