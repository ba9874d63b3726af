"""A sensor's loader process (its ``bpf/loader.c``) as both sensors run it: started with a bounded wait
for its READY frame, spoken to by lines on stdin, heard by frames on stdout.

A frame is a little-endian (type, length) header and ``length`` bytes; types 1 and 2 are READY and ERROR
for every loader, the rest are the sensor's own (its ``wire.py``). One reader thread owns stdout and
hands each frame to the sensor's ``_dispatch``; when the loader exits, the sensor hears ``_on_exit`` so
that whoever waits for a reply is woken with an error, never left hanging. EOF on stdin is the loader's
signal to detach and exit.
"""

from __future__ import annotations

import os
import queue
import struct
import subprocess
import threading
from pathlib import Path
from typing import IO, ClassVar

T_READY, T_ERROR = 1, 2
FRAME = struct.Struct("<II")
MAX_FRAME = 64 << 20  # a longer frame is not our loader talking: stop listening


class LoaderError(Exception):
    """The loader could not start, or stopped answering."""


def read_exact(stream: IO[bytes], n: int) -> bytes | None:
    buf = b""
    while len(buf) < n:
        chunk = stream.read(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return buf


class LoaderProcess:
    """The process and its frames; a sensor subclasses it with its name, error and ``_dispatch``."""

    what: ClassVar[str] = "the loader"  # in every error message ("the eBPF loader did not answer ...")
    error: ClassVar[type[Exception]] = LoaderError
    thread_name: ClassVar[str] = "loader-reader"

    def __init__(self) -> None:
        self._proc: subprocess.Popen[bytes] | None = None
        self._reader: threading.Thread | None = None
        self._ready: queue.Queue[tuple[int, bytes]] = queue.Queue()

    # -- lifecycle ---------------------------------------------------------

    def _spawn(self, argv: list[str], env: dict[str, str], timeout: float) -> str:
        """Start the loader and wait up to ``timeout`` for its READY frame: its text. Raises ``error``.
        Its stderr goes nowhere: what it has to say comes in frames, and an unread pipe could stall it."""
        binary = argv[0]
        if not Path(binary).is_file() or not os.access(binary, os.X_OK):
            raise self.error(f"{self.what} is not built ({binary}); scripts/bootstrap.sh builds it")
        try:
            self._proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                          stderr=subprocess.DEVNULL, env=env)
        except OSError as exc:
            raise self.error(f"cannot run {binary}: {exc.strerror}") from None
        self._reader = threading.Thread(target=self._read, name=self.thread_name, daemon=True)
        self._reader.start()
        try:
            kind, payload = self._ready.get(timeout=timeout)
        except queue.Empty:
            self.close()
            raise self.error(f"{self.what} did not answer within {timeout:.0f} s") from None
        text = payload.decode("utf-8", "replace").strip()
        if kind != T_READY:
            self.close()
            raise self.error(text or f"{self.what} exited before it was ready")
        return text

    def close(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        try:
            if proc.stdin is not None:
                proc.stdin.close()  # EOF: the loader lets go of its links (pinned ones stay) and exits
        except OSError:
            pass
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
        if self._reader is not None:
            self._reader.join(timeout=2)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def returncode(self) -> int | None:
        """The loader's exit status once it has ended (negative: killed by that signal)."""
        return self._proc.poll() if self._proc is not None else None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    # -- frames --------------------------------------------------------------

    def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        out = self._proc.stdout
        try:
            while True:
                head = read_exact(out, FRAME.size)
                if head is None:
                    break
                kind, length = FRAME.unpack(head)
                if length > MAX_FRAME:
                    break
                payload = read_exact(out, length) if length else b""
                if payload is None:
                    break
                if kind in (T_READY, T_ERROR):
                    self._ready.put((kind, payload))
                else:
                    self._dispatch(kind, payload)
        finally:
            self._ready.put((T_ERROR, f"{self.what} exited".encode()))
            self._on_exit()

    def _dispatch(self, kind: int, payload: bytes) -> None:
        """One of the sensor's own frames (on the reader thread: be quick)."""

    def _on_exit(self) -> None:
        """The loader's stdout ended: wake whoever waits for a reply."""

    # -- requests ------------------------------------------------------------

    def _send(self, *lines: bytes) -> None:
        proc = self._proc
        if proc is None or proc.stdin is None or proc.poll() is not None:
            raise self.error(f"{self.what} is not running")
        try:
            for line in lines:
                proc.stdin.write(line)
            proc.stdin.flush()
        except OSError as exc:
            raise self.error(f"{self.what} stopped listening ({exc.strerror})") from None
