"""Copies of packets from an NFLOG group (nfnetlink_log): the fallback path's DNS answers.

Unlike NFQUEUE, NFLOG never holds a packet: the kernel copies it to us and
sends the original on. A flood of DNS answers can at worst fill our socket
buffer (the kernel then drops copies, we count ENOBUFS): names are lost,
traffic and attribution are not.
"""

from __future__ import annotations

import contextlib
import errno
import socket
import struct
from collections.abc import Iterator

from weightwarden.agent.kernel.netlink import NETLINK_NETFILTER, NetlinkSocket, attr, parse_attrs

NFNL_SUBSYS_ULOG = 4
NFULNL_MSG_PACKET = 0
NFULNL_MSG_CONFIG = 1
NFULA_CFG_CMD = 1
NFULA_CFG_MODE = 2
NFULA_CFG_TIMEOUT = 4
NFULA_CFG_QTHRESH = 5
NFULNL_CFG_CMD_BIND = 1
NFULNL_CFG_CMD_UNBIND = 2
NFULNL_COPY_PACKET = 2
NFULA_PAYLOAD = 9
COPY_RANGE = 1024

_NFGEN = struct.Struct("!BBH")


def _msg_type(msg: int) -> int:
    return (NFNL_SUBSYS_ULOG << 8) | msg


class NfLog:
    def __init__(self, group: int) -> None:
        self.group = group
        self.nl = NetlinkSocket(NETLINK_NETFILTER, rcvbuf=1 << 22)
        self.overruns = 0
        self._config(attr(NFULA_CFG_CMD, bytes([NFULNL_CFG_CMD_BIND])))
        self._config(attr(NFULA_CFG_MODE, struct.pack("!IBx", COPY_RANGE, NFULNL_COPY_PACKET)))
        # Batches of up to 32 copies, flushed within 0.1 s (the kernel's default holds them up to 1 s).
        self._config(attr(NFULA_CFG_QTHRESH, struct.pack("!I", 32)) + attr(NFULA_CFG_TIMEOUT, struct.pack("!I", 10)))

    def _config(self, attrs: bytes) -> None:
        for _ in self.nl.request(_msg_type(NFULNL_MSG_CONFIG), _NFGEN.pack(socket.AF_UNSPEC, 0, self.group) + attrs):
            pass

    def fileno(self) -> int:
        return self.nl.fileno()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._config(attr(NFULA_CFG_CMD, bytes([NFULNL_CFG_CMD_UNBIND])))
        self.nl.close()

    def packets(self) -> Iterator[bytes]:
        """Every packet copy waiting now (non-blocking); an overrun is counted, not raised."""
        try:
            for rtype, body in self.nl.drain():
                if rtype == _msg_type(NFULNL_MSG_PACKET):
                    payload = parse_attrs(body, _NFGEN.size).get(NFULA_PAYLOAD)
                    if payload is not None:
                        yield bytes(payload)
        except OSError as exc:
            if exc.errno != errno.ENOBUFS:
                raise
            self.overruns += 1
