"""What the daemon does with each sample before it leaves: every sender's bytes through the policy's
thresholds (``threshold_crossed``), each destination marked allowlisted or not (the plan's own match, so
the collector can weigh it), then the wire model."""

from __future__ import annotations

import psutil

from weightwarden.agent.attribution.sample import SampleJson
from weightwarden.agent.enforce.budget import ThresholdWatch
from weightwarden.agent.policy.match import Flow, allowed_by, allowlist
from weightwarden.agent.policy.model import Policy
from weightwarden.events import EgressSample, ProcessEgress, ThresholdCrossed


def annotate_allowed(sample: SampleJson, policy: Policy, resolved: dict[str, list[str]]) -> None:
    """Mark each destination allowlisted or not, so the collector can weigh it (the plan's own match)."""
    allow = allowlist(policy, resolved)
    for proc in sample["processes"]:
        for d in proc["destinations"]:
            d["allowed"] = allowed_by(allow, Flow(d["address"], d["port"])) is not None


def process_alive(key: tuple[int, float | None]) -> bool:
    """Whether (pid, start time) still names a running process (a reused pid does not)."""
    pid, started = key
    try:
        return started is None or psutil.Process(pid).create_time() == started
    except (psutil.NoSuchProcess, psutil.AccessDenied, ProcessLookupError):
        return False


def crossed(sample: SampleJson, thresholds: ThresholdWatch, now: float) -> list[ThresholdCrossed]:
    """The thresholds this sample's senders just crossed; windows of processes gone are forgotten."""
    found = []
    for proc in sample["processes"]:
        key = (proc["pid"], proc.get("start_time"))
        for th, total in thresholds.add(now, key, proc["tx_bytes"]):
            found.append(ThresholdCrossed(threshold=th.name, severity=th.severity, bytes_in_window=total,
                                          window_s=th.window, limit_bytes=th.bytes,
                                          process=ProcessEgress.model_validate(proc)))
    thresholds.forget(now, process_alive)
    return found


def publishable(sample: SampleJson, policy: Policy, resolved: dict[str, list[str]]) -> EgressSample:
    """The sample as it is published; raises pydantic.ValidationError (a bug of ours, never the host's)."""
    annotate_allowed(sample, policy, resolved)
    return EgressSample.model_validate(sample)
