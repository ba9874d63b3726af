"""The human view of ``top``: a nethogs-like table of the top uploaders."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from weightwarden.agent.attribution.sample import SampleJson


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def human_rate(bits_per_s: float) -> str:
    for unit in ("bit/s", "Kbit/s", "Mbit/s", "Gbit/s"):
        if bits_per_s < 1000 or unit == "Gbit/s":
            return f"{bits_per_s:.1f} {unit}"
        bits_per_s /= 1000
    return f"{bits_per_s:.1f} Gbit/s"


@dataclass
class TopState:
    """Running totals per process across samples, for the TOTAL column."""

    totals: dict[int, int] = field(default_factory=lambda: defaultdict(int))

    def render(self, sample: SampleJson, limit: int = 20) -> str:
        interval = max(sample.get("interval_s", 1.0), 1e-9)
        for proc in sample["processes"]:
            self.totals[proc["pid"]] += proc["tx_bytes"]
        lines = []
        iface = "  ".join(
            f"{i['name']}: {human_rate(i['tx_bytes'] * 8 / interval)}" for i in sample["interfaces"]
        )
        lines.append(f"weightwarden top  ({interval:.1f}s)   {iface}")
        unexplained = sum(i.get("unexplained_tx_bytes") or 0 for i in sample["interfaces"])
        lines.append(
            f"attributed {human_bytes(sample['attributed_tx_bytes'])}  "
            f"unattributed {human_bytes(sample['unattributed_tx_bytes'])}"
            + (f"  UNEXPLAINED {human_bytes(unexplained)}" if unexplained else "")
        )
        sensor = sample.get("sensor") or {}
        if sensor.get("degraded"):
            features = sensor.get("features")
            off = sorted(name for name, f in (features.items() if isinstance(features, dict) else ())
                         if not (isinstance(f, dict) and f.get("on")))
            lines.append(f"sensor DEGRADED ({sensor.get('path')}): off: {', '.join(off) or '?'}")
        lines.append("")
        lines.append(f"{'PID':>7}  {'USER':<10} {'PROGRAM':<28} {'DESTINATION':<28} {'RATE':>14} {'TOTAL':>11}")
        for proc in sample["processes"][:limit]:
            dests = proc["destinations"]
            dest = f"{dests[0]['address']}:{dests[0]['port']}" if dests else "-"
            if len(dests) > 1:
                dest += f" +{len(dests) - 1}"
            program = proc["exe"] or proc["name"]
            if len(program) > 28:
                program = "…" + program[-27:]
            lines.append(
                f"{proc['pid']:>7}  {str(proc['user'] or '?'):<10.10} {program:<28} {dest:<28.28} "
                f"{human_rate(proc['tx_bytes'] * 8 / interval):>14} {human_bytes(self.totals[proc['pid']]):>11}"
            )
        if not sample["processes"]:
            lines.append("   (no process sent anything in this interval)")
        return "\n".join(lines)
