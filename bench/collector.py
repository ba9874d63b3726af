#!/usr/bin/env python3
"""How many events a second one collector stores, and how many several store together.

Real Mosquitto, real `weightwarden-collector run` processes, SQLite and (as root) a throwaway
PostgreSQL cluster. The events are what a fleet sends: one egress sample per host per second
(a process sending to one destination), a heartbeat per host every ten seconds, and one
incident per second (a host reads 256 MB of weights and uploads 200 MB of it).

1. Saturation: the collectors' MQTT sessions are created, the collectors stopped, and a backlog
   of --backlog events published (the broker queues it for them; with N collectors in a shared
   subscription, a share each). Then the collectors start together and drain it: the rate at which
   they store it is the most they sustain (their backlog can only shrink at that rate). Measured
   for SQLite with one collector, and PostgreSQL with each of --collectors (1, 2, 4); with the CPU
   seconds each part (collectors, database, broker) spent per event, from /proc.
2. Latency: one collector, fed live at 80% of its saturation rate for --seconds: whether it keeps
   up, and p50/p99 from publishing an incident's upload to its alert (alerts.created_at).

Run: python bench/collector.py [--hosts 2000] [--backlog 30000] [--seconds 20] [--collectors 1,2,4]
"""

from __future__ import annotations

import argparse
import math
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import psutil  # noqa: E402
from sqlalchemy import create_engine, text  # noqa: E402

from tests.collector.scenarios import MB, Stream  # noqa: E402
import paho.mqtt.client as mqtt  # noqa: E402
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion  # noqa: E402
from tests.helpers.broker import Broker  # noqa: E402
from tests.helpers.postgres import Postgres, binaries  # noqa: E402
from weightwarden.collector.store.schema import normalize_url  # noqa: E402

SIZE_EXFIL = 200 * MB


def publisher(broker: Broker) -> mqtt.Client:
    """A publisher that keeps a thousand messages in flight (an agent fleet's worth of sockets)."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-pub-{time.monotonic_ns()}",
                         protocol=MQTTProtocolVersion.MQTTv5)
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)
    client.connect(broker.host, broker.port)
    client.loop_start()
    return client


class Fleet:
    """Every host's event stream, one second at a time (real models, as agents make them)."""

    def __init__(self, hosts: int) -> None:
        self.streams = [Stream(f"gpu-{i:05d}") for i in range(hosts)]
        self.second = 0

    def tick(self, now: float) -> tuple[list[tuple[str, bytes]], str]:
        """One second of the fleet: its messages (the incident's upload last), and ":host:pid", which
        the key of the alert the incident must raise contains."""
        out: list[tuple[str, bytes]] = []
        for i, s in enumerate(self.streams):
            s.events.clear()
            if (self.second + i) % 10 == 0:
                s.add("heartbeat", now, uptime_s=float(self.second))
            s.send(now, pid=1000 + i % 5000, nbytes=4096 + self.second, address="198.18.0.1",
                   exe="/usr/bin/python3.11")
        thief = self.streams[self.second % len(self.streams)]
        pid = 900_000 + self.second
        thief.read(now - 3, pid=pid, nbytes=256 * MB)
        for s in self.streams:
            out += s.messages()
        thief.events.clear()
        thief.send(now, pid=pid, nbytes=SIZE_EXFIL)
        out += thief.messages()
        self.second += 1
        return out, f":{thief.host}:{pid}"


@dataclass
class Parts:
    """CPU seconds spent, per part of the system."""

    collectors: float = 0.0
    database: float = 0.0
    broker: float = 0.0


def cpu(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            p = psutil.Process(pid)
            procs = [p, *p.children(recursive=True)]
        except psutil.NoSuchProcess:
            continue
        for q in procs:
            try:
                t = q.cpu_times()
                total += t.user + t.system
            except psutil.NoSuchProcess:
                pass
    return total


class Bench:
    def __init__(self, broker: Broker, work: Path, pg: Postgres | None) -> None:
        self.broker, self.work, self.pg = broker, work, pg
        self.n = 0

    def fresh_db(self, kind: str) -> str:
        self.n += 1
        if kind == "sqlite":
            return f"sqlite:///{self.work}/bench-{self.n}.db"
        assert self.pg is not None
        name = f"ww{self.n}"
        self.pg._as_pg("psql", "-h", "127.0.0.1", "-p", str(self.pg.port), "-U", "postgres", "-c",
                       f"CREATE DATABASE {name}")
        return self.pg.url.rsplit("/", 1)[0] + "/" + name

    def pg_pids(self) -> list[int]:
        if self.pg is None:
            return []
        return [int((self.pg.dir / "postmaster.pid").read_text().split()[0])]

    def start(self, db: str, n: int, tag: str) -> list[tuple[subprocess.Popen[bytes], Path]]:
        procs = []
        for i in range(n):
            log = self.work / f"{tag}-{i}.log"
            argv = [sys.executable, "-m", "weightwarden.collector", "run", "--broker", self.broker.url, "--db", db,
                    "--client-id", f"{tag}-{i}"]
            if db.startswith("postgres"):
                argv += ["--shared-group", tag]
            procs.append((subprocess.Popen(argv, cwd=str(REPO), stdout=subprocess.DEVNULL,
                                           stderr=open(log, "ab")), log))
        deadline = time.monotonic() + 60
        for _, log in procs:
            while b"collector_subscribed" not in log.read_bytes():
                if time.monotonic() > deadline:
                    raise RuntimeError(f"collector did not subscribe: {log.read_text()[-2000:]}")
                time.sleep(0.05)
        return procs

    @staticmethod
    def stop(procs: list[tuple[subprocess.Popen[bytes], Path]]) -> None:
        for p, _ in procs:
            p.terminate()
        for p, _ in procs:
            p.wait(timeout=60)

    @staticmethod
    def stored(db: str) -> int:
        engine = create_engine(normalize_url(db))
        try:
            with engine.connect() as conn:
                return int(conn.execute(text("SELECT coalesce(sum(value), 0) FROM counters WHERE name IN "
                                             "('stored', 'duplicates', 'rejected')")).scalar() or 0)
        finally:
            engine.dispose()

    def publish(self, messages: list[tuple[str, bytes]]) -> float:
        pub = publisher(self.broker)
        t = time.monotonic()
        info = None
        for topic, payload in messages:
            info = pub.publish(topic, payload, qos=1)
        if info is not None:
            info.wait_for_publish(300)
        took = time.monotonic() - t
        pub.loop_stop()
        pub.disconnect()
        return took

    def saturation(self, kind: str, collectors: int, hosts: int, backlog: int) -> dict[str, float]:
        db = self.fresh_db(kind)
        tag = f"sat{self.n}"
        self.stop(self.start(db, collectors, tag))  # sessions (and schema) exist; now offline
        fleet, messages = Fleet(hosts), list[tuple[str, bytes]]()
        now = time.time() - backlog / hosts - 5
        while len(messages) < backlog:
            batch, _ = fleet.tick(now + fleet.second)
            messages += batch
        publish_s = self.publish(messages)
        total = len(messages)
        db_pids = self.pg_pids() if kind == "postgresql" else []
        before = Parts(0.0, cpu(db_pids), cpu([self.broker.proc.pid] if self.broker.proc else []))
        procs = self.start(db, collectors, tag)
        pids = [p.pid for p, _ in procs]
        points: list[tuple[float, int]] = []
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            n = self.stored(db)
            points.append((time.monotonic(), n))
            if n >= total:
                break
            time.sleep(0.25)
        after = Parts(cpu(pids), cpu(db_pids), cpu([self.broker.proc.pid] if self.broker.proc else []))
        self.stop(procs)
        # The slope between 10% and 90% stored: neither start-up nor the last partial batches.
        lo = next(p for p in points if p[1] >= total * 0.1)
        hi = next((p for p in points if p[1] >= total * 0.9), points[-1])
        rate = (hi[1] - lo[1]) / max(hi[0] - lo[0], 1e-3)
        done = points[-1][1]
        return {"events": total, "stored": done, "rate": rate, "publish_rate": total / publish_s,
                "collector_ms": (after.collectors - before.collectors) * 1000 / max(done, 1),
                "database_ms": (after.database - before.database) * 1000 / max(done, 1),
                "broker_ms": (after.broker - before.broker) * 1000 / max(done, 1)}

    def latency(self, kind: str, rate: float, hosts: int, seconds: int) -> dict[str, float]:
        """Live at ``rate`` events/s (hosts scaled so one sample each per second gives that rate): the
        time from publishing each incident's upload to its alert being in the database (polled)."""
        db = self.fresh_db(kind)
        procs = self.start(db, 1, f"lat{self.n}")
        fleet = Fleet(max(1, min(int(rate / 1.1), hosts * 4)))  # a sample each, a heartbeat each 10 s
        watch = AlertWatch(db)
        watch.start()
        pub = publisher(self.broker)
        sent_at: dict[str, float] = {}
        published = 0
        t0 = time.monotonic()
        for second in range(seconds):
            tick = t0 + second
            messages, key = fleet.tick(time.time())
            # Spread each second's messages over the second, as a fleet's clocks do.
            for n, (topic, payload) in enumerate(messages):
                pub.publish(topic, payload, qos=1)
                if n % 200 == 199:
                    ahead = tick + (n + 1) / len(messages) - time.monotonic()
                    if ahead > 0:
                        time.sleep(ahead)
            sent_at[key] = time.time()  # the upload is the second's last message
            published += len(messages)
            delay = tick + 1 - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        publish_s = time.monotonic() - t0
        deadline = time.monotonic() + 300
        stored = 0
        while time.monotonic() < deadline:
            stored = self.stored(db)
            if stored >= published:
                break
            time.sleep(0.2)
        drain_s = time.monotonic() - t0
        time.sleep(1)
        watch.done = True
        watch.join(5)
        pub.loop_stop()
        pub.disconnect()
        self.stop(procs)
        lat = sorted(min((seen for k, seen in watch.seen.items() if key in k), default=float("inf")) - t
                     for key, t in sent_at.items())
        found = [x for x in lat if x != float("inf")]
        return {"offered": published / publish_s, "published": published, "stored": stored,
                "behind_s": drain_s - publish_s, "alerts": len(found), "expected": len(sent_at),
                "p50": statistics.median(lat) if lat else float("nan"),
                "p99": lat[min(len(lat) - 1, int(len(lat) * 0.99))] if lat else float("nan")}


class AlertWatch(threading.Thread):
    """Polls the alerts table ten times a second; notes when each key first appeared."""

    def __init__(self, db: str) -> None:
        super().__init__(daemon=True)
        self.engine = create_engine(normalize_url(db))
        self.seen: dict[str, float] = {}
        self.done = False

    def run(self) -> None:
        while not self.done:
            with self.engine.connect() as conn:
                keys = conn.execute(text("SELECT key FROM alerts")).scalars().all()
            now = time.time()
            for k in keys:
                self.seen.setdefault(k, now)
            time.sleep(0.1)
        self.engine.dispose()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hosts", type=int, default=2000)
    parser.add_argument("--backlog", type=int, default=30_000, help="events published before the collectors start")
    parser.add_argument("--seconds", type=int, default=20, help="length of the latency run")
    parser.add_argument("--collectors", default="1,2,4", help="PostgreSQL collector counts to measure")
    parser.add_argument("--json", action="store_true", help="also print the results as one JSON line")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ww-bench-"))
    os.chmod(work, 0o755)
    broker = Broker(work / "broker").start()
    pg = Postgres() if os.geteuid() == 0 and binaries() else None
    bench = Bench(broker, work, pg)
    sat: dict[tuple[str, int], dict[str, float]] = {}
    lat: dict[str, dict[str, float]] = {}
    try:
        sat[("SQLite", 1)] = bench.saturation("sqlite", 1, args.hosts, args.backlog)
        if pg is not None:
            for n in (int(x) for x in args.collectors.split(",")):
                sat[("PostgreSQL", n)] = bench.saturation("postgresql", n, args.hosts, args.backlog * max(1, n // 2))
        lat["SQLite"] = bench.latency("sqlite", 0.8 * sat[("SQLite", 1)]["rate"], args.hosts, args.seconds)
        if pg is not None:
            lat["PostgreSQL"] = bench.latency("postgresql", 0.8 * sat[("PostgreSQL", 1)]["rate"], args.hosts,
                                              args.seconds)
    finally:
        broker.stop()
        if pg is not None:
            pg.stop()
    print(f"\nSaturation: a backlog of egress samples, heartbeats and incidents ({args.hosts} hosts), drained by "
          f"collectors started together; CPU per event from /proc ({os.cpu_count()} CPUs, shared)\n")
    print(f"{'database':<11} {'collectors':>10} {'events':>8} {'events/s':>9} {'per coll.':>9} "
          f"{'vs 1':>5} {'collector':>10} {'database':>9} {'broker':>8}")
    for (name, n), r in sat.items():
        base = sat.get((name, 1), r)["rate"]
        print(f"{name:<11} {n:>10} {r['stored']:>8,} {r['rate']:>9,.0f} {r['rate'] / n:>9,.0f} "
              f"{r['rate'] / base:>4.2f}x {r['collector_ms']:>7.3f} ms {r['database_ms']:>6.3f} ms "
              f"{r['broker_ms']:>5.3f} ms")
    print(f"\nLatency: one collector fed live at 80% of its saturation rate for {args.seconds}s, one incident "
          f"a second (upload published -> alert row)\n")
    print(f"{'database':<11} {'offered/s':>9} {'stored':>8} {'kept up':>8} {'alerts':>9} {'p50':>7} {'p99':>7}")
    for name, r in lat.items():
        kept = "yes" if r["behind_s"] <= 2 else f"+{r['behind_s']:.0f}s"
        print(f"{name:<11} {r['offered']:>9,.0f} {r['stored']:>8,} {kept:>8} {r['alerts']:>4}/{r['expected']:<4} "
              f"{r['p50']:>6.2f}s {r['p99']:>6.2f}s")
    # What a fleet needs, from the measured CPU per event (not from the rates, which this shared
    # 2-CPU machine caps): 10,000 hosts at 1 Hz send 10,000 samples and 1,000 heartbeats a second.
    fleet_rate = 11_000
    print(f"\nProjection: 10,000 hosts at 1 Hz = {fleet_rate:,} events/s, from CPU per event measured above\n")
    print(f"{'database':<11} {'collectors':>10} {'collector CPUs':>15} {'database CPUs':>14} {'broker CPUs':>12} "
          f"{'collectors at 3 CPUs each':>26}")
    projection = {}
    for (name, n), r in sat.items():
        coll, db, brk = (fleet_rate * r[k] / 1000 for k in ("collector_ms", "database_ms", "broker_ms"))
        projection[f"{name}x{n}"] = {"collector_cpus": coll, "database_cpus": db, "broker_cpus": brk}
        print(f"{name:<11} {n:>10} {coll:>15.1f} {db:>14.1f} {brk:>12.1f} {max(1, math.ceil(coll / 3)):>26}")
    if args.json:
        print(json.dumps({"saturation": {f"{k[0]}x{k[1]}": v for k, v in sat.items()}, "latency": lat,
                          "projection": projection}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
