"""Packet sockets as raw_socket events (pure): once when first seen, once when killed (with the bytes that
escaped), once a minute while sending; allowlisted by executable; sockets only open are seen too."""

from __future__ import annotations

from weightwarden.agent.attribution.paths import RawPolicy
from weightwarden.agent.attribution.rawsockets import REPEAT_S, RawSockets
from weightwarden.agent.attribution.report import RawUse
from weightwarden.agent.kernel.interfaces import PacketSocket
from weightwarden.agent.kernel.procmap import ProcessInfo


class Clock:
    now = 100.0

    def __call__(self) -> float:
        return self.now


def info(pid: int, exe: str) -> ProcessInfo:
    return ProcessInfo(pid, 1, exe.rsplit("/", 1)[-1], exe, 0, "root", (exe,), "/system.slice/x.service", 50.0)


PROCS = {10: info(10, "/usr/bin/python3.11"), 20: info(20, "/usr/sbin/dhclient")}


def use(pid: int, nbytes: int, **kw: object) -> RawUse:
    base: dict[str, object] = dict(pid=pid, ino=pid * 100, family="packet", socket_type="raw", protocol=0x800,
                                   interface="eth0", ifindex=2, bypass=True, bytes=nbytes, packets=nbytes // 1000)
    base.update(kw)
    return RawUse(**base)  # type: ignore[arg-type]


def run(t: RawSockets, uses: list[RawUse], opened: list[PacketSocket] | None = None,
        owners: dict[int, int] | None = None) -> list[dict[str, object]]:
    found = t.update(uses, opened or [], lambda i: {2: "eth0"}.get(i), lambda inodes: {
        i: p for i, p in (owners or {}).items() if i in inodes}, PROCS.get)
    return [e.model_dump(exclude_none=True) for e in found]


def test_a_sender_is_reported_when_seen_when_killed_and_while_it_goes_on() -> None:
    clock = Clock()
    t = RawSockets(clock)
    t.policy = RawPolicy(kill=False, allow=("/usr/sbin/dhclient",))
    (first,) = run(t, [use(10, 50_000)])
    assert (first["pid"], first["exe"], first["interface"], first["bypass"], first["tx_bytes"]) == (
        10, "/usr/bin/python3.11", "eth0", True, 50_000)
    assert first["action"] == "alert" and not first["allowed"] and not first["killed"]
    assert run(t, [use(10, 1000)]) == []  # nothing new to say yet
    clock.now += REPEAT_S
    (again,) = run(t, [use(10, 1000)])
    assert again["tx_bytes"] == 52_000
    (killed,) = run(t, [use(10, 1514, killed=True)])
    assert killed["killed"] and killed["escaped_bytes"] == 53_514


def test_allowlisted_executables_and_sockets_that_are_only_open() -> None:
    t = RawSockets(Clock())
    t.policy = RawPolicy(kill=True, allow=("/usr/sbin/dhclient",))
    opened = [PacketSocket(inode=777, sock_type=2, protocol=0x800, ifindex=2, uid=0)]
    (dhcp,) = run(t, [], opened, owners={777: 20})
    assert (dhcp["pid"], dhcp["socket_type"], dhcp["interface"], dhcp["tx_bytes"]) == (20, "dgram", "eth0", 0)
    assert dhcp["allowed"] and dhcp["action"] == "none"
    assert run(t, [], opened, owners={777: 20}) == []  # still open: said once
    (sender,) = run(t, [use(10, 3000, allowed=False)])
    assert sender["action"] == "kill" and not sender["allowed"]
