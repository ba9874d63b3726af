"""Apply, read back and clear our htb trees (root handle 7757:).

Changes go through the tc CLI as argv lists (the plan prints as commands an
operator can read); state is read back over netlink with pyroute2, because
Debian 12's ``tc -j`` prints no JSON for htb classes. tc has no transaction
across commands: we stop at the first error and the reconciler retries.
"""

from __future__ import annotations

from typing import NotRequired, TypedDict

from pyroute2 import IPRoute

from weightwarden.agent.enforce.kernel import run
from weightwarden.agent.enforce.plan import TC_MAJOR, Plan

ROOT = f"{TC_MAJOR:x}:"
ROOT_HANDLE = TC_MAJOR << 16
TC_H_ROOT = 0xFFFFFFFF


class TcQdisc(TypedDict):
    handle: str
    parent: str  # "root" or MAJOR:MINOR
    kind: str | None


class TcClass(TypedDict):
    classid: str
    kind: str | None
    rate_bps: int
    ceil_bps: int
    buffer: int | None
    cbuffer: int | None


class TcState(TypedDict):
    """Our tree on one interface, without counters (both keys absent: the interface is gone)."""

    qdiscs: NotRequired[list[TcQdisc]]
    classes: NotRequired[list[TcClass]]


def _fmt(handle: int) -> str:
    return f"{handle >> 16:x}:{handle & 0xFFFF:x}"


def _index(ipr: IPRoute, iface: str) -> int | None:
    found = ipr.link_lookup(ifname=iface)
    return found[0] if found else None


def read_interface(iface: str) -> TcState:
    """Our qdiscs and classes on ``iface`` without counters; {} if the interface is gone."""
    with IPRoute() as ipr:
        idx = _index(ipr, iface)
        if idx is None:
            return {}
        qdiscs: list[TcQdisc] = [
            {"handle": _fmt(q["handle"]), "parent": "root" if q["parent"] == TC_H_ROOT else _fmt(q["parent"]),
             "kind": q.get_attr("TCA_KIND")}
            for q in ipr.get_qdiscs(idx)
            if q["parent"] == TC_H_ROOT or q["parent"] >> 16 == TC_MAJOR
        ]
        classes: list[TcClass] = []
        for c in ipr.get_classes(idx):
            if c["handle"] >> 16 != TC_MAJOR:
                continue
            parms = dict((c.get_attr("TCA_OPTIONS") or {}).get("attrs", [])).get("TCA_HTB_PARMS", {})
            classes.append({
                "classid": _fmt(c["handle"]),
                "kind": c.get_attr("TCA_KIND"),
                "rate_bps": int(parms.get("rate", 0)) * 8,
                "ceil_bps": int(parms.get("ceil", 0)) * 8,
                "buffer": parms.get("buffer"),
                "cbuffer": parms.get("cbuffer"),
            })
    return {"qdiscs": sorted(qdiscs, key=lambda q: q["handle"]), "classes": sorted(classes, key=lambda c: c["classid"])}


def class_stats(iface: str) -> dict[str, dict[str, int]]:
    """Bytes, packets, drops and overlimits per class id of our tree."""
    out: dict[str, dict[str, int]] = {}
    with IPRoute() as ipr:
        idx = _index(ipr, iface)
        if idx is None:
            return out
        for c in ipr.get_classes(idx):
            if c["handle"] >> 16 != TC_MAJOR:
                continue
            stats = c.get_attr("TCA_STATS") or {}
            out[_fmt(c["handle"])] = {k: int(stats.get(k, 0)) for k in ("bytes", "packets", "drop", "overlimits")}
    return out


def ours(iface: str) -> bool:
    with IPRoute() as ipr:
        idx = _index(ipr, iface)
        if idx is None:
            return False
        return any(q["parent"] == TC_H_ROOT and q["handle"] == ROOT_HANDLE for q in ipr.get_qdiscs(idx))


def apply(iface: str, commands: list[list[str]]) -> None:
    """Put our tree on ``iface`` in place (``replace``: the root and each class are changed, not
    rebuilt, so a failure half-way leaves the previous caps in force, never none), then drop the
    classes of caps the plan no longer has. Runs only when the plan changed or drift was found."""
    present = ours(iface)
    for argv in commands:
        if argv[1] == "qdisc" and present:
            continue  # our htb root is there, and htb has nothing of its own to change
        run(argv)
    wanted = {argv[argv.index("classid") + 1] for argv in commands if "classid" in argv}
    for cls in read_interface(iface).get("classes", []):
        if cls["classid"] not in wanted:
            run(["tc", "class", "del", "dev", iface, "classid", cls["classid"]], check=False)


def apply_plan(plan: Plan) -> None:
    """The plan's htb tree on each policy interface (before any rule steers packets into it)."""
    for iface, commands in plan.tc.items():
        apply(iface, commands)


def read_interfaces(interfaces: list[str]) -> dict[str, TcState]:
    return {i: read_interface(i) for i in interfaces}


def interfaces_with_ours() -> list[str]:
    with IPRoute() as ipr:
        names = [link.get_attr("IFLA_IFNAME") for link in ipr.get_links()]
    return [n for n in names if n and ours(n)]


def clear() -> list[str]:
    """Remove our root qdisc from every interface that has it; returns their names."""
    cleared = []
    for iface in interfaces_with_ours():
        run(["tc", "qdisc", "del", "dev", iface, "root"])
        cleared.append(iface)
    return cleared
