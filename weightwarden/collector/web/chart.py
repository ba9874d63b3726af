"""The host page's egress chart as inline SVG: one line per destination, caps as dashed lines.

Pure: data in, markup out (every text escaped). No script, no external font:
the page works air-gapped and under a strict Content-Security-Policy.
"""

from __future__ import annotations

import time
from html import escape
from typing import TYPE_CHECKING

from weightwarden.units import format_rate

if TYPE_CHECKING:
    from weightwarden.collector.web.queries import EgressSeries

WIDTH, HEIGHT = 880, 300
LEFT, RIGHT, TOP, BOTTOM = 78, 170, 14, 34
COLOURS = ["#d9480f", "#1971c2", "#2f9e44", "#ae3ec9", "#f08c00", "#0c8599", "#868e96"]


def _nice_max(value: float) -> float:
    if value <= 0:
        return 1.0
    magnitude = 10 ** (len(str(int(value))) - 1)
    for m in (1, 2, 2.5, 5, 10):
        if value <= m * magnitude:
            return float(m * magnitude)
    return float(10 * magnitude)


def egress_svg(data: EgressSeries) -> str:
    series, caps = data["series"], data["caps"]
    since, step = float(data["since"]), float(data["step"])
    n = max((len(s["bps"]) for s in series), default=0)
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    peak = max([max(s["bps"]) for s in series if s["bps"]] + [float(c["rate_bps"] or 0) for c in caps] + [0.0])
    top = _nice_max(peak * 1.1)

    def x(i: float) -> float:
        return LEFT + plot_w * (i / max(n, 1))

    def y(v: float) -> float:
        return TOP + plot_h * (1 - min(v, top) / top)

    out = [f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" xmlns="http://www.w3.org/2000/svg" '
           f'aria-label="upload rate per destination for {escape(str(data["host"]))}">']
    for k in range(5):  # grid and rate axis
        v = top * k / 4
        out.append(f'<line x1="{LEFT}" x2="{LEFT + plot_w}" y1="{y(v):.1f}" y2="{y(v):.1f}" class="grid"/>')
        out.append(f'<text x="{LEFT - 6}" y="{y(v) + 4:.1f}" class="axis" text-anchor="end">{escape(format_rate(v))}</text>')
    for k in range(5):  # time axis, UTC
        i = n * k / 4
        label = time.strftime("%H:%M", time.gmtime(since + step * i))
        out.append(f'<text x="{x(i):.1f}" y="{HEIGHT - 12}" class="axis" text-anchor="middle">{label}</text>')
    out.append(f'<text x="{LEFT + plot_w}" y="{HEIGHT - 1}" class="axis" text-anchor="end">UTC</text>')
    legend_y = TOP + 4
    for j, s in enumerate(series):
        colour = COLOURS[j % len(COLOURS)]
        points = " ".join(f"{x(i + 0.5):.1f},{y(v):.1f}" for i, v in enumerate(s["bps"]))
        name = s["address"] + (" (allowlisted)" if s.get("allowed") else "")
        out.append(f'<polyline points="{points}" fill="none" stroke="{colour}" stroke-width="2">'
                   f'<title>{escape(name)}</title></polyline>')
        out.append(f'<rect x="{WIDTH - RIGHT + 12}" y="{legend_y}" width="10" height="10" fill="{colour}"/>')
        out.append(f'<text x="{WIDTH - RIGHT + 27}" y="{legend_y + 9}" class="legend">{escape(name[:24])}</text>')
        legend_y += 16
    for c in caps:
        rate = float(c.get("rate_bps") or 0)
        if rate <= 0:
            continue
        out.append(f'<line x1="{LEFT}" x2="{LEFT + plot_w}" y1="{y(rate):.1f}" y2="{y(rate):.1f}" class="cap"/>')
        out.append(f'<text x="{LEFT + plot_w - 4}" y="{y(rate) - 4:.1f}" class="cap-label" text-anchor="end">cap '
                   f'{escape(str(c.get("name")))} {escape(format_rate(rate))}</text>')
    if not series:
        out.append(f'<text x="{LEFT + plot_w / 2}" y="{TOP + plot_h / 2}" class="axis" text-anchor="middle">'
                   'no egress in this window</text>')
    out.append(f'<rect x="{LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}" class="frame"/></svg>')
    return "".join(out)
