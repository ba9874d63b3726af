"""TLS for receivers from certificates given as text (never as paths on the collector host)."""

from __future__ import annotations

import os
import ssl
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from weightwarden.collector.outputs.base import OutputConfigError

PEM_MAX = 256 * 1024


def check_pem(value: Any, what: str, marker: str) -> str:
    if not isinstance(value, str) or marker not in value or len(value) > PEM_MAX:
        raise OutputConfigError(f"{what} must be PEM text (with {marker}), at most {PEM_MAX // 1024} KiB")
    return value


def _memfds(pems: tuple[str, ...]) -> list[int] | None:
    fds: list[int] = []
    try:
        for pem in pems:
            fds.append(os.memfd_create("ww-output-tls", os.MFD_CLOEXEC))
            os.write(fds[-1], pem.encode())
    except (AttributeError, OSError):  # no memfd (seccomp, an old kernel)
        for fd in fds:
            os.close(fd)
        return None
    return fds


def _load_chain(ctx: ssl.SSLContext, cert_pem: str, key_pem: str) -> None:
    """``load_cert_chain`` takes paths only: hand it memory files that never touch a disk."""
    fds = _memfds((cert_pem, key_pem))
    if fds is not None:
        try:
            ctx.load_cert_chain(f"/proc/self/fd/{fds[0]}", f"/proc/self/fd/{fds[1]}")
        finally:
            for fd in fds:
                os.close(fd)
        return
    with tempfile.TemporaryDirectory(prefix="ww-output-tls-") as tmp:  # private (0700), removed at once
        cert, key = str(Path(tmp) / "cert.pem"), str(Path(tmp) / "key.pem")
        for path, pem in ((cert, cert_pem), (key, key_pem)):
            with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as fh:
                fh.write(pem)
        ctx.load_cert_chain(cert, key)


def context(options: Mapping[str, Any], secrets: Mapping[str, str]) -> ssl.SSLContext:
    """A client context: the system's CAs, or ``ca_pem``; a client certificate from ``cert_pem``/``key_pem``."""
    try:
        ctx = ssl.create_default_context(cadata=options["ca_pem"]) if options.get("ca_pem") else \
            ssl.create_default_context()
        if options.get("cert_pem"):
            _load_chain(ctx, str(options["cert_pem"]), secrets.get("key_pem", ""))
    except (ssl.SSLError, ValueError) as exc:
        raise OutputConfigError(f"TLS setup failed: {exc}") from None
    return ctx


__all__ = ["check_pem", "context"]
