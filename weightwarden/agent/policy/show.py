"""A loaded policy for people: the merged document with the file that set each value, and its rates. Pure."""

from __future__ import annotations

from typing import Any

import yaml

from weightwarden.agent.enforce.plan import default_burst
from weightwarden.agent.policy.loader import LoadedPolicy
from weightwarden.units import format_duration, format_rate_both, format_size


def _flow(value: Any) -> str:
    text: str = yaml.safe_dump([value], default_flow_style=True, width=10**6, allow_unicode=True).strip()
    return text[1:-1]


def _dotted(path: tuple[object, ...]) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def merged_yaml(loaded: LoadedPolicy) -> str:
    """The merged policy as YAML, each value followed by '# file:line' where it was set."""
    rows: list[tuple[str, str]] = []

    def src(path: tuple[object, ...]) -> str:
        return loaded.sources.get(_dotted(path), "")

    def walk(value: Any, path: tuple[object, ...], indent: str, first_prefix: str | None = None) -> None:
        prefix = first_prefix if first_prefix is not None else indent
        if isinstance(value, dict):
            if not value:
                return
            for n, (key, item) in enumerate(value.items()):
                head = prefix if n == 0 else indent
                sub = (*path, key)
                if isinstance(item, dict) and item or isinstance(item, list) and any(isinstance(i, dict) for i in item):
                    rows.append((f"{head}{key}:", ""))
                    walk(item, sub, indent + "  ")
                else:
                    rows.append((f"{head}{key}: {_flow(item)}", src(sub)))
        elif isinstance(value, list):
            for i, item in enumerate(value):
                sub = (*path, i)
                if isinstance(item, dict):
                    walk(item, sub, indent + "  ", first_prefix=indent + "- ")
                else:
                    rows.append((f"{indent}- {_flow(item)}", src(sub)))
        else:
            rows.append((f"{prefix}{_flow(value)}", src(path)))

    walk(loaded.data, (), "")
    width = min(max((len(text) for text, where in rows if where), default=0) + 2, 72)
    return "\n".join(f"{text:<{width}}# {where}" if where else text for text, where in rows)


def rates(loaded: LoadedPolicy) -> list[str]:
    """Every rate, size and window of the policy in plain units, rates in bits and bytes."""
    spec = loaded.policy.spec
    out = []
    for cap in spec.caps:
        if cap.action == "block":
            out.append(f"cap {cap.name!r}: block (its rate is not used)")
            continue
        burst = cap.burst if cap.burst is not None else default_burst(cap.rate)
        out.append(f"cap {cap.name!r}: {cap.action} at {format_rate_both(cap.rate)} link-layer, burst "
                   f"{format_size(burst)}")
    for b in spec.budgets:
        out.append(f"budget {b.name!r}: {format_size(b.bytes)} per {format_duration(b.window)}, then {b.action} "
                   f"(on average {format_rate_both(float(f'{b.bytes * 8 / b.window:.3g}'))})")
    for t in spec.thresholds:
        out.append(f"threshold {t.name!r}: {format_size(t.bytes)} from one process within "
                   f"{format_duration(t.window)} ({t.severity})")
    return out
