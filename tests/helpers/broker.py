"""A real Mosquitto broker on a free port, optionally inside a network namespace."""

from __future__ import annotations

import getpass
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from tests.helpers.netns import wait_for
from weightwarden.collector.ingest.backpressure import MAX_PACKET

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Broker:
    def __init__(self, workdir: Path, host: str = "127.0.0.1", port: int | None = None, netns: str | None = None,
                 extra: str = "", autosave_s: int = 1, max_inflight: int = 0) -> None:
        self.host, self.port, self.netns = host, port or free_port(), netns
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.conf = workdir / "mosquitto.conf"
        self.conf.write_text(
            f"listener {self.port} {host}\n"
            "allow_anonymous true\n"
            # Started as root, Mosquitto drops to the 'mosquitto' user, which cannot write into
            # pytest's 0700 temporary directories: it would then save nothing at shutdown, and a
            # restart would silently forget every session. Stay the user that started it.
            f"user {getpass.getuser()}\n"
            "persistence true\n"
            f"persistence_location {workdir}/\n"
            f"autosave_interval {autosave_s}\n"
            f"max_inflight_messages {max_inflight}\n"
            "max_queued_messages 0\n"
            # As deployed (docs/events.md): no packet bigger than the collector can store.
            f"max_packet_size {MAX_PACKET}\n"
            f"{extra}"
        )
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = f"mqtt://{host}:{self.port}"

    def _reachable(self) -> bool:
        if self.netns is not None:
            out = subprocess.run(["ip", "netns", "exec", self.netns, "ss", "-ltn"], capture_output=True, text=True)
            return f":{self.port} " in out.stdout
        try:
            with socket.create_connection((self.host, self.port), timeout=0.2):
                return True
        except OSError:
            return False

    def start(self) -> Broker:
        argv = [MOSQUITTO, "-c", str(self.conf)]
        if self.netns is not None:
            argv = ["ip", "netns", "exec", self.netns, *argv]
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        assert wait_for(self._reachable, 10), "mosquitto did not start"
        return self

    @property
    def database(self) -> Path:
        return self.workdir / "mosquitto.db"

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.poll() is None:
            saved_before = self.database.stat().st_mtime_ns if self.database.exists() else None
            self.proc.send_signal(sig)
            self.proc.wait(timeout=10)
            if sig == signal.SIGTERM:
                # A clean stop saves the sessions; a broker that could not is no broker to test against.
                assert self.database.exists() and self.database.stat().st_mtime_ns != saved_before, (
                    f"mosquitto did not save {self.database} when it stopped")
        self.proc = None

    def restart(self, sig: int = signal.SIGKILL, down_for: float = 0.5) -> None:
        self.kill(sig)
        time.sleep(down_for)
        self.start()

    def stop(self) -> None:
        self.kill(signal.SIGTERM)
