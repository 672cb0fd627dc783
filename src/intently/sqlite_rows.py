"""Writing many rows to SQLite from a worker thread without stalling the event loop.

Python's sqlite3 gives up the GIL around every statement step and must take it back from
the thread serving requests, waiting up to the 5 ms switch interval each time while that
thread is busy. `executemany` steps once per row: a write of a few hundred rows that way
showed up as multi-millisecond stalls in request latency (the state store), halved
batched ingest (the event log), and let the decision log's writer fall behind under a
busy decide load. One multi-row `INSERT ... VALUES (...),(...)` per chunk takes the GIL
back a handful of times per write instead. Chunks have fixed sizes, largest first, so
the few statements stay prepared in the connection's cache.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

CHUNKS = (2048, 512, 128, 32, 8, 1)


def insert_flat(db: sqlite3.Connection, insert: str, columns: int, values: list[Any]) -> None:
    """Run `insert` (e.g. "INSERT INTO t (a, b) VALUES") for rows of `columns` values
    each, flattened into `values` in row order."""
    limit = db.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
    if columns < 1 or columns > limit or len(values) % columns:
        raise ValueError(f"{len(values)} values do not make rows of {columns} (at most {limit})")
    start, total = 0, len(values) // columns
    for size in CHUNKS:
        if size * columns > limit:
            continue
        statement = _statement(insert, columns, size)
        while total - start >= size:
            end = start + size
            db.execute(statement, values[start * columns : end * columns])
            start = end


def insert_rows(db: sqlite3.Connection, insert: str, rows: Sequence[Sequence[Any]]) -> None:
    """`insert_flat` for rows given as sequences (all of the same length)."""
    if rows:
        columns = len(rows[0])
        if any(len(row) != columns for row in rows):
            raise ValueError(f"rows of different lengths (the first has {columns} values)")
        insert_flat(db, insert, columns, [value for row in rows for value in row])


@lru_cache(maxsize=256)
def _statement(insert: str, columns: int, rows: int) -> str:
    placeholders = "(" + ",".join(["?"] * columns) + ")"
    return f"{insert} {','.join([placeholders] * rows)}"
