"""weightwarden collector: ingests agent events, correlates, raises alerts."""

__version__ = "0.1.0"
