"""The registry of detection rules: every module in ``detect/rules/`` registers its rule here.

As CrowdSec registers each data source by name in its own folder, a rule module ends with
``RULE = register(MyRule())``; :func:`rules` imports every module of the package once, so adding a
rule is one new file. ``tests/collector/test_rules.py`` is the conformance test every registered
rule must pass (its name, kinds, keys, hooks, and what it does with every example event).
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any, TypeVar

from weightwarden.collector.detect.common import Tuning
from weightwarden.collector.detect.keys import AlertKey
from weightwarden.collector.detect.rule import Rule

AnyRule = Rule[Any]
R = TypeVar("R", bound=AnyRule)
_RULES: dict[str, AnyRule] = {}
_LOADED = False


def register(rule: R) -> R:
    """Add ``rule`` under its name (the first part of its alert keys); two rules never share a name."""
    if not rule.name or ":" in rule.name:
        raise ValueError(f"{type(rule).__name__}: a rule's name is one word without ':'")
    if not rule.kinds:
        raise ValueError(f"rule {rule.name!r} names no alert kind")
    other = _RULES.get(rule.name)
    if other is not None and type(other) is not type(rule):
        raise ValueError(f"rule name {rule.name!r} is taken by {type(other).__name__}")
    _RULES[rule.name] = rule
    return rule


def _load() -> None:
    global _LOADED
    if _LOADED:
        return
    from weightwarden.collector.detect import rules as package

    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name):
        importlib.import_module(f"{package.__name__}.{info.name}")
    _LOADED = True


def ordered(found: list[AnyRule]) -> list[AnyRule]:
    """Rules a rule reads the verdicts of (``after``) come before it; otherwise by name."""
    by_name = {r.name: r for r in found}
    out: list[AnyRule] = []
    state: dict[str, int] = {}

    def visit(rule: AnyRule, path: tuple[str, ...]) -> None:
        if state.get(rule.name) == 2:
            return
        if state.get(rule.name) == 1:
            raise ValueError(f"rules depend on each other in a cycle: {' -> '.join((*path, rule.name))}")
        state[rule.name] = 1
        for dep in rule.after:
            if dep not in by_name:
                raise ValueError(f"rule {rule.name!r} comes after {dep!r}, which is not registered")
            visit(by_name[dep], (*path, rule.name))
        state[rule.name] = 2
        out.append(rule)

    for rule in sorted(found, key=lambda r: r.name):
        visit(rule, ())
    return out


def rules() -> list[AnyRule]:
    """Every registered rule, dependencies first."""
    _load()
    return ordered(list(_RULES.values()))


def configured(tune: Tuning) -> list[AnyRule]:
    """Fresh instances of every rule for one engine and its tuning."""
    return [r.configure(tune) for r in rules()]


def rule_of(key: AlertKey) -> AnyRule | None:
    _load()
    return _RULES.get(key.rule)


def kinds() -> dict[str, str]:
    """Alert kind -> the rule that raises it."""
    return {kind: r.name for r in rules() for kind in r.kinds}


__all__ = ["configured", "kinds", "ordered", "register", "rule_of", "rules"]
