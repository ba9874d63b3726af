#!/usr/bin/env python3
"""Detection quality on the labelled corpus (tests/corpus): per scenario the verdict and the
seconds from the first stolen byte to the alert, then recall, precision and time to alert.

Recorded scenarios replay through the real pipeline and SQLite; with root, the real scenarios
run the real agent in network namespaces. As a peer, the same recorded streams are judged by
the rule the collector used before (v0.2.0: a process that read weights, its parent, or anything
sharing a pipe with it, sending 10% of what was read anywhere non-allowlisted after the read).

Floors: recall 100% (theft at high or critical), no high or critical alert on any benign
scenario, median time to alert under 5 s.

Run: python bench/detection.py [--no-real] [--only NAME]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.corpus.model import Scenario, Verdict  # noqa: E402
from tests.corpus.recorded import SCENARIOS  # noqa: E402
from tests.corpus.replay import arrival_order, replay  # noqa: E402

LOUD = ("high", "critical")


def naive_peer(sc: Scenario) -> bool:
    """Would the v0.2.0 rule raise high or critical? (linked by parent, any shared pipe, 10% of bytes read)"""
    reads: dict[int, dict[str, Any]] = {}
    pipes: dict[int, set[int]] = {}
    sent: dict[int, list[tuple[float, int, int]]] = {}
    for e in arrival_order(sc):
        d = e["data"]
        if e["type"] in ("file_access", "weight_holder") and d.get("pid") is not None:
            r = reads.setdefault(d["pid"], {"bytes": 0, "first": d.get("first_ts", e["ts"])})
            r["bytes"] += d.get("bytes_read") or d.get("resident_bytes") or 0
            pipes.setdefault(d["pid"], set()).update(d.get("pipes") or [])
        elif e["type"] == "egress_sample":
            for p in d["processes"]:
                pipes.setdefault(p["pid"], set()).update(p.get("pipes") or [])
                out = sum(x["tx_bytes"] for x in p["destinations"] if not x.get("allowed"))
                sent.setdefault(p["pid"], []).append((d["ts"], out, p.get("ppid") or 0))
    for pid, rows in sent.items():
        related = {pid, *(pp for _, _, pp in rows if pp > 1)}
        related |= {q for q, ps in pipes.items() if ps & pipes.get(pid, set())}
        got = [reads[q] for q in related if q in reads]
        total = sum(r["bytes"] for r in got)
        if total < 2**20:
            continue
        first = min(r["first"] for r in got)
        if sum(n for ts, n, _ in rows if ts >= first - 1) >= 0.1 * total:
            return True
    return False


def run_real() -> list[Verdict]:
    from tests.corpus.real import REAL_SCENARIOS, Lab
    from tests.helpers.netns import make_pair

    pair = make_pair()
    out = []
    try:
        lab = Lab(pair, Path(tempfile.mkdtemp(prefix="ww-corpus-")))
        for sc in REAL_SCENARIOS:
            out.append(lab.judge(sc, Path(tempfile.mkdtemp()) / "c.db"))
    finally:
        pair.teardown()
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--no-real", action="store_true", help="recorded scenarios only")
    parser.add_argument("--only", help="scenarios whose name contains this")
    args = parser.parse_args()
    chosen = [s for s in SCENARIOS if not args.only or args.only in s.name]
    verdicts = [replay(sc) for sc in chosen]
    peer = {sc.name: naive_peer(sc) for sc in chosen}
    if not args.no_real:
        if os.geteuid() == 0:
            verdicts += [v for v in run_real() if not args.only or args.only in v.scenario.name]
        else:
            print("(not root: real scenarios skipped)\n")
    print(f"{'scenario':<44} {'label':<7} {'run':<8} {'verdict (most severe alert)':<34} {'ok':<4} "
          f"{'to alert':>9} {'v0.2.0':>7}")
    for v in verdicts:
        sc = v.scenario
        took = f"{v.seconds_to_alert:.2f}s" if v.seconds_to_alert is not None else "-"
        old = "" if sc.name not in peer else ("alert" if peer[sc.name] else "-")
        print(f"{sc.name[:44]:<44} {sc.label:<7} {sc.kind:<8} {v.top[:34]:<34} {'yes' if v.ok else 'NO':<4} "
              f"{took:>9} {old:>7}")
        for p in v.problems:
            print(f"    {p}")
    theft = [v for v in verdicts if v.scenario.label == "theft"]
    benign = [v for v in verdicts if v.scenario.label == "benign"]
    caught = [v for v in theft if v.ok]
    false_alarms = [v for v in benign if any(a["severity"] in LOUD for a in v.alerts)]
    recall = len(caught) / max(len(theft), 1)
    precision = len(caught) / max(len(caught) + len(false_alarms), 1)
    times = sorted(v.seconds_to_alert for v in theft if v.seconds_to_alert is not None)
    median = statistics.median(times) if times else float("nan")
    rec = chosen
    peer_tp = sum(1 for sc in rec if sc.label == "theft" and peer[sc.name])
    peer_fp = sum(1 for sc in rec if sc.label == "benign" and peer[sc.name])
    peer_theft = sum(1 for sc in rec if sc.label == "theft")
    print(f"\n{len(theft)} theft and {len(benign)} benign scenarios "
          f"({sum(v.scenario.kind == 'real' for v in verdicts)} of them real runs)")
    print(f"recall {recall:.0%} ({len(caught)}/{len(theft)}), precision {precision:.0%} "
          f"({len(false_alarms)} benign scenario(s) with a high or critical alert)")
    print(f"time to alert: median {median:.2f}s, max {max(times) if times else float('nan'):.2f}s "
          f"(recorded: simulated event time plus the collector's own processing; real: wall clock)")
    print(f"peer (v0.2.0 rule, recorded scenarios): recall {peer_tp}/{peer_theft}, "
          f"false alarms {peer_fp}/{sum(1 for sc in rec if sc.label == 'benign')}")
    floors = recall == 1.0 and not false_alarms and median < 5.0
    print(f"floors (recall 100%, no false alarm, median < 5 s): {'met' if floors else 'NOT MET'}")
    return 0 if floors else 1


if __name__ == "__main__":
    raise SystemExit(main())
