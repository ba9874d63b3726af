"""Detections, as pure functions of facts the store has gathered; the rules live in ``collector/detect/``.

Each returns an alert draft (or None): a stable ``key`` that groups one incident, a
severity, a plain-words explanation, and the evidence (process, files, bytes,
destinations, timeline). The same facts give the same draft, whichever collector
computes it and whatever order the facts arrived in.
"""

from __future__ import annotations

from weightwarden.collector.detect.common import LEVELS, Draft, Tuning, bump, clock, projected_seconds
from weightwarden.collector.detect.host import host_exfiltration
from weightwarden.collector.detect.sender import Link, exfiltration
from weightwarden.collector.detect.single import from_event, gap, remote_copy, silent
from weightwarden.collector.detect.slow import slow, slow_peak

__all__ = ["LEVELS", "Draft", "Link", "Tuning", "bump", "clock", "exfiltration", "from_event", "gap",
           "host_exfiltration", "projected_seconds", "remote_copy", "silent", "slow", "slow_peak"]
