"""Text from the field, made safe to show: nothing in it can steer a terminal, a page's layout or a log.

Process names, command lines, paths and user names come from the watched
hosts: whoever runs a process chooses them. Shown raw, ``\\x1b[2J`` clears an
analyst's terminal, U+202E (RIGHT-TO-LEFT OVERRIDE) turns "pid 6230" into
"0326", and a carriage return starts a forged line in a log. Every place that
shows such text (console, CLI, CEF and syslog) shows it through here: control
and invisible formatting characters become visible escapes (``\\x1b``,
``\\u202e``), the rest is left as it is. What is stored (the evidence) keeps the
raw bytes for forensics.
"""

from __future__ import annotations

import re
import unicodedata

# C0 and C1 controls, DEL, and the invisible "format" characters that steer layout: the bidi
# embeddings, overrides and isolates (U+202A-202E, U+2066-2069), marks (U+200E/F, U+061C),
# zero-width characters, line and paragraph separators, the BOM, interlinear annotations, and
# lone surrogates (invalid UTF-8 decoded with surrogateescape).
_UNSAFE = re.compile(r"[\x00-\x1f\x7f-\x9f\u061c\u115f\u1160\u180e\u200b-\u200f\u2028-\u202e\u2060-\u206f"
                     r"\u3164\ufeff\ufff9-\ufffb\ud800-\udfff]")
_UNSAFE_KEEP_LINES = re.compile(_UNSAFE.pattern.replace(r"\x00-\x1f", r"\x00-\x08\x0b-\x1f"))


def _escape(m: re.Match[str]) -> str:
    c = m.group(0)
    n = ord(c)
    return f"\\x{n:02x}" if n <= 0xFF else f"\\u{n:04x}"


def visible(value: object, keep_lines: bool = False) -> str:
    """``value`` as text with every control and layout-steering character shown as an escape.
    ``keep_lines``: tabs and line feeds stay (multi-line text in a page); carriage returns never do."""
    text = value if isinstance(value, str) else str(value)
    out = (_UNSAFE_KEEP_LINES if keep_lines else _UNSAFE).sub(_escape, text)
    # Other format characters (Unicode category Cf) are rare and invisible: shown too.
    if any(unicodedata.category(c) == "Cf" for c in out if ord(c) > 0x7F):
        out = "".join(f"\\u{ord(c):04x}" if ord(c) > 0x7F and unicodedata.category(c) == "Cf" else c for c in out)
    return out


def is_safe(value: str) -> bool:
    return visible(value, keep_lines=True) == value


__all__ = ["is_safe", "visible"]
