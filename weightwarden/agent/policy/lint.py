"""Warnings: a valid policy that will not do what it seems to say. Pure, given what the host has.

Errors stop a policy (``loader``); these do not, but ``policy check`` prints
them and ``policy check --strict`` fails on them: an interface pattern that
matches nothing here enforces nothing, a cap behind a catch-all cap never
matches. Cap selectors this kernel cannot enforce are errors (:func:`unenforceable`).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable

from weightwarden.agent.enforce.selectors import KernelSupport, refusals
from weightwarden.agent.files.patterns import GLOB_CHARS, base_dir
from weightwarden.agent.policy.loader import LoadedPolicy, Problem
from weightwarden.agent.policy.match import compile_policy

# Whole system trees: legal, but the watcher marks and rescans all of them every 2 s.
SYSTEM_TREES = {"/usr", "/var", "/home", "/etc", "/opt", "/boot", "/lib", "/lib64", "/bin", "/sbin", "/tmp", "/root",
                "/mnt", "/media", "/snap", "/run", "/srv", "/nix"}


def _at(loaded: LoadedPolicy, path: str, message: str) -> Problem:
    where = loaded.sources.get(path) or ""
    file, _, line = where.rpartition(":")
    layered = len(loaded.files) > 1
    if not line.isdigit():
        file, line = where, ""
    return Problem(path, int(line) if line else None, message, (file or None) if layered else None, "warning")


def lint(loaded: LoadedPolicy) -> list[Problem]:
    """Warnings that need no look at the host."""
    spec = loaded.policy.spec
    out: list[Problem] = []
    for i, path in enumerate(spec.weights.paths):
        base = base_dir(path).rstrip("/")
        if base in SYSTEM_TREES:
            out.append(_at(loaded, f"spec.weights.paths[{i}]", f"{path!r} watches all of {base}: the watcher marks "
                           "and rescans every directory under it every 2 s; name the models' own directory"))
    for i, path in enumerate(spec.weights.canaries):
        if GLOB_CHARS & set(path):
            out.append(_at(loaded, f"spec.weights.canaries[{i}]", f"{path!r}: a canary is one exact file, not a "
                           "pattern; this one never matches"))
    compiled = compile_policy(loaded.policy)
    for cc in compiled.caps:
        earlier = [e for e in compiled.caps[:cc.index]
                   if e.terminal and e.selector.any_process and e.selector.nets is None]
        if earlier:
            out.append(_at(loaded, f"spec.caps[{cc.index}]", f"cap {cc.cap.name!r} never matches: cap "
                           f"{earlier[0].cap.name!r} before it takes all non-allowlisted traffic (caps are tried in "
                           "order)"))
    return out


def host_checks(loaded: LoadedPolicy, interfaces: Iterable[str]) -> list[Problem]:
    """Warnings about this host: interfaces that match nothing."""
    spec = loaded.policy.spec
    names = sorted(n for n in interfaces if n != "lo")
    out: list[Problem] = []
    matched = {p: [n for n in names if fnmatch.fnmatchcase(n, p)] for p in spec.interfaces}
    here = f"({', '.join(names) or 'none'})"
    if spec.interfaces and not any(matched.values()):
        out.append(_at(loaded, "spec.interfaces", f"no interface on this host {here} matches "
                       f"{', '.join(spec.interfaces)}: nothing is enforced here, no cap, no budget"))
    else:
        # A fleet policy lists patterns for several naming schemes ("eth*", "ens*"); an exact name that is
        # missing is more likely a typo.
        for i, pattern in enumerate(spec.interfaces):
            if not matched[pattern] and "*" not in pattern:
                out.append(_at(loaded, f"spec.interfaces[{i}]", f"{pattern!r} is no interface on this host {here}: "
                               "nothing is enforced through it"))
    return out


def unenforceable(loaded: LoadedPolicy, support: KernelSupport) -> list[Problem]:
    """Errors: cap selectors this kernel cannot enforce (enforce/selectors.py), each at its cap's line.
    Such a cap is refused, never quietly widened to the whole host."""
    out = []
    reasons = refusals(loaded.policy, support)
    for i, cap in enumerate(loaded.policy.spec.caps):
        for reason in (r for r in reasons if r.startswith(f"cap {cap.name!r}:")):
            p = _at(loaded, f"spec.caps[{i}].match", reason)
            out.append(Problem(p.path, p.line, reason, p.file, "error"))
    return out


def container_checks(loaded: LoadedPolicy, notes: Iterable[str]) -> list[Problem]:
    """Warnings from resolving container caps on this host now (enforce/container_links.py): containers
    on the host's network or without a veth to the host are not capped, each note at its cap's line."""
    out = []
    notes = list(notes)
    for i, cap in enumerate(loaded.policy.spec.caps):
        for note in (n for n in notes if n.startswith(f"cap {cap.name!r}:")):
            out.append(_at(loaded, f"spec.caps[{i}].match.containers", note))
    out += [_at(loaded, "spec.caps", n) for n in notes if not n.startswith("cap ")]
    return out
