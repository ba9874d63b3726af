"""weightwarden agent: measures and limits what leaves a GPU host."""

__version__ = "0.1.0"
