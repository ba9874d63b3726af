"""sd_notify(3) without libsystemd: one datagram to $NOTIFY_SOCKET, or nothing."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Callable

from structlog.typing import FilteringBoundLogger

from weightwarden.asyncutil import wait_for_stop


def notify(message: str) -> bool:
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return False
    addr = "\0" + path[1:] if path.startswith("@") else path
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.sendto(message.encode(), addr)
    except OSError:
        return False
    return True


def watchdog_interval() -> float | None:
    """Half of WatchdogSec when systemd asked us to ping, else None."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return int(usec) / 2e6
    except ValueError:
        return None


async def watchdog_loop(stop: asyncio.Event, every: float, stuck_for: Callable[[], float],
                        log: FilteringBoundLogger) -> None:
    """Ping systemd only while the work loops make progress (``stuck_for`` is 0): a stuck loop stops the
    pings, and systemd restarts the agent (caps stay in force meanwhile)."""
    while not stop.is_set():
        stuck = stuck_for()
        if stuck == 0:
            notify("WATCHDOG=1")
        else:
            log.error("agent_stuck", overdue_s=stuck,
                      detail="a sample or enforcement pass has not finished; watchdog pings withheld")
        await wait_for_stop(stop, every)
