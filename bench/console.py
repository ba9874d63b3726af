#!/usr/bin/env python3
"""Console API latency at scale: 100,000 alerts and 10 M egress rows, on SQLite and PostgreSQL.

Rows are generated in bulk with SQL (a recursive CTE on SQLite,
generate_series on PostgreSQL), then a real ``weightwarden-collector serve``
answers the API over loopback HTTP with a Bearer token. For each request kind
it prints p50/p99 over --requests calls, against the floor (p99 under 300 ms),
and, as a peer in the same run, the CLI's ``alerts list --json`` (every alert,
unpaged) on the same database.

Run (root for PostgreSQL; under the shared lock): flock /tmp/ww-heavy.lock python bench/console.py
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sqlalchemy import text  # noqa: E402

from tests.helpers.console import ConsoleServer, add_users  # noqa: E402
from tests.helpers.postgres import Postgres, binaries  # noqa: E402
from weightwarden.collector.store.database import Store  # noqa: E402

FLOOR_P99_S = 0.300
HOSTS = 100
EVENTS = 300_000


def series(dialect: str, n: int) -> str:
    if dialect == "postgresql":
        return f"FROM generate_series(0, {n - 1}) AS g(i)"
    return f"FROM (WITH RECURSIVE s(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM s WHERE i < {n - 1}) SELECT i FROM s)"


def hex16(dialect: str) -> str:
    return "lpad(to_hex(i), 16, '0')" if dialect == "postgresql" else "printf('%016x', i)"


def fill(store: Store, alerts: int, egress: int, now: float) -> dict[str, float]:
    d = store.dialect
    took = {}
    boolean = "(i % 3 = 0)::int" if d == "postgresql" else "(i % 3 = 0)"
    steps = {
        "events": f"""INSERT INTO events(id, host, seq, ts, type, data, received_at)
            SELECT 'ev' || i, 'gpu-' || (i % {HOSTS}), i + 1, {now} - (i % 86400), 'egress_sample',
              '{{"ts": 1, "interval_s": 1, "processes": [{{"pid": ' || (1000 + i % 5000) || ', "name": "python3", '
              || '"user": "svc-' || (i % 40) || '", "cmdline": ["python3", "serve.py", "--port", "' || (i % 9000) || '"], '
              || '"tx_bytes": 1000, "destinations": [{{"address": "198.18.1.' || (i % 250) || '", "port": 443, '
              || '"tx_bytes": 1000, "name": "upload' || (i % 250) || '.example"}}]}}]}}', {now}
            {series(d, EVENTS)}""",
        "alerts": f"""INSERT INTO alerts(key, id, host, kind, severity, severity_rank, state, title, explanation, evidence,
              first_ts, last_ts, created_at, updated_at, count)
            SELECT 'exfiltration:gpu-' || (i % {HOSTS}) || ':' || i, {hex16(d)}, 'gpu-' || (i % {HOSTS}),
              CASE i % 5 WHEN 0 THEN 'exfiltration' WHEN 1 THEN 'cap_hit' WHEN 2 THEN 'threshold_crossed'
                WHEN 3 THEN 'slow_exfiltration' ELSE 'agent_silent' END,
              CASE i % 4 WHEN 0 THEN 'low' WHEN 1 THEN 'medium' WHEN 2 THEN 'high' ELSE 'critical' END, 1 + i % 4,
              CASE i % 3 WHEN 0 THEN 'open' WHEN 1 THEN 'acknowledged' ELSE 'resolved' END,
              'Weights uploaded by python3 (pid ' || (1000 + i % 5000) || ') on gpu-' || (i % {HOSTS}) || ' to 198.18.1.'
                || (i % 250),
              'python3 (pid ' || (1000 + i % 5000) || ') read 1.0 GB of model weights and has since sent 500 MB to '
                || '198.18.1.' || (i % 250) || ' port 443, which is not allowlisted. At the current rate the rest would take 1m.',
              '{{"process": {{"pid": ' || (1000 + i % 5000) || ', "name": "python3", "exe": "/usr/bin/python3"}}, '
                || '"readers": [' || (1000 + i % 5000) || '], "files": ["/srv/models/m' || (i % 50) || '.safetensors"], '
                || '"destinations": [{{"address": "198.18.1.' || (i % 250) || '", "port": 443, "bytes": 500000000}}], '
                || '"bytes_read": 1000000000, "bytes_sent": 500000000, "rate_bps": 80000000, '
                || '"projected_seconds_for_rest": 50, "timeline": [{{"ts": {now}, "what": "read"}}], '
                || '"events": ["ev' || (i % {EVENTS}) || '", "ev' || ((i * 7 + 1) % {EVENTS}) || '"]}}',
              {now} - 3600 - (i % 604800), {now} - (i % 604800), {now}, {now}, 1 + i % 7
            {series(d, alerts)}""",
        "egress": f"""INSERT INTO egress(host, pid, ppid, exe, name, uid, address, port, allowed, bytes, ts, rate_bps,
              event_id, pipes, received_at)
            SELECT 'gpu-' || (i % {HOSTS}), 1000 + (i % 5000), 1, '/usr/bin/python3', 'python3', 1000,
              '198.18.' || (i % 7) || '.' || (i % 250), 443, {boolean}, 100000 + (i % 1000),
              {now} - ((i / {HOSTS}) % 86400), 1000000, 'ev' || (i % {EVENTS}), NULL, {now}
            {series(d, egress)}""",
    }
    for name, sql in steps.items():
        t0 = time.monotonic()
        with store.tx() as conn:
            conn.execute(text(sql))
        took[name] = time.monotonic() - t0
        print(f"  generated {name} in {took[name]:.0f}s", flush=True)
    with store.tx() as conn:
        conn.execute(text("INSERT INTO hosts(host, first_seen, last_seen, status) SELECT DISTINCT host, "
                          f"{now}, {now}, 'online' FROM alerts"))
    t0 = time.monotonic()
    with store.engine.connect() as conn:
        conn.execute(text("ANALYZE"))
        conn.commit()
    took["analyze"] = time.monotonic() - t0
    return took


def timed(url: str | Callable[[], str], token: str, n: int) -> tuple[float, float]:
    samples = []
    for _ in range(n):
        req = urllib.request.Request(url() if callable(url) else url, headers={"Authorization": f"Bearer {token}"})
        t0 = time.perf_counter()
        with urllib.request.urlopen(req, timeout=60) as resp:
            body = resp.read()
        samples.append(time.perf_counter() - t0)
        assert resp.status == 200 and body
    samples.sort()
    return statistics.median(samples), samples[min(len(samples) - 1, int(len(samples) * 0.99))]


def measure(db: str, label: str, alerts: int, egress: int, requests: int, workdir: Path) -> list[tuple[str, float, float]]:
    print(f"{label}: generating {alerts:,} alerts, {egress:,} egress rows, {EVENTS:,} events", flush=True)
    store = Store(db)
    now = time.time()
    fill(store, alerts, egress, now)
    tokens = add_users(db)
    server = ConsoleServer(db, workdir / f"serve-{label}.log")
    rows: list[tuple[str, float, float]] = []
    try:
        base, token = server.base, tokens["viewer"]
        rng = random.Random(7)

        def one_alert() -> str:
            return f"{base}/api/v1/alerts/{rng.randrange(alerts):016x}"

        until = now
        cases: list[tuple[str, str | Callable[[], str]]] = [
            ("alert list (first page)", f"{base}/api/v1/alerts"),
            ("alert list, open + high", f"{base}/api/v1/alerts?state=open&severity=high"),
            ("alert list, one host, 24h", f"{base}/api/v1/alerts?host=gpu-42&since=24h"),
            ("alert list, page 50", f"{base}/api/v1/alerts?offset=5000"),
            ("alert list, search", f"{base}/api/v1/alerts?q=198.18.1.77"),
            ("alert page (story + audit)", one_alert),
            ("host egress chart, 1h", f"{base}/api/v1/hosts/gpu-7/egress?until={until}&since={until - 3600}"),
        ]
        for name, url in cases:
            timed(url, token, 3)  # warm the caches, as a console in use has them
            p50, p99 = timed(url, token, requests)
            rows.append((name, p50, p99))
            print(f"  {name:<28} p50 {p50 * 1000:7.1f} ms   p99 {p99 * 1000:7.1f} ms", flush=True)
        t0 = time.perf_counter()
        out = subprocess.run([sys.executable, "-m", "weightwarden.collector", "alerts", "list", "--json", "--db", db],
                             capture_output=True, cwd=str(REPO))
        peer = time.perf_counter() - t0
        assert out.returncode == 0 and len(json.loads(out.stdout)) == alerts
        rows.append(("peer: CLI alerts list --json (all)", peer, peer))
        print(f"  {'peer: CLI alerts list (all)':<28} {peer * 1000:7.0f} ms once", flush=True)
    finally:
        server.stop()
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--alerts", type=int, default=100_000)
    ap.add_argument("--egress-rows", type=int, default=10_000_000)
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--only", choices=("sqlite", "postgresql"))
    args = ap.parse_args()
    results: dict[str, list[tuple[str, float, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="ww-bench-console-") as tmp:
        work = Path(tmp)
        if args.only in (None, "sqlite"):
            results["sqlite"] = measure(f"sqlite:///{work}/console.db", "sqlite", args.alerts, args.egress_rows,
                                        args.requests, work)
        if args.only in (None, "postgresql"):
            if binaries() is None:
                print("postgresql: not installed (scripts/bootstrap.sh); skipped", file=sys.stderr)
            else:
                pg = Postgres()
                try:
                    results["postgresql"] = measure(pg.url, "postgresql", args.alerts, args.egress_rows,
                                                    args.requests, work)
                finally:
                    pg.stop()
    print(f"\n{'database':<11} {'request':<36} {'p50 ms':>8} {'p99 ms':>8}  floor p99 < {FLOOR_P99_S * 1000:.0f} ms")
    ok = True
    for db, rows in results.items():
        for name, p50, p99 in rows:
            peer = name.startswith("peer")
            verdict = "" if peer else ("ok" if p99 < FLOOR_P99_S else "OVER")
            ok = ok and (peer or p99 < FLOOR_P99_S)
            print(f"{db:<11} {name:<36} {p50 * 1000:8.1f} {p99 * 1000:8.1f}  {verdict}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
