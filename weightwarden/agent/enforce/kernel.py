"""Running kernel tools: argv lists only, LANG=C, JSON back where the tool offers it."""

from __future__ import annotations

import json
import subprocess

from weightwarden.jsontypes import JsonValue

ENV = {"LANG": "C", "LC_ALL": "C", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}


class KernelError(RuntimeError):
    """A kernel tool refused a change; the message says which command and why."""


def run(argv: list[str], stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    try:
        res = subprocess.run(argv, input=stdin, capture_output=True, text=True, env=ENV, check=False, timeout=60)
    except FileNotFoundError:
        raise KernelError(f"{argv[0]} is not installed") from None
    except subprocess.TimeoutExpired:
        raise KernelError(f"{' '.join(argv[:6])}: no answer in 60 s (a wedged netlink or xtables lock)") from None
    if check and res.returncode != 0:
        raise KernelError(f"{' '.join(argv[:6])}{' ...' if len(argv) > 6 else ''}: {res.stderr.strip()}")
    return res


def run_json(argv: list[str]) -> JsonValue:
    out = run(argv).stdout
    return json.loads(out) if out.strip() else None
