"""The collector's database schema (its migrations: :mod:`migrations`), and opening a database the right way.

Only ``weightwarden-collector run`` and ``weightwarden-collector db upgrade``
migrate. Every other command opens an existing database, refuses one whose
schema is newer than this binary knows (an older collector must not write
into a schema it does not understand), and says in one line what is wrong.
Read commands open read-only and never create a file.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from sqlalchemy import Connection, Engine, create_engine, event, make_url, text
from sqlalchemy.engine.interfaces import DBAPIConnection
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError
from sqlalchemy.pool import ConnectionPoolEntry

# Re-exported: the schema's version and statements are asked of this module.
from weightwarden.collector.store.migrations import DIALECT_SQL
from weightwarden.collector.store.migrations import MIGRATIONS as MIGRATIONS
from weightwarden.collector.store.migrations import SCHEMA_VERSION as SCHEMA_VERSION


class StoreError(Exception):
    """A database that cannot be used; the message names the problem in one line, never a password."""


def safe_url(url: str) -> str:
    """The URL with any password hidden, for messages and logs."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):
        return "<unparsable database URL>"


def normalize_url(url: str) -> str:
    """sqlite:///PATH as is; postgresql:// goes through psycopg 3."""
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


def sqlite_path(url: str) -> Path | None:
    """The file of a sqlite:/// URL (None for :memory: and other schemes)."""
    if url.startswith("sqlite:///") and not url.startswith("sqlite:///:memory:"):
        return Path(url[len("sqlite:///"):].split("?", 1)[0])
    return None


def private_files(url: str, create: bool) -> None:
    """A SQLite database and its -wal and -shm files readable by their owner only (0600): they hold password
    hashes, token hashes and sealed output secrets. SQLite gives -wal and -shm the database file's mode,
    so the database is made 0600 before SQLite first opens it; files an older collector left 0644 are
    narrowed. Outside systemd's UMask the process's umask would decide otherwise."""
    path = sqlite_path(url)
    if path is None:
        return
    if create and not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        with contextlib.suppress(FileExistsError):
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    for suffix in ("", "-wal", "-shm", "-journal"):
        f = path.with_name(path.name + suffix)
        try:
            if f.exists() and f.stat().st_mode & 0o077:
                f.chmod(0o600)
        except OSError:
            pass  # not ours to change (another user's file): SQLite will say if it cannot open it


def check_url(url: str) -> None:
    if not url.startswith(("sqlite:///", "postgresql://", "postgres://", "postgresql+psycopg://")):
        raise StoreError(f"--db {safe_url(url)!r} is not a database URL: use sqlite:///PATH or "
                         "postgresql://USER@HOST/DB")


def make_engine(url: str, *, read_only: bool, create: bool) -> Engine:
    """An engine for ``url``. SQLite files are created only when ``create``; read-only
    engines cannot write (SQLite mode=ro, PostgreSQL default_transaction_read_only)."""
    check_url(url)
    path = sqlite_path(url)
    connect_args: dict[str, str | int] = {}
    target = normalize_url(url)
    if path is not None:
        if not path.exists():
            if not create:
                raise StoreError(f"no database at {path} (the collector creates it on its first run)")
            path.parent.mkdir(parents=True, exist_ok=True)
        if read_only:
            target = f"sqlite:///file:{path.resolve()}?mode=ro&uri=true"
    elif url.startswith(("postgresql", "postgres")):
        connect_args["connect_timeout"] = 10
        if read_only:
            connect_args["options"] = "-c default_transaction_read_only=on"
    try:
        # hide_parameters: a failing statement's log line must not carry event contents.
        engine = create_engine(target, pool_pre_ping=True, hide_parameters=True, connect_args=connect_args)
    except (ArgumentError, NoSuchModuleError, ValueError) as exc:
        raise StoreError(f"--db {safe_url(url)!r}: {exc}") from None
    if engine.dialect.name == "sqlite":
        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: DBAPIConnection, _record: ConnectionPoolEntry) -> None:
            cur = dbapi_conn.cursor()
            if not read_only:
                cur.execute("PRAGMA journal_mode=WAL")
                cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA busy_timeout=10000")
            cur.close()
    return engine


def connect_error(url: str, exc: BaseException) -> StoreError:
    """One line for a database that cannot be reached or read (no traceback, no password)."""
    orig = getattr(exc, "orig", None) or exc
    first = (str(orig).strip().splitlines() or [type(orig).__name__])[0]
    try:
        password = make_url(normalize_url(url)).password
    except (ArgumentError, ValueError):
        password = None
    if password:
        first = first.replace(str(password), "***")  # drivers may repeat what they were given
    return StoreError(f"cannot use database {safe_url(url)}: {first}")


def current_version(conn: Connection) -> int:
    """The schema version of a database: 0 for an empty one."""
    exists = conn.execute(text(
        "SELECT 1 FROM sqlite_master WHERE type='table' AND name='schema_version'" if conn.dialect.name == "sqlite"
        else "SELECT 1 FROM information_schema.tables WHERE table_name='schema_version' "
             "AND table_schema = current_schema()")).first()
    if exists is None:
        return 0
    return int(conn.execute(text("SELECT max(version) FROM schema_version")).scalar() or 0)


def too_new(found: int) -> StoreError:
    return StoreError(f"the database's schema is version {found}, newer than this collector's "
                      f"({SCHEMA_VERSION}): upgrade weightwarden-collector before using it")


def check_version(engine: Engine, url: str) -> int:
    """Refuse a schema this binary does not know (newer) or one that needs `db upgrade` (older)."""
    try:
        with engine.connect() as conn:
            found = current_version(conn)
    except DBAPIError as exc:
        raise connect_error(url, exc) from None
    if found > SCHEMA_VERSION:
        raise too_new(found)
    if found == 0:
        raise StoreError(f"{safe_url(url)} holds no collector database (run the collector, or "
                         "`weightwarden-collector db upgrade --db URL`, to create one)")
    if found < SCHEMA_VERSION:
        raise StoreError(f"the database's schema is version {found}, this collector needs {SCHEMA_VERSION}: "
                         "run `weightwarden-collector db upgrade --db URL` (or start the collector) first")
    return found


def migrate(engine: Engine, url: str) -> tuple[int, int]:
    """Bring the schema up to date; returns (version before, version after)."""
    serial = "BIGSERIAL PRIMARY KEY" if engine.dialect.name == "postgresql" else "INTEGER PRIMARY KEY AUTOINCREMENT"
    try:
        with engine.begin() as conn:
            if engine.dialect.name == "postgresql":
                # Two collectors starting together must not both migrate.
                conn.execute(text("SELECT pg_advisory_xact_lock(7757)"))
            before = current_version(conn)
            if before > SCHEMA_VERSION:
                raise too_new(before)
            conn.execute(text("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)"))
            for number, statements in enumerate(MIGRATIONS, start=1):
                if number <= before:
                    continue
                for stmt in statements:
                    conn.execute(text(stmt.format(serial=serial, **DIALECT_SQL[engine.dialect.name])))
                conn.execute(text("INSERT INTO schema_version(version) VALUES (:v)"), {"v": number})
    except DBAPIError as exc:
        raise connect_error(url, exc) from None
    return before, SCHEMA_VERSION


def default_db_url() -> str:
    """The systemd unit's database, or $WEIGHTWARDEN_DB."""
    return os.environ.get("WEIGHTWARDEN_DB", DEFAULT_DB)


DEFAULT_DB = "sqlite:////var/lib/weightwarden-collector/collector.db"
