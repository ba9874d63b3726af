"""What the eBPF sensor can see on this kernel: capabilities as data, from the programs the loader loaded.

Each capability names the programs it needs (weightwarden.bpf.c) and says what is lost without
them. ``expected`` ones are programs every supported kernel (5.14 and later, with BTF) should
accept: one that is off makes the sensor *degraded*. The others (fentry and bpf LSM programs,
pinning) depend on how the kernel was built or booted, and are reported without degrading it.
Pure: the loader's READY frame in, a ``SensorState`` out.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from weightwarden.agent.attribution.ebpf.loader import ProgramState, Ready
from weightwarden.agent.attribution.paths import short_reason as _short
from weightwarden.events import SensorFeature, SensorState


@dataclass(frozen=True)
class Capability:
    name: str
    programs: tuple[str, ...]
    expected: bool
    without: str  # what is lost when it is off


CAPABILITIES: tuple[Capability, ...] = (
    Capability("egress_bytes", ("ww_egress",), True, "no bytes per process and destination at all"),
    Capability("socket_owners", ("ww_sock_create",), True, "sockets have no owner until they are written to"),
    Capability("writer_owners", ("ww_send",), True,
               "a socket is credited to the process that opened it, not the one writing (passed or inherited sockets)"),
    Capability("unix_relays", ("ww_send", "ww_recv"), True,
               "bytes handed to other local processes over unix sockets are not seen (relays)"),
    Capability("accepted_flags", ("ww_sockops",), True,
               "replies on connections the peer opened (serving) cannot be told from uploads"),
    Capability("dns_names", ("ww_ingress",), True, "destinations are reported without the name they were looked up by"),
    Capability("packet_sockets", ("ww_packet",), True,
               "AF_PACKET sends (qdisc bypass included) are not credited: only the interface's unexplained bytes show them"),
    Capability("packet_kill", ("ww_packet",), True,
               "raw_sockets action kill cannot stop a sender in the kernel"),
    Capability("packet_kill_before_send", ("ww_lsm",), False,
               "no bpf LSM program: a sender the policy kills is stopped after its first send, not before"),
    Capability("xdp_bytes", ("ww_xdp",), False,
               "AF_XDP frames are not counted per socket (fentry refused): the socket is seen, its bytes show as the "
               "interface's unexplained bytes"),
)


def features(programs: dict[str, ProgramState]) -> dict[str, SensorFeature]:
    out: dict[str, SensorFeature] = {}
    for cap in CAPABILITIES:
        off = [(p, programs.get(p)) for p in cap.programs if not (programs.get(p) or ProgramState(False)).on]
        if not off:
            out[cap.name] = SensorFeature(on=True)
            continue
        name, state = off[0]
        why = state.reason if state is not None and state.reason else "not loaded"
        out[cap.name] = SensorFeature(on=False, reason=_short(f"{name}: {why}: {cap.without}"))
    return out


def degraded(feats: dict[str, SensorFeature]) -> bool:
    return any(not feats[c.name].on for c in CAPABILITIES if c.expected and c.name in feats)


def state(ready: Ready, programs: dict[str, ProgramState] | None = None, extra: dict[str, SensorFeature] | None = None,
          detail: str | None = None) -> SensorState:
    """The sensor as the loader reported it (``programs``: its programs now, if some were lost since)."""
    feats = features(programs if programs is not None else ready.programs)
    pin = ready.pin
    if pin.on:
        feats["pinned"] = SensorFeature(on=True)
    elif pin.reason:
        feats["pinned"] = SensorFeature(on=False, reason=_short(f"{pin.reason}: an agent restart loses what is sent "
                                                                 "while it restarts"))
    feats.update(extra or {})
    off = sorted(name for name, f in feats.items() if not f.on)
    summary = f"eBPF on {ready.cgroup or 'the cgroup hierarchy'}: {len(feats) - len(off)} of {len(feats)} " \
              f"capabilities on" + (f"; off: {', '.join(off)}" if off else "")
    return SensorState(path="ebpf", kernel=os.uname().release, features=feats, degraded=degraded(feats),
                       detail=_short(detail or summary))

