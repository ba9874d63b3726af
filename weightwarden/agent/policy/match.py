"""Which traffic a policy exempts and which cap takes it: the one definition. Pure.

The enforcer's plan (nft and iptables) and the simulator both start from what
this module compiles: the allowlist as networks with optional ports, and each
cap's match as a :class:`Selector`. A cap whose selector this kernel cannot
enforce (``enforce/selectors.py``) is marked not enforced: the plan leaves it
out and the simulation gives it no traffic, so neither credits a cap with what
the kernel cannot do.
The plan turns selectors into rules; :func:`classify` answers the same question
for one recorded flow, in the same order the rules are evaluated: allowlist
first, then caps in policy order, where an ``alert`` cap counts and goes on and
a ``shape`` or ``block`` cap ends the walk.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field

from weightwarden.agent.attribution.containers import parse as container_of
from weightwarden.agent.enforce.container_links import matches as container_matches
from weightwarden.agent.enforce.selectors import KernelSupport, refused_caps
from weightwarden.agent.policy.model import Cap, ContainerMatch, Destination, Policy

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class Net:
    """A destination range, optionally only some ports (empty: every port)."""

    network: Network
    ports: tuple[int, ...] = ()
    entry: int = field(default=0, compare=False)  # which destination of its list it came from

    def contains(self, ip: Address | None, port: int | None) -> bool:
        if ip is None or ip.version != self.network.version or ip not in self.network:
            return False
        return not self.ports or port in self.ports


@dataclass(frozen=True)
class Features:
    """What this host's kernel path can match on."""

    cgroupv2_paths: bool = True  # nft 'socket cgroupv2' needs the unified hierarchy at /sys/fs/cgroup


@dataclass(frozen=True)
class Selector:
    """A cap's match as enforced: every non-empty field must hold (empty: any)."""

    uids: tuple[int, ...] = ()
    cgroups: tuple[str, ...] = ()  # normalised: no leading or trailing "/"
    executables: tuple[str, ...] = ()
    nets: tuple[Net, ...] | None = None  # None: any destination; (): the hosts did not resolve, nothing
    notes: tuple[str, ...] = ()
    containers: tuple[ContainerMatch, ...] = ()
    # The host-side interfaces the containers' packets come in by (enforce/container_links.py): None for a
    # cap without a container selector; (): none of its containers runs with a veth to the host, it matches nothing.
    iifnames: tuple[str, ...] | None = None

    @property
    def any_process(self) -> bool:
        return not (self.uids or self.cgroups or self.executables or self.containers)

    def matches(self, flow: Flow) -> bool:
        if self.uids and flow.uid not in self.uids:
            return False
        if self.cgroups and not any(cgroup_contains(c, flow.cgroup) for c in self.cgroups):
            return False
        if self.executables and flow.exe not in self.executables:
            return False
        # A replay knows the sender's cgroup, not its interface: the container is judged from the path.
        if self.containers and not any(container_matches(sel, container_of(flow.cgroup)) for sel in self.containers):
            return False
        if self.nets is None:
            return True
        ip = flow.ip
        return any(n.contains(ip, flow.port) for n in self.nets)


@dataclass(frozen=True)
class Flow:
    """Bytes to one destination from one process, as a sample records them; None: not known."""

    address: str | None = None
    port: int | None = None
    uid: int | None = None
    exe: str | None = None
    cgroup: str | None = None

    @property
    def ip(self) -> Address | None:
        if self.address is None:
            return None
        try:
            return ipaddress.ip_address(self.address)
        except ValueError:
            return None


@dataclass(frozen=True)
class CompiledCap:
    index: int
    cap: Cap
    selector: Selector
    enforced: bool = True  # False: a selector this kernel cannot match; the plan leaves the cap out

    @property
    def terminal(self) -> bool:
        return self.cap.action in ("shape", "block")


@dataclass(frozen=True)
class Compiled:
    allow: tuple[Net, ...]
    caps: tuple[CompiledCap, ...]
    notes: tuple[str, ...] = ()
    # What any rule looks at; a replay blanks the rest out of its cache keys, so flows that no rule can tell
    # apart (a server's thousand client ports) are classified once.
    ports: frozenset[int] = frozenset()
    uses_uid: bool = False
    uses_exe: bool = False
    uses_cgroup: bool = False

    def process_key(self, uid: int | None, exe: str | None, cgroup: str | None) -> tuple[int | None, str | None, str | None]:
        """(uid, exe, cgroup) with what no selector asks left out (None): the key a replay caches verdicts by."""
        return (uid if self.uses_uid else None, exe if self.uses_exe else None,
                cgroup if self.uses_cgroup else None)

    def port_key(self, port: int | None) -> int | None:
        return port if port in self.ports else None


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    alerts: tuple[int, ...] = ()  # alert caps that counted the flow on the way
    cap: int | None = None  # the shape or block cap that took it
    allow_index: int | None = None  # which allow entry exempted it
    matched: tuple[int, ...] = field(default=())  # every cap that saw it (alerts, then the terminal one)


def cgroup_path(path: str) -> str:
    return path.strip("/")


def cgroup_level(path: str) -> int:
    return len([p for p in cgroup_path(path).split("/") if p])


def cgroup_contains(ancestor: str, cgroup: str | None) -> bool:
    """nft's 'socket cgroupv2 level N PATH': the socket's cgroup is PATH or below it."""
    if cgroup is None:
        return False
    own = cgroup_path(cgroup)
    return own == ancestor or own.startswith(ancestor + "/")


def networks(dest: Destination, resolved: dict[str, list[str]], entry: int = 0) -> list[Net]:
    """The ranges a destination stands for now; a hostname stands for what it resolved to."""
    addrs = [dest.cidr] if dest.cidr else resolved.get(dest.host or "", [])
    ports = tuple(sorted(set(dest.ports)))
    return [Net(ipaddress.ip_network(addr, strict=False), ports, entry) for addr in addrs]


def by_version(nets: Iterable[Net]) -> tuple[list[str], list[str]]:
    """Sorted, de-duplicated ranges per IP version (for kernel sets)."""
    v4 = sorted({str(n.network) for n in nets if n.network.version == 4})
    v6 = sorted({str(n.network) for n in nets if n.network.version == 6})
    return v4, v6


def allowlist(policy: Policy, resolved: dict[str, list[str]]) -> tuple[Net, ...]:
    return tuple(n for i, dest in enumerate(policy.spec.allow) for n in networks(dest, resolved, i))


def selector(cap: Cap, resolved: dict[str, list[str]],
             container_ifaces: dict[str, tuple[str, ...]] | None = None) -> Selector:
    m = cap.match
    notes: list[str] = []
    nets: tuple[Net, ...] | None = None
    if m.destinations:
        nets = tuple(n for i, dest in enumerate(m.destinations) for n in networks(dest, resolved, i))
        for dest in m.destinations:
            if dest.host and not resolved.get(dest.host):
                notes.append(f"cap {cap.name!r}: host {dest.host!r} did not resolve: the cap does not match it "
                             "until it does")
    iifnames = tuple(sorted((container_ifaces or {}).get(cap.name, ()))) if m.containers else None
    return Selector(tuple(sorted(set(m.uids))), tuple(cgroup_path(c) for c in m.cgroups), tuple(m.executables), nets,
                    tuple(notes), tuple(m.containers), iifnames)


def compile_policy(policy: Policy, resolved: dict[str, list[str]] | None = None,
                   features: Features | None = None,
                   container_ifaces: dict[str, tuple[str, ...]] | None = None) -> Compiled:
    """``container_ifaces``: per cap name, the host-side veths of its containers (enforce/container_links.py)."""
    resolved = resolved or {}
    features = features or Features()
    notes: list[str] = []
    for dest in policy.spec.allow:
        if dest.host and not resolved.get(dest.host):
            notes.append(f"allow host {dest.host!r} did not resolve: it is not exempt until it does")
    # One definition of what this kernel cannot enforce (enforce/selectors.py): such a cap is left out, never
    # widened, so the simulation gives it no traffic either.
    refused = refused_caps(policy, KernelSupport(cgroupv2_paths=features.cgroupv2_paths))
    caps = []
    for i, cap in enumerate(policy.spec.caps):
        sel = selector(cap, resolved, container_ifaces)
        notes.extend(sel.notes)
        enforced = cap.name not in refused
        if not enforced:
            notes.append(f"cap {cap.name!r}: not enforced, its selector cannot be matched in this kernel "
                         "(see `weightwarden-agent policy check`)")
        caps.append(CompiledCap(i, cap, sel, enforced))
    allow = allowlist(policy, resolved)
    sels = [cc.selector for cc in caps if cc.enforced]
    ports = frozenset(p for n in (*allow, *(n for s in sels for n in (s.nets or ()))) for p in n.ports)
    return Compiled(allow, tuple(caps), tuple(notes), ports, any(s.uids for s in sels),
                    any(s.executables for s in sels), any(s.cgroups or s.containers for s in sels))


def allowed_by(allow: tuple[Net, ...], flow: Flow) -> int | None:
    """The index in spec.allow of the entry that exempts this flow, if any."""
    ip = flow.ip
    if ip is None:
        return None
    for net in allow:
        if net.contains(ip, flow.port):
            return net.entry
    return None


def classify(compiled: Compiled, flow: Flow) -> Verdict:
    """What the kernel rules do with this flow, in their order."""
    hit = allowed_by(compiled.allow, flow)
    if hit is not None:
        return Verdict(True, allow_index=hit)
    alerts: list[int] = []
    for cc in compiled.caps:
        if not cc.enforced or not cc.selector.matches(flow):
            continue
        if cc.terminal:
            return Verdict(False, tuple(alerts), cc.index, matched=(*alerts, cc.index))
        alerts.append(cc.index)
    return Verdict(False, tuple(alerts), None, matched=tuple(alerts))
