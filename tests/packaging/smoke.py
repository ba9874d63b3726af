"""Does an installed weightwarden work? Run by the interpreter it is installed for, from outside the
source tree (scripts/ci-wheel.sh: a clean venv from the wheel; tests/packaging/test_wheel.py: the
wheel unpacked; the Debian package's own venv), so nothing is borrowed from the repository.

    python smoke.py --prefix DIR [--bin DIR] [--all-helps] [--ebpf] [--stack]

Checks, each printed as it passes; the first failure exits 1 with what was wrong:
  - weightwarden is imported from under --prefix, and every module of the package imports;
  - the package data is there: example policies, schema, units, console templates and static files,
    the eBPF loader (executable) and its CO-RE object, where the agent looks for them;
  - both CLIs' --help (and with --all-helps every subcommand's), exit 0;
  - --ebpf (root): `weightwarden-agent top --json --count 1` runs on the eBPF path, with the
    loader from the installed package;
  - --stack (root): in a network namespace of its own, a real Mosquitto, `weightwarden-collector run`
    with --health-listen (ready), and `weightwarden-agent run` publishing to it; the collector stores
    the agent's host, both stop with exit 0 on SIGTERM.
Only the standard library and the installed package: no pytest, nothing from tests/.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import pkgutil
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

ENV = {k: v for k, v in os.environ.items() if not k.startswith("WEIGHTWARDEN_")} | {"LANG": "C"}
DATA = [
    "policies/monitor-only.yaml", "policies/single-gpu-host.yaml", "policies/training-node.yaml",
    "policies/inference-host.yaml", "policies/policy.schema.json",
    "systemd/weightwarden-agent.service", "systemd/weightwarden-collector.service",
    "collector/web/templates/base.html", "collector/web/templates/alert.html", "collector/web/static/console.css",
    "collector/web/static/console.js", "agent/attribution/ebpf/bpf/build/weightwarden.bpf.o", "py.typed",
]


class Failed(Exception):
    pass


def ok(what: str) -> None:
    print(f"smoke: ok  {what}", flush=True)


def check(cond: object, what: str) -> None:
    if not cond:
        raise Failed(what)


def run(argv: list[str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=ENV, check=False)


def command(bin_dir: Path | None, cli: str) -> list[str]:
    """The console script when the install has them, else the package's __main__."""
    if bin_dir is not None:
        return [str(bin_dir / f"weightwarden-{cli}")]
    return [sys.executable, "-m", f"weightwarden.{cli}"]


def modules() -> Iterator[str]:
    import weightwarden

    yield "weightwarden"
    for info in pkgutil.walk_packages(weightwarden.__path__, "weightwarden."):
        if not info.name.endswith(".__main__"):  # running them is what the CLI checks do
            yield info.name


def check_imports(prefix: Path) -> Path:
    import weightwarden

    pkg = Path(weightwarden.__file__).resolve().parent
    check(pkg.is_relative_to(prefix.resolve()), f"weightwarden imported from {pkg}, not from under {prefix}")
    names = list(modules())
    for name in names:
        try:
            importlib.import_module(name)
        except Exception as exc:  # noqa: BLE001 - the failure is the finding
            raise Failed(f"import {name}: {exc!r}") from None
    check(len(names) > 100, f"only {len(names)} modules found: the package is incomplete")
    ok(f"{len(names)} modules import, from {pkg}")
    return pkg


def check_data(pkg: Path) -> None:
    missing = [d for d in DATA if not (pkg / d).is_file()]
    check(not missing, f"package data missing: {missing}")
    from weightwarden.agent.attribution.ebpf.loader import loader_path

    loader = loader_path()
    check(loader.resolve().is_relative_to(pkg), f"the agent looks for its loader at {loader}, outside the package")
    check(loader.is_file() and os.access(loader, os.X_OK), f"the eBPF loader {loader} is missing or not executable")
    ok(f"package data ({len(DATA)} files) and the eBPF loader {loader}")


def subcommands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    for action in parser._actions:  # argparse keeps subparsers here, nowhere public
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield (*path, name)
                yield from subcommands(sub, (*path, name))


def check_helps(bin_dir: Path | None, every: bool) -> None:
    from weightwarden.agent.cli.main import build_parser as agent_parser
    from weightwarden.collector.cli.main import build_parser as collector_parser

    n = 0
    for cli, parser in (("agent", agent_parser()), ("collector", collector_parser())):
        paths: list[tuple[str, ...]] = [()] + (list(subcommands(parser)) if every else [])
        for path in paths:
            res = run([*command(bin_dir, cli), *path, "--help"])
            check(res.returncode == 0 and "usage:" in res.stdout,
                  f"weightwarden-{cli} {' '.join(path)} --help: exit {res.returncode} {res.stderr[-500:]}")
            n += 1
    ok(f"--help of {n} commands")


def check_ebpf(bin_dir: Path | None, pkg: Path) -> None:
    res = run([*command(bin_dir, "agent"), "top", "--json", "--count", "1", "--interval", "1"], timeout=120)
    check(res.returncode == 0, f"top --json --count 1: exit {res.returncode}: {res.stderr[-1500:]}")
    sample = json.loads(res.stdout.splitlines()[-1])
    check(sample.get("attribution") == "ebpf", f"top ran on {sample.get('attribution')!r}, not ebpf: {res.stderr[-1500:]}")
    ok("agent top --json --count 1 on the eBPF path, loader from " + str(pkg))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(pred: Callable[[], bool], timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.2)
    return pred()


def listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def http_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=3) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


def check_stack(bin_dir: Path | None, pkg: Path) -> None:
    """Broker, collector and agent in a namespace of their own (`unshare --net`: loopback only), so the
    agent's run touches no firewall or qdisc of this machine."""
    if os.environ.get("WW_SMOKE_IN_NETNS") != "1":
        res = subprocess.run(["unshare", "--net", "--", "sh", "-c", 'ip link set lo up && exec "$@"', "sh",
                              sys.executable, __file__, "--prefix", str(pkg), *(["--bin", str(bin_dir)] if bin_dir else []),
                              "--stack"], env={**os.environ, "WW_SMOKE_IN_NETNS": "1"}, timeout=300, check=False)
        check(res.returncode == 0, "the stack check failed (above)")
        return
    mosquitto = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    work = Path(tempfile.mkdtemp(prefix="ww-smoke-"))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        port, health = free_port(), free_port()
        (work / "mosquitto.conf").write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\nuser root\n")
        procs.append(subprocess.Popen([mosquitto, "-c", str(work / "mosquitto.conf")], stderr=subprocess.DEVNULL))
        check(wait_for(lambda: listening(port) or procs[0].poll() is not None, 10)
              and procs[0].poll() is None, "mosquitto did not start")
        db = f"sqlite:///{work}/collector.db"
        with open(work / "collector.log", "wb") as clog:
            procs.append(subprocess.Popen([*command(bin_dir, "collector"), "run", "--broker", f"mqtt://127.0.0.1:{port}",
                                           "--db", db, "--health-listen", f"127.0.0.1:{health}"], stderr=clog, env=ENV))
        check(wait_for(lambda: http_status(f"http://127.0.0.1:{health}/readyz") == 200, 30),
              "collector run did not become ready: " + (work / "collector.log").read_text()[-1500:])
        ok("collector run: subscribed to a real Mosquitto, /readyz 200")
        with open(work / "agent.log", "wb") as alog:
            procs.append(subprocess.Popen([*command(bin_dir, "agent"), "run", "--policy",
                                           str(pkg / "policies" / "monitor-only.yaml"), "--sink", f"mqtt://127.0.0.1:{port}",
                                           "--state-dir", str(work / "agent"), "--host-id", "wheel-smoke",
                                           "--heartbeat-interval", "1", "--attribution", "nfqueue", "--no-nfqueue"],
                                          stdout=subprocess.DEVNULL, stderr=alog, env=ENV))

        def stored() -> bool:
            res = run([*command(bin_dir, "collector"), "hosts", "--json", "--db", db])
            return res.returncode == 0 and any(h.get("host") == "wheel-smoke" for h in json.loads(res.stdout or "[]"))

        check(wait_for(stored, 40), "the collector never stored the agent's events: "
              + (work / "agent.log").read_text()[-1500:] + (work / "collector.log").read_text()[-1500:])
        ok("agent run -> Mosquitto -> collector run: the host is stored")
        for proc, name in ((procs[2], "agent"), (procs[1], "collector")):
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(timeout=30)
            check(code == 0, f"{name} exited {code} on SIGTERM")
        ok("agent and collector stop with exit 0")
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
        shutil.rmtree(work, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prefix", type=Path, required=True, help="where weightwarden must be imported from")
    ap.add_argument("--bin", type=Path, default=None, help="the console scripts' folder (default: python -m)")
    ap.add_argument("--all-helps", action="store_true")
    ap.add_argument("--ebpf", action="store_true")
    ap.add_argument("--stack", action="store_true")
    args = ap.parse_args()
    try:
        if os.environ.get("WW_SMOKE_IN_NETNS") == "1":
            check_stack(args.bin, args.prefix)
            return 0
        pkg = check_imports(args.prefix)
        check_data(pkg)
        check_helps(args.bin, args.all_helps)
        if args.ebpf:
            check_ebpf(args.bin, pkg)
        if args.stack:
            check_stack(args.bin, pkg)
    except Failed as exc:
        print(f"smoke: FAILED {exc}", file=sys.stderr)
        return 1
    print("smoke: passed", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
