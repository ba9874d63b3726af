"""Final I/O counters of processes as they exit (taskstats over generic netlink).

A `cat` or `cp` that reads weights and exits at once is gone from /proc before
we handle its close event; the kernel's exit record still has its rchar
(read_char). Only the exiting thread's own counters are in the record, which
is the whole story for single-threaded readers (cat, cp, dd, curl, scp).
The kernel rounds these counters down to whole KiB, and sends the records in
the host's network namespace only (``host_netns_listener`` opens the socket
there even when the agent runs in another one).

Parsed with weightwarden/agent/kernel/netlink.py rather than pyroute2's TaskStats: the latter
runs an asyncio loop per socket and cannot be read from the watcher thread.
"""

from __future__ import annotations

import contextlib
import os
import struct
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from weightwarden.agent.files import kernel
from weightwarden.agent.kernel.netlink import NetlinkSocket, attr, parse_attrs

NETLINK_GENERIC = 16
GENL_ID_CTRL = 0x10
CTRL_CMD_GETFAMILY = 3
CTRL_ATTR_FAMILY_ID = 1
CTRL_ATTR_FAMILY_NAME = 2
TASKSTATS_CMD_GET = 1
TASKSTATS_CMD_ATTR_REGISTER_CPUMASK = 3
TASKSTATS_CMD_ATTR_DEREGISTER_CPUMASK = 4
TASKSTATS_TYPE_PID = 1
TASKSTATS_TYPE_STATS = 3
TASKSTATS_TYPE_AGGR_PID = 4
# Offsets in struct taskstats (linux/taskstats.h), stable since version 4 (the executable: version 13).
COMM = 80
UID = 120
PPID = 132
READ_CHAR = 216
WRITE_CHAR = 224
EXE_DEV = 384
EXE_INODE = 392

_GENL = struct.Struct("=BBH")
_U64 = struct.Struct("=Q")


@dataclass(frozen=True, slots=True)
class ExitRecord:
    pid: int
    read_char: int
    write_char: int
    ts: float
    comm: str = ""
    uid: int | None = None
    ppid: int | None = None
    exe: tuple[int, int] | None = None  # (st_dev, inode) of its executable (kernels since 5.19)


def host_netns_listener() -> ExitListener:
    """A listener in the host's network namespace, wherever the agent runs.

    Taskstats records are sent in the initial network namespace only, and a
    netlink socket stays in the namespace it was created in: so the socket is
    made by a short-lived thread that first joins the initial namespace
    (setns changes only the calling thread). Kernel threads live there
    (kthreadd is pid 2), whichever namespace pid 1 is in. Where that namespace
    cannot be joined, the agent's own is used.
    """
    try:
        same = Path("/proc/2/ns/net").stat().st_ino == Path("/proc/self/ns/net").stat().st_ino
    except OSError:
        same = True
    if same:
        return ExitListener()
    made: list[ExitListener | BaseException] = []

    def make() -> None:
        try:
            fd = os.open("/proc/2/ns/net", os.O_RDONLY | os.O_CLOEXEC)
            try:
                kernel.setns(fd, kernel.CLONE_NEWNET)
            finally:
                os.close(fd)
            made.append(ExitListener())
        except BaseException as exc:  # noqa: BLE001 - reported to the caller below
            made.append(exc)

    t = threading.Thread(target=make, name="taskstats-setns")
    t.start()
    t.join()
    if isinstance(made[0], BaseException):
        raise OSError(f"taskstats in the host network namespace: {made[0]}")
    return made[0]


class ExitListener:
    def __init__(self) -> None:
        self.nl = NetlinkSocket(NETLINK_GENERIC, rcvbuf=1 << 22)
        self.family = self._family_id()
        self.mask = f"0-{(os.cpu_count() or 1) - 1}".encode() + b"\0"
        self._command(TASKSTATS_CMD_ATTR_REGISTER_CPUMASK)

    def _family_id(self) -> int:
        body = _GENL.pack(CTRL_CMD_GETFAMILY, 1, 0) + attr(CTRL_ATTR_FAMILY_NAME, b"TASKSTATS\0")
        for _t, reply in self.nl.request(GENL_ID_CTRL, body):
            attrs = parse_attrs(reply, _GENL.size)
            if CTRL_ATTR_FAMILY_ID in attrs:
                return int(struct.unpack("=H", attrs[CTRL_ATTR_FAMILY_ID][:2])[0])
        raise OSError("taskstats: no TASKSTATS generic netlink family")

    def _command(self, which: int) -> None:
        body = _GENL.pack(TASKSTATS_CMD_GET, 1, 0) + attr(which, self.mask)
        for _ in self.nl.request(self.family, body):
            pass

    def fileno(self) -> int:
        return self.nl.fileno()

    def read(self) -> list[ExitRecord]:
        out: list[ExitRecord] = []
        now = time.time()
        msgs: list[tuple[int, int, memoryview]] = []
        while True:
            try:
                msgs.extend(self.nl.recv_messages(block=False))
            except BlockingIOError:
                break
        for rtype, _seq, body in msgs:
            if rtype != self.family:
                continue
            aggr = parse_attrs(body, _GENL.size).get(TASKSTATS_TYPE_AGGR_PID)
            if aggr is None:
                continue
            inner = parse_attrs(aggr)
            pid_raw, stats = inner.get(TASKSTATS_TYPE_PID), inner.get(TASKSTATS_TYPE_STATS)
            if pid_raw is None or stats is None or len(stats) < WRITE_CHAR + 8:
                continue
            exe = None
            if len(stats) >= EXE_INODE + 8:
                exe = (_U64.unpack_from(stats, EXE_DEV)[0], _U64.unpack_from(stats, EXE_INODE)[0])
            comm = bytes(stats[COMM:COMM + 32]).split(b"\0", 1)[0].decode("utf-8", "backslashreplace")
            out.append(ExitRecord(struct.unpack("=I", pid_raw[:4])[0], _U64.unpack_from(stats, READ_CHAR)[0],
                                  _U64.unpack_from(stats, WRITE_CHAR)[0], now, comm,
                                  struct.unpack_from("=I", stats, UID)[0], struct.unpack_from("=I", stats, PPID)[0],
                                  exe if exe and exe[1] else None))
        return out

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._command(TASKSTATS_CMD_ATTR_DEREGISTER_CPUMASK)
        self.nl.close()
