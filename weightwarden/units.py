"""Rates and sizes as people write them: "20Mbit", "1.5Gbit/s", "50GB", "256KiB", "24h".

Rates are bits per second and must say "bit": "Mbps" is rejected because tc
reads "bps" as bytes per second and people read it as bits; guessing would
make a cap 8x off.
"""

from __future__ import annotations

import re

_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kKmMgGtT]?)(?:bit|bits)(?:/s|ps)?\s*$")
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kKmMgGtTpP]?)(i?)([bB]?)\s*$")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)\s*$")
_SI = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12, "p": 10**15}
_IEC = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40, "p": 2**50}
_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_rate(text: str | int) -> int:
    """Bits per second; integers are taken as bits per second."""
    if isinstance(text, int) and not isinstance(text, bool):
        if text <= 0:
            raise ValueError("a rate must be positive")
        return text
    m = _RATE.match(str(text))
    if not m:
        raise ValueError(
            f"invalid rate {text!r}: write a number and a unit in bits per second, "
            "e.g. 20Mbit, 500kbit, 1.5Gbit ('Mbps' is ambiguous: use Mbit)"
        )
    value = int(float(m.group(1)) * _SI[m.group(2).lower()])
    if value <= 0:
        raise ValueError(f"invalid rate {text!r}: must be positive")
    return value


def parse_size(text: str | int) -> int:
    """Bytes; "GB" is 10^9, "GiB" is 2^30, bare integers are bytes."""
    if isinstance(text, int) and not isinstance(text, bool):
        if text < 0:
            raise ValueError("a size cannot be negative")
        return text
    m = _SIZE.match(str(text))
    if not m or (m.group(2) and not m.group(4) and not m.group(3)):
        raise ValueError(f"invalid size {text!r}: e.g. 50GB, 256KiB, 1.5TB, or a number of bytes")
    table = _IEC if m.group(3) else _SI
    return int(float(m.group(1)) * table[m.group(2).lower()])


def parse_duration(text: str | int | float) -> float:
    """Seconds; bare numbers are seconds."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        if text <= 0:
            raise ValueError("a duration must be positive")
        return float(text)
    m = _DURATION.match(str(text))
    if not m:
        raise ValueError(f"invalid duration {text!r}: e.g. 30s, 10m, 24h, 7d")
    value = float(m.group(1)) * _SECONDS[m.group(2)]
    if value <= 0:
        raise ValueError(f"invalid duration {text!r}: must be positive")
    return value


def format_rate(bps: float) -> str:
    for unit, scale in (("Gbit/s", 10**9), ("Mbit/s", 10**6), ("kbit/s", 10**3)):
        if bps >= scale:
            return f"{bps / scale:g} {unit}"
    return f"{bps:g} bit/s"


def format_size(n: float) -> str:
    for unit, scale in (("TB", 10**12), ("GB", 10**9), ("MB", 10**6), ("kB", 10**3)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n:.0f} B"


def format_duration(seconds: float) -> str:
    if seconds == float("inf"):
        return "never"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    parts = []
    for unit, scale in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= scale:
            count = int(seconds // scale)
            seconds -= count * scale
            parts.append(f"{count}{unit}")
        if len(parts) == 2:
            break
    return " ".join(parts) or "0s"
