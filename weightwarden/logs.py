"""structlog set up for JSON lines on stderr; stdout stays for command output.

Under systemd (``$JOURNAL_STREAM`` names our stderr), each line starts with its
syslog priority (``<3>`` for errors...), which journald strips and records, so
``journalctl -p warning -u weightwarden-agent`` works; elsewhere lines are plain JSON.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

import structlog

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}
# syslog priorities (RFC 5424) by level name
PRIORITY = {"debug": 7, "info": 6, "warning": 4, "warn": 4, "error": 3, "exception": 3, "critical": 2}


def to_journald() -> bool:
    """Whether stderr is the journal stream systemd gave us (sd_journal_stream_fd semantics)."""
    stream = os.environ.get("JOURNAL_STREAM", "")
    try:
        dev, ino = (int(x) for x in stream.split(":"))
        st = os.fstat(sys.stderr.fileno())
    except (ValueError, OSError):
        return False
    return (st.st_dev, st.st_ino) == (dev, ino)


class _Renderer:
    """JSON, prefixed with the syslog priority when journald reads us."""

    def __init__(self, prefix: bool) -> None:
        self.json = structlog.processors.JSONRenderer()
        self.prefix = prefix

    def __call__(self, logger: Any, name: str, event: structlog.typing.EventDict) -> str:
        text = str(self.json(logger, name, event))
        if self.prefix:
            return f"<{PRIORITY.get(str(event.get('level', 'info')), 6)}>{text}"
        return text


class _Stderr:
    """Whatever ``sys.stderr`` is at write time (not when logging was set up): a caller that
    swaps stderr (a test's capture, a daemon's redirect) and closes the old one must not turn
    every later log line into an exception in whatever task logged it."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass  # always the current sys.stderr


def configure(level: int | str = logging.INFO) -> None:
    if isinstance(level, str):
        level = LEVELS[level]
    prefix = to_journald()
    stamp = structlog.processors.TimeStamper(fmt="iso", utc=True)
    structlog.configure(
        processors=[structlog.processors.add_log_level, stamp, _Renderer(prefix)],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=_Stderr()),  # type: ignore[arg-type]
        cache_logger_on_first_use=True,
    )
    # Libraries (paho/aiomqtt, SQLAlchemy) log through the standard library: render those
    # records as the same JSON lines, so a log shipper never meets a stray text line.
    handler = _StderrHandler()
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[structlog.stdlib.add_log_level, structlog.stdlib.add_logger_name, stamp],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, _Renderer(prefix)],
    ))
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(max(level, logging.WARNING))


def get(name: str) -> structlog.typing.FilteringBoundLogger:
    return structlog.get_logger(name)  # type: ignore[no-any-return]
