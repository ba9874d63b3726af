#!/usr/bin/env python3
"""What a batch costs on PostgreSQL as a function of its size: the fixed part and the part per event.

Fed live, a collector takes whatever arrived while it stored the previous batch, so at 80% of the
rate it sustains its batches are small, and each pays again what does not depend on its size (a
transaction, the hooks' statements, judging the hosts whose weights were read lately, whose samples
are in every batch). Measured here without a broker: bench/collector.py's fleet (one sample per host
a second, a heartbeat every ten, one incident a second), stored by one Pipeline (the service's mode:
host rows deferred) into a throwaway PostgreSQL, second by second of traffic, in batches of each
size; CPU of this process (the collector's work) and of PostgreSQL per batch, and where the batch's
time went (pipeline.timing). A least-squares line over the sizes gives the fixed and per-event costs.
The sweep is measured apart (CPU per call, once per second of traffic as the service runs it).

Run (root, PostgreSQL installed): python bench/batch_cost.py [--hosts 2000] [--seconds 6]
     [--sizes 250,500,1000,2000,4000]
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


from tests.helpers.postgres import Postgres  # noqa: E402
from weightwarden.collector.ingest.pipeline import Pipeline  # noqa: E402
from weightwarden.collector.store.database import Store  # noqa: E402

_spec = importlib.util.spec_from_file_location("bench_collector", REPO / "bench" / "collector.py")
assert _spec is not None and _spec.loader is not None
_collector = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = _collector  # its dataclasses look their module up
_spec.loader.exec_module(_collector)
Fleet = _collector.Fleet


def pg_cpu(pg: Postgres) -> float:
    """The CPU seconds of the postmaster and its backends (bench/collector.py's ``cpu``)."""
    return float(_collector.cpu([int((pg.dir / "postmaster.pid").read_text().split()[0])]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hosts", type=int, default=2000)
    parser.add_argument("--seconds", type=int, default=6, help="seconds of traffic stored per batch size")
    parser.add_argument("--warm", type=int, default=20, help="seconds of traffic stored first (hosts, reads)")
    parser.add_argument("--sizes", default="250,500,1000,2000,4000")
    args = parser.parse_args()
    pg = Postgres()
    try:
        pipe = Pipeline(Store(pg.url))
        pipe.defer_hosts = True
        fleet = Fleet(args.hosts)
        sizes = [int(x) for x in args.sizes.split(",")]
        t0 = time.time() - args.warm - args.seconds * len(sizes)  # the traffic ends about now

        def traffic(seconds: int) -> list[tuple[str, bytes]]:
            out: list[tuple[str, bytes]] = []
            for _ in range(seconds):
                msgs, _key = fleet.tick(t0 + fleet.second)
                out += msgs
            return out

        for i in range(0, len(warm := traffic(args.warm)), 2000):
            pipe.ingest(warm[i:i + 2000])
            pipe.flush_hosts()
        pipe.sweep()
        print(f"{args.hosts} hosts, {len(warm) // args.warm} events a second of traffic; "
              f"after {args.warm} s of it ({fleet.second} incidents: hosts whose weights were read)\n")
        print(f"{'batch':>6} {'batches':>7} {'coll. ms/batch':>14} {'coll. ms/event':>14} {'db ms/event':>11} "
              f"{'parse':>6} {'store':>6} {'judge':>6} {'commit':>6}  (ms per batch)")
        points: list[tuple[int, float, float]] = []
        sweeps: list[tuple[float, float]] = []
        for size in sizes:
            messages = traffic(args.seconds)
            n_batches = 0
            parts: dict[str, list[float]] = {}
            cpu0, db0 = time.process_time(), pg_cpu(pg)
            sweep_cpu = 0.0
            per_second = max(1, len(messages) // args.seconds)
            next_sweep = per_second
            for i in range(0, len(messages), size):
                pipe.ingest(messages[i:i + size])
                n_batches += 1
                for k, v in pipe.timing.items():
                    parts.setdefault(k, []).append(v)
                if i + size >= next_sweep:  # the service: the sweep once a second, flushed host rows too
                    c, d = time.process_time(), pg_cpu(pg)
                    pipe.flush_hosts()
                    pipe.sweep()
                    sweep_cpu += time.process_time() - c
                    sweeps.append((time.process_time() - c, pg_cpu(pg) - d))
                    next_sweep += per_second
            coll = time.process_time() - cpu0 - sweep_cpu
            db = pg_cpu(pg) - db0
            points.append((size, coll / n_batches, coll / len(messages)))
            means = {k: statistics.mean(v) * 1000 for k, v in parts.items()}
            print(f"{size:>6} {n_batches:>7} {coll / n_batches * 1000:>14.1f} {coll / len(messages) * 1000:>14.3f} "
                  f"{db / len(messages) * 1000:>11.3f} {means.get('parse', 0):>6.1f} {means.get('store', 0):>6.1f} "
                  f"{means.get('judge', 0):>6.1f} {means.get('commit', 0):>6.1f}")
        xs = [float(s) for s, _b, _e in points]
        ys = [b for _s, b, _e in points]
        mx, my = statistics.mean(xs), statistics.mean(ys)
        slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum((x - mx) ** 2 for x in xs)
        fixed = my - slope * mx
        print(f"\ncollector CPU per batch ~ {fixed * 1000:.1f} ms + {slope * 1000:.3f} ms per event (least squares); "
              f"sweep: {statistics.mean(s for s, _d in sweeps) * 1000:.1f} ms collector CPU, "
              f"{statistics.mean(d for _s, d in sweeps) * 1000:.1f} ms database CPU per call ({len(sweeps)} calls)")
        pipe.store.close()
    finally:
        pg.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
