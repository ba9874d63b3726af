"""Which host interfaces carry a container's traffic: the kernel side of ``containers:`` cap selectors.

A container with its own network namespace routed through the host (Kubernetes,
Docker bridge, Podman) reaches the world over a veth pair: its packets are
forwarded and enter the host namespace from the host-side veth. At the host's
postrouting hook a forwarded packet still names that input device (``ip_output``
hands ``skb->dev`` as the hook's ``in``), so ``iifname`` matches it there, beside
every other cap. Its socket is gone by then, so uid and cgroup cannot match it.

Resolving a selector: every process whose cgroup path (weightwarden/agent/attribution/containers.py)
matches it is in some network namespace; the host-side veths of that namespace
are the host's links whose peer lives there (``IFLA_LINK_NETNSID`` equal to the
id the host's namespace gives the container's, ``RTM_GETNSID`` on an fd of
``/proc/PID/ns/net``). Both are netlink answers of the kernel, unlike interface
names guessed from a CNI's naming scheme. The matching itself is pure
(:func:`resolve`); :func:`read_host` does the reading, where a process that
vanished or cannot be read is a normal answer, not an error.

Not resolvable, said in notes, never widened: a container in the host's own
namespace (host networking) shares the host's interfaces, so nothing tells its
packets apart from the host's; a namespace with no veth to the host (macvlan,
ipvlan, SR-IOV) sends on its own device, not through the host's forward path.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from weightwarden.agent.attribution import containers
from weightwarden.agent.policy.model import IFNAME, ContainerMatch, Policy
from weightwarden.events import Container


@dataclass(frozen=True)
class ProcNet:
    """One process: its cgroup path and the inode of its network namespace."""

    pid: int
    cgroup: str
    netns: int


@dataclass(frozen=True)
class HostLink:
    """A link of the host's namespace; ``peer_nsid``: the namespace its veth peer is in (None: ours/none)."""

    name: str
    kind: str | None
    peer_nsid: int | None


@dataclass(frozen=True)
class HostView:
    """What resolution reads from the host, once per interval."""

    host_netns: int
    procs: tuple[ProcNet, ...] = ()
    nsids: dict[int, int] = field(default_factory=dict)  # netns inode -> the id the host gives it
    links: tuple[HostLink, ...] = ()
    pod_names: dict[str, tuple[str, str]] = field(default_factory=dict)


@dataclass(frozen=True)
class Resolution:
    """Per cap name: the host-side interfaces of its containers; notes on what could not be resolved."""

    interfaces: dict[str, tuple[str, ...]] = field(default_factory=dict)
    notes: tuple[str, ...] = ()


def matches(sel: ContainerMatch, c: Container | None) -> bool:
    """Every given field must hold; ``id`` may be a prefix (as ``docker ps`` shows 12 characters)."""
    if c is None:
        return False
    return ((sel.id is None or (c.id is not None and c.id.startswith(sel.id)))
            and (sel.runtime is None or c.runtime == sel.runtime)
            and (sel.pod_uid is None or c.pod_uid == sel.pod_uid)
            and (sel.pod_namespace is None or c.pod_namespace == sel.pod_namespace)
            and (sel.pod_name is None or c.pod_name == sel.pod_name))


def _describe(c: Container) -> str:
    return c.id[:12] if c.id else (f"pod {c.pod_uid}" if c.pod_uid else c.cgroup)


def resolve(policy: Policy, view: HostView) -> Resolution:
    """Pure: each container cap's host-side interfaces, from processes, namespace ids and links."""
    caps = [cap for cap in policy.spec.caps if cap.match.containers]
    if not caps:
        return Resolution()
    by_nsid: dict[int, list[str]] = {}
    for link in view.links:
        # Names reach the kernel as data, and iptables-restore as text: only plain interface names.
        if link.peer_nsid is not None and link.kind == "veth" and IFNAME.fullmatch(link.name) \
                and not link.name.endswith("*"):
            by_nsid.setdefault(link.peer_nsid, []).append(link.name)
    out: dict[str, tuple[str, ...]] = {}
    notes: list[str] = []
    for cap in caps:
        names: set[str] = set()
        host_net: set[str] = set()
        unrouted: set[str] = set()
        for proc in view.procs:
            c = containers.with_pod_names(containers.parse(proc.cgroup), view.pod_names)
            if c is None or not any(matches(sel, c) for sel in cap.match.containers):
                continue
            if proc.netns == view.host_netns:
                host_net.add(_describe(c))
                continue
            nsid = view.nsids.get(proc.netns)
            found = by_nsid.get(nsid, []) if nsid is not None else []
            if not found:
                unrouted.add(_describe(c))
            names.update(found)
        out[cap.name] = tuple(sorted(names))
        if host_net:
            notes.append(f"cap {cap.name!r}: container(s) {', '.join(sorted(host_net))} use the host's network "
                         "namespace: their packets cannot be told apart from the host's, so they are not capped")
        if unrouted:
            notes.append(f"cap {cap.name!r}: container(s) {', '.join(sorted(unrouted))} have no veth to the host "
                         "(macvlan, ipvlan or a device of their own): their traffic does not pass the host, not capped")
        if not names and not host_net and not unrouted:
            notes.append(f"cap {cap.name!r}: no running container matches its 'containers' selector: it caps nothing "
                         "until one starts")
    return Resolution(out, tuple(notes))


# -- reading the host (side effects; every read may find a process gone) --------------------------------------


def cgroup_of(text: str) -> str | None:
    """The path that names a container in a /proc/PID/cgroup text: the v2 line ("0::"), or on hybrid and
    v1 hosts (where the runtime may put containers only in v1 hierarchies) the first v1 path that parses
    as a container."""
    v2: str | None = None
    for line in text.splitlines():
        hier, _, rest = line.partition(":")
        _controllers, _, path = rest.partition(":")
        if hier == "0" and _controllers == "":
            v2 = path
            if containers.parse(path) is not None:
                return path
    for line in text.splitlines():
        path = line.split(":", 2)[-1]
        parsed = containers.parse(path)
        if parsed is not None and (parsed.id or parsed.pod_uid):
            return path
    return v2


def read_procs(proc_root: str = "/proc", pids: Iterable[int] | None = None) -> list[ProcNet]:
    out = []
    every = (int(p) for p in os.listdir(proc_root) if p.isdigit())  # noqa: PTH208 - hot path: pathlib costs 2-4x os here on 3.11
    for pid in pids if pids is not None else every:
        try:
            cgroup = cgroup_of(Path(proc_root, str(pid), "cgroup").read_text())
            netns = os.stat(Path(proc_root, str(pid), "ns", "net")).st_ino  # noqa: PTH116 - per pid: hot path: pathlib costs 2-4x os here on 3.11
        except OSError:
            continue  # exited, or not ours to read: normal
        if cgroup:
            out.append(ProcNet(pid, cgroup, netns))
    return out


def read_host(policy: Policy, proc_root: str = "/proc", pod_log_dir: str = "/var/log/pods") -> HostView:
    """One look at the host for :func:`resolve`; only processes in matching containers are asked their
    namespace id (one netlink query per namespace, not per process)."""
    from pyroute2 import IPRoute

    from weightwarden.agent.kernel.cgroupfs import pod_names

    host_netns = Path(proc_root, "self", "ns", "net").stat().st_ino
    pods = pod_names(pod_log_dir)
    selectors = [sel for cap in policy.spec.caps for sel in cap.match.containers]
    procs = [p for p in read_procs(proc_root)
             if any(matches(sel, containers.with_pod_names(containers.parse(p.cgroup), pods)) for sel in selectors)]
    nsids: dict[int, int] = {}
    links: list[HostLink] = []
    with IPRoute() as ipr:
        for proc in procs:
            if proc.netns == host_netns or proc.netns in nsids:
                continue
            try:
                fd = os.open(Path(proc_root, str(proc.pid), "ns", "net"), os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                continue
            try:
                answer = ipr.get_netnsid(fd=fd)
            except Exception:  # noqa: BLE001 - a namespace that went away between the reads
                answer = None
            finally:
                os.close(fd)
            nsid = (answer or {}).get("nsid")
            if isinstance(nsid, int) and nsid >= 0:  # -1: the host holds no id for it, so no link to it
                nsids[proc.netns] = nsid
        if nsids:
            for msg in ipr.get_links():
                info = msg.get_attr("IFLA_LINKINFO")
                links.append(HostLink(str(msg.get_attr("IFLA_IFNAME")),
                                      info.get_attr("IFLA_INFO_KIND") if info is not None else None,
                                      msg.get_attr("IFLA_LINK_NETNSID")))
    return HostView(host_netns, tuple(procs), nsids, tuple(links), pods)


def resolve_host(policy: Policy) -> Resolution:
    """Read and resolve; a policy with no container selector reads nothing."""
    if not any(cap.match.containers for cap in policy.spec.caps):
        return Resolution()
    return resolve(policy, read_host(policy))
