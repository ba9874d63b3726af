"""Many rows in one statement: what makes a batch cost a few round trips, not one per row.

The rows go as one JSON text (a list of lists), which the database unpacks in C
(``json_array_elements`` on PostgreSQL, ``json_each`` on SQLite): the driver binds one parameter
instead of thousands (and escapes nothing: arrays of text would be quoted element by element in
Python), and SQLAlchemy's per-row work disappears. Statements are built once per shape and cached.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, TextClause, text

# Column name -> PostgreSQL type, for every column bulk statements write.
_CACHE: dict[tuple[str, str, tuple[str, ...], str], TextClause] = {}


def _statement(dialect: str, table: str, columns: Sequence[tuple[str, str]], suffix: str) -> TextClause:
    key = (dialect, table, tuple(f"{c}:{t}" for c, t in columns), suffix)
    stmt = _CACHE.get(key)
    if stmt is None:
        names = ", ".join(c for c, _ in columns)
        if dialect == "postgresql":
            values = ", ".join(f"CAST(r ->> {i} AS {t})" for i, (_, t) in enumerate(columns))
            sql = f"INSERT INTO {table} ({names}) SELECT {values} FROM json_array_elements(CAST(:rows AS json)) r {suffix}"
        else:
            # WHERE true: SQLite's upsert after INSERT ... SELECT needs it (a parsing ambiguity).
            values = ", ".join(f"value ->> {i}" for i in range(len(columns)))
            sql = f"INSERT INTO {table} ({names}) SELECT {values} FROM json_each(:rows) WHERE true {suffix}"
        stmt = _CACHE[key] = text(sql)
    return stmt


def insert(conn: Connection, table: str, columns: Sequence[tuple[str, str]], rows: Sequence[Sequence[Any]],
           suffix: str = "") -> None:
    """INSERT ``rows`` (tuples in ``columns`` order) into ``table``, then ``suffix`` (an ON CONFLICT
    clause, say; rows in one call must not conflict with each other on PostgreSQL)."""
    if not rows:
        return
    stmt = _statement(conn.dialect.name, table, columns, suffix)
    conn.execute(stmt, {"rows": json.dumps(rows, separators=(",", ":"))})


def in_list(conn: Connection, values: Sequence[str]) -> tuple[str, dict[str, str | list[str]]]:
    """A condition ``<column> IN <this>`` for many values, as one parameter: (SQL, params)."""
    if conn.dialect.name == "postgresql":
        return "= ANY(:values)", {"values": list(values)}
    return "IN (SELECT value FROM json_each(:values))", {"values": json.dumps(list(values))}


def copy(conn: Connection, table: str, columns: Sequence[tuple[str, str]], rows: Sequence[Sequence[Any]]) -> None:
    """Append ``rows`` to ``table`` (no conflict handling): PostgreSQL's COPY, which takes rows in its
    own wire format with no statement to plan or JSON to unpack (the bulk of samples: raw egress rows);
    elsewhere :func:`insert`. In the connection's transaction either way."""
    if not rows:
        return
    if conn.dialect.name != "postgresql":
        insert(conn, table, columns, rows)
        return
    driver = conn.connection.driver_connection
    assert driver is not None
    with driver.cursor() as cur, cur.copy(f"COPY {table} ({', '.join(c for c, _ in columns)}) FROM STDIN") as out:
        for row in rows:
            out.write_row(row)
