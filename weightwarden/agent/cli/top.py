"""``weightwarden-agent top``: sample every interval, print a table or one JSON line per sample."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time

from weightwarden import logs
from weightwarden.agent.attribution.nfqueue import rules as resolve_rules
from weightwarden.agent.attribution.sampler import Sampler, SamplerConfig
from weightwarden.agent.cli.exits import EXIT_FAIL, EXIT_OK, pin_dir
from weightwarden.agent.cli.topview import TopState


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
    cfg = SamplerConfig(resolve_with_nfqueue=not args.no_nfqueue, queue_num=args.queue_num,
                        attribution=args.attribution, bpf_cgroup=args.bpf_cgroup,
                        bpf_pin_dir=pin_dir(args.bpf_pin_dir))
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
    sensor = sampler.sensor()
    (log.warning if sensor.degraded else log.info)("sensor", **sensor.model_dump(mode="json", exclude_none=True))
    log.info("attribution", path=sampler.attribution)
    view = TopState()
    done = 0
    interactive = sys.stdout.isatty() and not args.json
    try:
        deadline = time.monotonic()
        while not stop["now"] and (args.count is None or done < args.count):
            deadline += args.interval
            time.sleep(max(0.0, deadline - time.monotonic()))
            sample = sampler.sample().to_json()
            for event in sampler.take_events():
                # top publishes nothing: what the sensor raised (tampering, packet sockets, unexplained bytes)
                # is said on stderr.
                log.warning(event.TYPE, **event.model_dump(mode="json", exclude_none=True))
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
