"""How the collector's commands open the database: shared by every command module, imported by none of them."""

from __future__ import annotations

from weightwarden.collector.store.database import Store


def open_store(url: str, *, write: bool = False) -> Store:
    """An existing database with this binary's schema: read-only unless ``write`` (never migrated,
    never created here; `run` and `db upgrade` do that)."""
    return Store(url, read_only=not write, migrate=False)
