"""``weightwarden-agent sensor probe|uninstall``: which eBPF programs this kernel accepts; remove the pins."""

from __future__ import annotations

import argparse
import json
import sys

from weightwarden.agent.cli.exits import EXIT_FAIL, EXIT_OK, EXIT_USAGE, pin_dir


def cmd_sensor_probe(args: argparse.Namespace) -> int:
    from weightwarden.agent.attribution.ebpf.loader import probe_programs

    found = probe_programs()
    if args.json:
        print(json.dumps({"error": found.error, "programs": {name: {"on": p.on, **({"reason": p.reason} if p.reason
                                                                                 else {})}
                                                              for name, p in found.programs.items()}}))
    elif found.error:
        print(f"the eBPF sensor cannot load here: {found.error}")
    else:
        for name, p in found.programs.items():
            print(f"{name:<16} {'loads' if p.on else 'refused: ' + (p.reason or '?')}")
    return EXIT_FAIL if found.error else EXIT_OK


def cmd_sensor_uninstall(args: argparse.Namespace) -> int:
    from weightwarden.agent.attribution.ebpf.loader import unpin

    pins = pin_dir(args.bpf_pin_dir)
    if pins is None:
        print("weightwarden-agent: --bpf-pin-dir none: nothing to remove", file=sys.stderr)
        return EXIT_USAGE
    done, text = unpin(pins)
    print(text, file=sys.stdout if done else sys.stderr)
    return EXIT_OK if done else EXIT_FAIL
