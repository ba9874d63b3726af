"""weightwarden-agent: the command line.

Exit codes: 0 success; 1 a runtime failure (stated on stderr); 2 bad usage.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from collections.abc import Sequence

from agent import __version__, logs, resolve_rules
from agent.sampler import DEFAULT_QUEUE, Sampler, SamplerConfig
from agent.topview import TopState

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2

TOP_EXAMPLES = """examples:
  weightwarden-agent top                          live table, refreshed every second
  weightwarden-agent top --json --interval 1 --count 5
  ip netns exec gpu1 weightwarden-agent top --json --count 3
  weightwarden-agent top --dry-run                print the NFQUEUE rules, change nothing
"""


def _positive(kind: type) -> object:
    def parse(text: str) -> object:
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return value

    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="weightwarden-agent",
        description="Measure and limit what leaves this GPU host.",
        epilog="example: weightwarden-agent top --json --interval 1 --count 5",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"weightwarden-agent {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    top = sub.add_parser(
        "top",
        help="live view of the processes sending the most bytes off this host",
        description="Bytes sent per process and destination, exactly, from kernel counters.",
        epilog=TOP_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    top.add_argument("--json", action="store_true", help="print one JSON object per interval")
    top.add_argument("--interval", type=_positive(float), default=1.0, metavar="S", help="seconds between samples")
    top.add_argument("--count", type=_positive(int), default=None, metavar="N", help="stop after N samples")
    top.add_argument("--no-nfqueue", action="store_true",
                     help="do not hold new flows to name their owner (short-lived senders may go unattributed)")
    top.add_argument("--queue-num", type=int, default=DEFAULT_QUEUE, help="NFQUEUE number (default %(default)s)")
    top.add_argument("--dry-run", action="store_true", help="print the kernel rules top would add, and exit")
    top.add_argument("--limit", type=_positive(int), default=20, help="rows in the table")
    top.set_defaults(func=cmd_top)
    return parser


def cmd_top(args: argparse.Namespace) -> int:
    if args.dry_run:
        plan = resolve_rules.plan(args.queue_num)
        out = {"install": plan.install, "remove": plan.remove}
        if args.json:
            print(json.dumps(out))
        else:
            print("# rules added while top runs (removed on exit):")
            for argv in plan.install:
                print(" ".join(argv))
        return EXIT_OK
    log = logs.get("agent.top")
    cfg = SamplerConfig(resolve_with_nfqueue=not args.no_nfqueue, queue_num=args.queue_num)
    stop = {"now": False}

    def on_signal(_sig: int, _frame: object) -> None:
        stop["now"] = True

    signal.signal(signal.SIGTERM, on_signal)
    sampler = Sampler(cfg)
    try:
        sampler.start()
    except OSError as exc:
        print(f"weightwarden-agent: cannot start the sampler: {exc}", file=sys.stderr)
        sampler.close()
        return EXIT_FAIL
    for feature in sampler.features:
        # Said once, at start: what works, and what is missing and why.
        (log.info if feature.ok else log.warning)("feature", name=feature.name, ok=feature.ok, detail=feature.detail)
    view = TopState()
    done = 0
    interactive = sys.stdout.isatty() and not args.json
    try:
        deadline = time.monotonic()
        while not stop["now"] and (args.count is None or done < args.count):
            deadline += args.interval
            time.sleep(max(0.0, deadline - time.monotonic()))
            sample = sampler.sample().to_json()
            done += 1
            if args.json:
                print(json.dumps(sample), flush=True)
            else:
                text = view.render(sample, args.limit)
                print(("\x1b[H\x1b[2J" if interactive else "") + text + ("" if interactive else "\n"), flush=True)
    except KeyboardInterrupt:
        pass
    except BrokenPipeError:
        sys.stderr.close()
    finally:
        sampler.close()
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    logs.configure()
    parser = build_parser()
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
