"""The attribution path: one interface, and a registry of the paths by name.

A path answers "who sent what" for one interval at a time; the sampler owns
the rest (interfaces, process descriptions, containers, DNS names, bounds).
Two paths ship: ``ebpf`` (kernel programs on a cgroup: every network namespace)
and ``nfqueue`` (sock_diag, conntrack and an NFQUEUE owner lookup: this
namespace only; it calls itself ``sample-time`` when it has no queue).

Adding a path is one module that registers a factory under its name here
(``register``) and passes ``tests/agent/attribution/test_path_conformance.py``;
``_builtin`` names the modules that ship, so importing this module does not
load eBPF or netfilter code until a path is asked for.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from weightwarden.agent.attribution.dns import NameCache
from weightwarden.agent.attribution.report import PathInterval
from weightwarden.agent.kernel.features import Feature
from weightwarden.agent.kernel.procmap import ProcessTable
from weightwarden.events import Payload, SensorState

REASON_MAX = 400


def short_reason(text: str | None) -> str | None:
    """A reason as the sensor reports it: one line, at most REASON_MAX characters."""
    if text is None:
        return None
    text = " ".join(text.split())
    return text if len(text) <= REASON_MAX else text[:REASON_MAX - 1] + "…"


class PathUnavailable(Exception):
    """This path cannot run here; the message says why in a sentence (the kernel's words included)."""


@dataclass(frozen=True)
class RawPolicy:
    """raw_sockets of the policy, resolved on this host: the action for packet-socket senders that are not
    allowed, and the allowed executables as paths and as the kernel names their files (dev, inode)."""

    kill: bool = False
    allow: tuple[str, ...] = ()
    files: tuple[tuple[int, int], ...] = ()


@dataclass
class PathContext:
    """What every path is given: shared tables, this host's addresses, and the configuration."""

    procs: ProcessTable
    names: NameCache
    local: Callable[[], set[str]]  # this host's own addresses, kept fresh by the sampler
    admin: bool = True  # CAP_NET_ADMIN
    proc_root: str = "/proc"
    queue_num: int = 4242
    manage_rules: bool = True
    resolve_with_nfqueue: bool = True
    bpf_cgroup: str | None = None  # the cgroup the eBPF programs attach to (None: the v2 root)
    bpf_pin_dir: str | None = None  # where the eBPF maps and links are pinned (None: not pinned)
    notes: list[str] = field(default_factory=list)


@runtime_checkable
class AttributionPath(Protocol):
    name: str  # as reported in ``attribution``: ebpf, nfqueue, sample-time

    def start(self) -> list[Feature]:
        """Start measuring; what works and what is missing, one sentence each. Raises PathUnavailable."""
        ...

    def collect(self) -> PathInterval:
        """What was sent since the last call (or since start)."""
        ...

    def sensor(self) -> SensorState:
        """What this path can see now: each capability on or off, with the kernel's reason."""
        ...

    def events(self) -> list[Payload]:
        """Events the path raised since the last call (sensor_tampered), oldest first."""
        ...

    def set_raw_policy(self, policy: RawPolicy) -> None:
        """raw_sockets of the policy in force (a path that cannot act on packet sockets ignores it)."""
        ...

    def close(self) -> None:
        """Stop; safe to call twice, and after a failed start."""
        ...


PathFactory = Callable[[PathContext], AttributionPath]
_FACTORIES: dict[str, PathFactory] = {}
_BUILTIN = ("weightwarden.agent.attribution.ebpf.path", "weightwarden.agent.attribution.nfqueue.path")


def register(name: str) -> Callable[[PathFactory], PathFactory]:
    def add(factory: PathFactory) -> PathFactory:
        if name in _FACTORIES and _FACTORIES[name] is not factory:
            raise ValueError(f"attribution path {name!r} is registered twice")
        _FACTORIES[name] = factory
        return factory

    return add


def _builtin() -> None:
    for module in _BUILTIN:
        importlib.import_module(module)


def names() -> list[str]:
    _builtin()
    return sorted(_FACTORIES)


def create(name: str, ctx: PathContext) -> AttributionPath:
    _builtin()
    try:
        factory = _FACTORIES[name]
    except KeyError:
        raise ValueError(f"no attribution path {name!r} (known: {', '.join(sorted(_FACTORIES))})") from None
    return factory(ctx)
