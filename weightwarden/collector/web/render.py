"""HTML from Jinja2 templates (autoescaped), and the filters the templates use.

Every value a template prints goes through :func:`_finalize` before it is escaped: text from the
hosts (process names, command lines, paths, users) cannot reorder what is shown (U+202E turns
"pid 6230" into "0326") or hide in invisible characters: controls and layout characters are shown
as escapes (``\x1b``, ``\u202e``). ``| untrusted`` also isolates a value's direction (``<bdi>``),
so right-to-left text in a name cannot pull its neighbours along. The stored evidence is untouched.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, select_autoescape
from markupsafe import Markup, escape
from starlette.responses import HTMLResponse

from weightwarden.textsafe import visible
from weightwarden.units import format_duration, format_rate, format_size

HERE = Path(__file__).parent
TEMPLATES = HERE / "templates"
STATIC = HERE / "static"


def _when(ts: Any) -> str:
    if ts in (None, ""):
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(float(ts))) + " UTC"


def _ago(ts: Any) -> str:
    if ts in (None, ""):
        return "never"
    delta = time.time() - float(ts)
    return "just now" if delta < 2 else f"{format_duration(delta)} ago"


def _size(n: Any) -> str:
    return "-" if n is None else format_size(float(n))


def _rate(n: Any) -> str:
    return "-" if n is None else format_rate(float(n))


def _duration(n: Any) -> str:
    return "unknown" if n is None else format_duration(float(n))


def _finalize(value: Any) -> Any:
    if isinstance(value, Markup) or not isinstance(value, str):
        return value
    return visible(value, keep_lines=True)


def _untrusted(value: Any) -> Markup:
    """Text from a host, shown inert: controls visible, its direction isolated from what surrounds it."""
    if value is None or value == "":
        return Markup("")
    text = value if isinstance(value, str) else str(value)
    return Markup('<bdi class="untrusted">') + escape(visible(text, keep_lines=True)) + Markup("</bdi>")


env = Environment(loader=FileSystemLoader(str(TEMPLATES)), autoescape=select_autoescape(["html"]),
                  trim_blocks=True, lstrip_blocks=True, finalize=_finalize)
env.filters.update(when=_when, ago=_ago, size=_size, rate=_rate, duration=_duration, untrusted=_untrusted)


def page(template: str, status: int = 200, **context: Any) -> HTMLResponse:
    return HTMLResponse(env.get_template(template).render(**context), status_code=status)


def svg(markup: str) -> Markup:
    """Markup built by chart.py, which escapes every text it puts in."""
    return Markup(markup)


def error_page(status: int, message: str) -> HTMLResponse:
    return page("error.html", status=status, status_code=status, message=message, user=None)
