"""weightwarden collector: ingests agent events, correlates, raises alerts."""

from weightwarden import __version__

__all__ = ["__version__"]
