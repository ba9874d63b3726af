"""weightwarden agent: measures and limits what leaves a GPU host."""

from weightwarden import __version__

__all__ = ["__version__"]
