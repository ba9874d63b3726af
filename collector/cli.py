"""weightwarden-collector: the command line (ingest and alerts arrive with the collector issue)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from collector import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="weightwarden-collector",
        description="Central service: ingest agent events, correlate transfers with weight reads, raise alerts.",
        epilog="example: weightwarden-collector --version",
    )
    parser.add_argument("--version", action="version", version=f"weightwarden-collector {__version__}")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    build_parser().parse_args(argv)
    return 0
