"""Per-interface transmit counters (from /proc/net/dev of this network namespace)."""

from __future__ import annotations

from dataclasses import dataclass

import psutil


@dataclass(frozen=True, slots=True)
class IfCounters:
    tx_bytes: int
    tx_packets: int
    rx_bytes: int
    rx_packets: int


def read_interfaces() -> dict[str, IfCounters]:
    counters = psutil.net_io_counters(pernic=True, nowrap=True)
    return {
        name: IfCounters(c.bytes_sent, c.packets_sent, c.bytes_recv, c.packets_recv) for name, c in counters.items()
    }


def counter_delta(new: int, old: int | None) -> int:
    """Delta of a monotonic counter; a reset (new < old) counts from zero."""
    if old is None:
        return 0
    return new - old if new >= old else new


def local_addresses() -> set[str]:
    """Every address configured in this namespace: traffic to them is not egress."""
    addrs = {"127.0.0.1", "::1"}
    for entries in psutil.net_if_addrs().values():
        for entry in entries:
            if entry.family.name in ("AF_INET", "AF_INET6"):
                addrs.add(entry.address.split("%", 1)[0])
    return addrs


def is_egress_destination(addr: str, local: set[str]) -> bool:
    return not (addr in local or addr.startswith("127.") or addr in ("::", "0.0.0.0") or addr.startswith("::ffff:127."))
