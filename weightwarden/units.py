"""Rates and sizes as people write them: "20Mbit", "1.5Gbit/s", "20MB/s", "50GB", "256KiB", "24h".

Rates are bits per second. A rate says "bit", or bytes with an explicit "/s"
("20MB/s" is 160 Mbit/s, and the tools print both). "Mbps" is rejected because
tc reads "bps" as bytes per second and people read it as bits; guessing would
make a cap 8x off. Every value is bounded, so a 400-digit number is an error
that names the bound, never an overflow.
"""

from __future__ import annotations

import math
import re

MAX_RATE = 10**14  # bits per second: 100 Tbit/s, far above any NIC, well inside tc's 64-bit rates
MAX_SIZE = 2**62  # bytes: what the events carry
MAX_DURATION = 10 * 365 * 86400.0  # seconds: ten years

_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kKmMgGtT]?)(?:bit|bits)(?:/s|ps)?\s*$")
_BYTE_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kKmMgGtT]?)(i?)B/s\s*$")
_AMBIGUOUS = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kKmMgGtT]?)(i?)(bps|Bps|B|b)?\s*$")
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kKmMgGtTpP]?)(i?)([bB]?)\s*$")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)\s*$")
_SI = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12, "p": 10**15}
_IEC = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40, "p": 2**50}
_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def _number(text: str) -> float:
    """A decimal as float; a number too long for one is inf, which every bound check refuses."""
    value = float(text)
    return value if math.isfinite(value) else math.inf


def parse_rate(text: str | int) -> int:
    """Bits per second; integers are taken as bits per second."""
    if isinstance(text, int) and not isinstance(text, bool):
        if text <= 0:
            raise ValueError("a rate must be positive")
        if text > MAX_RATE:
            raise ValueError(f"a rate of {str(text)[:20]}... bit/s is over the limit of {format_rate(MAX_RATE)}")
        return text
    raw = str(text)
    m = _RATE.match(raw)
    b = None if m else _BYTE_RATE.match(raw)
    if m:
        value = _number(m.group(1)) * _SI[m.group(2).lower()]
    elif b:
        table = _IEC if b.group(3) else _SI
        value = _number(b.group(1)) * table[b.group(2).lower()] * 8
    else:
        hint = "'Mbps' is ambiguous: use Mbit"
        a = _AMBIGUOUS.match(raw)
        if a and a.group(4):
            try:
                scale = (_IEC if a.group(3) else _SI)[a.group(2).lower()]
                as_bytes = format_rate(_number(a.group(1)) * scale * 8)
                hint = (f"if you meant bytes per second, write {a.group(1)}{a.group(2)}{a.group(3)}B/s "
                        f"(that is {as_bytes}); bits: {a.group(1)}{a.group(2)}bit")
            except ValueError:
                pass
        raise ValueError(
            f"invalid rate {raw[:40]!r}: write a number and a unit in bits per second, "
            f"e.g. 20Mbit, 500kbit, 1.5Gbit, or bytes with /s, e.g. 2.5MB/s ({hint})"
        )
    if value > MAX_RATE:
        raise ValueError(f"invalid rate {raw[:40]!r}: over the limit of {format_rate(MAX_RATE)}")
    if int(value) <= 0:
        raise ValueError(f"invalid rate {raw[:40]!r}: must be positive")
    return int(value)


def parse_size(text: str | int) -> int:
    """Bytes; "GB" is 10^9, "GiB" is 2^30, bare integers are bytes."""
    if isinstance(text, int) and not isinstance(text, bool):
        if text < 0:
            raise ValueError("a size cannot be negative")
        if text > MAX_SIZE:
            raise ValueError(f"a size of {str(text)[:20]}... bytes is over the limit of 2^62 bytes")
        return text
    m = _SIZE.match(str(text))
    if not m or (m.group(2) and not m.group(4) and not m.group(3)):
        raise ValueError(f"invalid size {str(text)[:40]!r}: e.g. 50GB, 256KiB, 1.5TB, or a number of bytes")
    table = _IEC if m.group(3) else _SI
    value = _number(m.group(1)) * table[m.group(2).lower()]
    if value > MAX_SIZE:
        raise ValueError(f"invalid size {str(text)[:40]!r}: over the limit of 2^62 bytes")
    return int(value)


def parse_duration(text: str | int | float) -> float:
    """Seconds; bare numbers are seconds."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        if not text > 0:  # also refuses nan
            raise ValueError("a duration must be positive")
        if text > MAX_DURATION:
            raise ValueError("a duration is at most ten years")
        return float(text)
    m = _DURATION.match(str(text))
    if not m:
        raise ValueError(f"invalid duration {str(text)[:40]!r}: e.g. 30s, 10m, 24h, 7d")
    value = _number(m.group(1)) * _SECONDS[m.group(2)]
    if value <= 0:
        raise ValueError(f"invalid duration {str(text)[:40]!r}: must be positive")
    if value > MAX_DURATION:
        raise ValueError(f"invalid duration {str(text)[:40]!r}: at most ten years")
    return value


def format_rate(bps: float) -> str:
    for unit, scale in (("Tbit/s", 10**12), ("Gbit/s", 10**9), ("Mbit/s", 10**6), ("kbit/s", 10**3)):
        if bps >= scale:
            return f"{bps / scale:g} {unit}"
    return f"{bps:g} bit/s"


def format_rate_both(bps: float) -> str:
    """A rate in bits and in bytes: '160 Mbit/s (20 MB/s)'."""
    return f"{format_rate(bps)} ({format_size(bps / 8)}/s)"


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
