"""The wire schema's building blocks: bounds, constrained field types (text cleaned of NUL and lone
surrogates, finite numbers, sizes), and the frozen, strict base models."""

from __future__ import annotations

import math
import re
from typing import Annotated, ClassVar, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

SCHEMA_VERSION: Literal[1] = 1
HOST_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")

# Bounds that keep one event small enough for the collector's size limit, whatever the host does.
MAX_PROCESSES = 200  # per egress sample; the rest are summed into other_processes
MAX_DESTINATIONS = 32  # per process; the rest are summed into other_destinations
MAX_INTERFACES = 256
MAX_PIPES = 64
MAX_LOCAL_PEERS = 16  # per process; the rest are summed into other_local_peers
MAX_ARGS = 32
MAX_SEQ = 2**62
MAX_BYTES = 2**62
MAX_TS = 2.0**33  # year 2242: beyond it is garbage, not a clock
MAX_SECONDS = 1e9


def _clean(value: str) -> str:
    if "\x00" in value:
        raise ValueError("contains a NUL character")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("contains a lone surrogate (not valid UTF-8)") from None
    return value


def safe_text(value: str | bytes | None, limit: int = 4096) -> str:
    """Any string the kernel or /proc hands us (non-UTF-8 file names arrive with surrogate
    escapes) as valid UTF-8 without NULs, cut to ``limit``: what the models accept."""
    if value is None:
        return ""
    if isinstance(value, bytes):
        text = value.decode("utf-8", "backslashreplace")
    else:
        text = value.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return text.replace("\x00", "\\x00")[:limit]


def _finite(value: float) -> float:
    if not math.isfinite(value):
        raise ValueError("must be a finite number")
    return value


Text = Annotated[str, Field(max_length=4096), AfterValidator(_clean)]
Name = Annotated[str, Field(max_length=256), AfterValidator(_clean)]
Address = Annotated[str, Field(max_length=128), AfterValidator(_clean)]
Count = Annotated[int, Field(ge=0, le=MAX_BYTES)]
Pid = Annotated[int, Field(ge=0, le=2**31 - 1)]
Uid = Annotated[int, Field(ge=0, le=2**32 - 1)]
Port = Annotated[int, Field(ge=0, le=65535)]
Inode = Annotated[int, Field(ge=0, le=2**64 - 1)]
Timestamp = Annotated[float, Field(ge=0, le=MAX_TS), AfterValidator(_finite)]
Seconds = Annotated[float, Field(ge=0, le=MAX_SECONDS), AfterValidator(_finite)]
Rate = Annotated[float, Field(ge=0, le=1e15), AfterValidator(_finite)]
Severity = Literal["low", "medium", "high", "critical"]


class Model(BaseModel):
    """Frozen, and unknown keys are errors: a misspelt field never silently disappears."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Payload(Model):
    """The ``data`` of one event type; ``TYPE`` is that type's name."""

    TYPE: ClassVar[str] = ""
