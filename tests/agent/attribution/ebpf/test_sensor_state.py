"""The sensor's report from the loader's frames (pure): capabilities on or off with the kernel's words,
degraded only when a capability every supported kernel has is off; tamper and READY frames decoded."""

from __future__ import annotations

import json
import struct

from weightwarden.agent.attribution.ebpf import sensor, wire
from weightwarden.agent.attribution.ebpf.loader import ProgramState, Ready, Tamper, raw_command
from weightwarden.events import SensorState

ALL = ("ww_egress", "ww_sock_create", "ww_sockops", "ww_ingress", "ww_send", "ww_recv", "ww_packet", "ww_xdp", "ww_lsm")
EPERM = "BPF program load failed: Operation not permitted"


def _ready(off: dict[str, str], pin: dict[str, object] | None = None) -> Ready:
    doc = {"cgroup": "/sys/fs/cgroup", "epoch": 1, "notes": [],
           "programs": {p: ({"on": False, "reason": off[p]} if p in off else {"on": True}) for p in ALL},
           "pin": pin or {"on": False}}
    return Ready.parse(json.dumps(doc))


def test_extras_the_kernel_forbids_are_said_but_do_not_degrade() -> None:
    state = sensor.state(_ready({"ww_xdp": EPERM, "ww_lsm": EPERM}))
    SensorState.model_validate(state.model_dump())
    assert state.path == "ebpf" and not state.degraded
    assert not state.features["xdp_bytes"].on and EPERM in (state.features["xdp_bytes"].reason or "")
    assert state.features["packet_kill"].on and not state.features["packet_kill_before_send"].on
    assert all(state.features[c].on for c in ("egress_bytes", "unix_relays", "dns_names", "packet_sockets"))


def test_a_refused_program_names_the_capability_and_the_verifiers_words() -> None:
    words = "R2 type=untrusted_ptr_ expected=ptr_, trusted_ptr_, rcu_ptr_ (at receiver = bpf_sk_storage_get(...))"
    state = sensor.state(_ready({"ww_send": words}))
    assert state.degraded
    for cap in ("writer_owners", "unix_relays"):  # both need ww_send
        reason = state.features[cap].reason or ""
        assert not state.features[cap].on and reason.startswith("ww_send: R2 type=untrusted_ptr_")
    assert state.features["dns_names"].on
    assert "off: unix_relays, writer_owners" in (state.detail or "")


def test_pinning_asked_for_but_impossible_is_a_feature_off() -> None:
    state = sensor.state(_ready({}, {"on": False, "reason": "/x is not on a bpf filesystem"}))
    assert not state.features["pinned"].on and "bpf filesystem" in (state.features["pinned"].reason or "")
    assert not state.degraded
    assert sensor.state(_ready({}, {"on": True, "dir": "/sys/fs/bpf/ww", "reused": True})).features["pinned"].on


def test_long_verifier_logs_are_shortened() -> None:
    state = sensor.state(_ready({"ww_ingress": "x " * 2000}))
    assert len(state.features["dns_names"].reason or "") <= 400


def test_ready_and_tamper_frames_decode_and_garbage_does_not_raise() -> None:
    ready = _ready({"ww_lsm": EPERM}, {"on": True, "dir": "/p", "reused": True})
    assert ready.programs["ww_lsm"] == ProgramState(False, EPERM) and ready.pin.reused and ready.pin.dir == "/p"
    assert Ready.parse("not json").programs == {}
    t = Tamper.parse(json.dumps({"changes": [{"kind": "link_detached", "name": "ww_egress", "detail": "gone"}],
                                 "reattached": True, "detected_ns": 5, "ok_ns": 2}))
    assert t is not None and t.changes[0].kind == "link_detached" and t.reattached and (t.detected_ns, t.ok_ns) == (5, 2)
    assert Tamper.parse("{") is None and Tamper.parse('{"changes": [{"name": 1}]}') is None


def test_raw_policy_line() -> None:
    assert raw_command(True, [(8388609, 42), (8388609, 42), (1, 2)]) == b"raw kill 1:2 8388609:42\n"
    assert raw_command(False, []) == b"raw alert\n"


def test_raw_and_totals_records() -> None:
    owner = wire.OWNER.pack(77, 1, 0, wire.OWNED, 5, 6, 3, 9, 8, 0, 0, b"sender".ljust(16, b"\0"))
    rec = wire.RAW_KEY.pack(11, 77, 0) + owner + wire.RAW_TAIL.pack(
        1234, 3, wire.AF_PACKET, wire.SOCK_RAW, 0x0800, 0, wire.RAW_BYPASS | wire.RAW_KILLED | wire.RAW_BOUND, 15140, 10,
        1, 2)
    assert wire.RAW_SIZE == 16 + 80 + 56  # struct ww_raw_key + struct ww_raw
    (r,) = wire.parse_raw(rec + b"\0" * 5)
    assert (r.owner.tgid, r.ino, r.ifindex, r.protocol, r.bytes, r.packets) == (77, 1234, 3, 0x0800, 15140, 10)
    assert r.bypass and r.killed and not r.allowed
    assert wire.parse_totals(struct.pack("<QQQQ", 10, 520, 10, 0)) == wire.Totals(10, 520, 10)
    assert wire.parse_totals(b"") == wire.Totals()
