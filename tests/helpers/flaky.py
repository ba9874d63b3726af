"""Tests whose verdict depends on the agent keeping up with short-lived processes on a loaded 2-core
machine: they run again (up to four times, shown as ``R`` in the summary, never silently) when they fail.

Each marked test fails for a known, open reason named beside the mark (the closing note of the stop that
added this lists them); a test that fails five times in a row still fails the run."""

from __future__ import annotations

import os

import pytest

# WEIGHTWARDEN_NO_RERUNS=1: one try each, to see which marks are still needed (run it under load).
RERUNS = 0 if os.environ.get("WEIGHTWARDEN_NO_RERUNS") == "1" else 4
load_sensitive = pytest.mark.flaky(reruns=RERUNS, reruns_delay=2)
