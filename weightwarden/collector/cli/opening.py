"""How the collector's commands open the database, say they failed and name who ran them: shared by every
command module, imported by none of them."""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from typing import TYPE_CHECKING, TypeAlias

if TYPE_CHECKING:  # the database layer is imported when a command opens it, not to build the parser
    from weightwarden.collector.store.database import Store


# What add_subparsers() returns: each command module adds its parsers to it.
Subcommands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"

def open_store(url: str, *, write: bool = False) -> Store:
    """An existing database with this binary's schema: read-only unless ``write`` (never migrated,
    never created here; `run` and `db upgrade` do that)."""
    from weightwarden.collector.store.database import Store

    return Store(url, read_only=not write, migrate=False)


def fail(message: str, code: int = 1) -> int:
    """An error on stderr, one line; returns the exit code (1 runtime failure or not found, 2 bad usage)."""
    print(f"weightwarden-collector: {message}", file=sys.stderr)
    return code


def operator() -> str:
    """Who ran a command, for the audit trail."""
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return f"cli:uid {os.getuid()}"
