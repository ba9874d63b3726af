"""What every attribution path must do, run where that path can run (a namespace, a cgroup):

    python -m tests.helpers.path_conformance NAME ADDR PORT [--bpf-cgroup DIR] [--send-cgroup DIR]

The path is made through the registry and must satisfy the interface; it starts and says what it can
do; a process it can see (in ``--send-cgroup`` if given) uploads BYTES to ADDR:PORT and the path credits
exactly that to its pid and destination; its sensor report is valid and names it; events() and
set_raw_policy() work; close() may be called twice. Prints one JSON line and exits 0, or fails with
the broken promise on stderr (exit 1).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from weightwarden.agent.attribution import paths
from weightwarden.agent.attribution.dns import NameCache
from weightwarden.agent.attribution.paths import AttributionPath, PathContext, RawPolicy
from weightwarden.agent.kernel.features import Feature
from weightwarden.agent.kernel.interfaces import local_addresses
from weightwarden.agent.kernel.procmap import ProcessTable
from weightwarden.events import SensorState

BYTES = 1 << 20


def check(name: str, addr: str, port: int, bpf_cgroup: str | None, send_cgroup: str | None) -> dict[str, object]:
    local = local_addresses()
    ctx = PathContext(ProcessTable(), NameCache(), lambda: local, bpf_cgroup=bpf_cgroup)
    path = paths.create(name, ctx)
    assert isinstance(path, AttributionPath), f"{name}: does not satisfy AttributionPath"
    try:
        features = path.start()
        assert features and all(isinstance(f, Feature) for f in features), f"{name}: start() said nothing: {features}"
        argv = [sys.executable, "-m", "tests.helpers.upload", addr, str(port), str(BYTES), "--wait"]
        if send_cgroup:
            Path(send_cgroup).mkdir(parents=True, exist_ok=True)
            argv = ["sh", "-c", f"echo $$ > {send_cgroup}/cgroup.procs && exec \"$0\" \"$@\"", *argv]
        sender = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert sender.stdout is not None and sender.stdin is not None
        pid = int(sender.stdout.readline())
        path.collect()  # the connection is known before it sends (as a path that looks up owners needs)
        sender.stdin.write(b"go\n")
        sender.stdin.flush()
        sent = int(sender.stdout.readline().split()[1])  # BYTES and any retransmissions
        sender.wait(timeout=20)
        credited = 0
        deadline = time.monotonic() + 10
        while credited < sent and time.monotonic() < deadline:
            time.sleep(0.3)
            interval = path.collect()
            acct = interval.accounts.get(pid)
            if acct is not None:
                credited += sum(d.tx_bytes for (a, p, _proto), d in acct.dests.items() if (a, p) == (addr, port))
        assert credited == sent, f"{name}: credited {credited} of the {sent} bytes pid {pid} sent"
        sensor = SensorState.model_validate(path.sensor().model_dump())
        assert sensor.path == path.name and sensor.kernel == os.uname().release, f"{name}: sensor {sensor}"
        assert sensor.degraded == (path.name != "ebpf"), f"{name}: degraded is {sensor.degraded}"
        assert isinstance(path.events(), list)
        path.set_raw_policy(RawPolicy(kill=False, allow=("/usr/sbin/dhclient",)))
        return {"ok": True, "name": name, "path": path.name, "credited": credited, "features": len(sensor.features)}
    finally:
        path.close()
        path.close()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("name")
    parser.add_argument("addr")
    parser.add_argument("port", type=int)
    parser.add_argument("--bpf-cgroup")
    parser.add_argument("--send-cgroup")
    args = parser.parse_args()
    try:
        print(json.dumps(check(args.name, args.addr, args.port, args.bpf_cgroup, args.send_cgroup)))
    except AssertionError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
