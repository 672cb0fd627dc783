"""Writing many rows to SQLite from a worker thread without stalling the event loop.

`executemany` steps once per row, and every step gives up the GIL and must take it back
from the thread serving requests, waiting up to the 5 ms switch interval each time while
that thread is busy. A write of a few hundred rows that way showed up as
multi-millisecond stalls in request latency (the embedded store), and under a busy
decide load the decision log's writer fell behind by tens of thousands of records.
Multi-row statements take the GIL back a handful of times per write instead.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any

ROWS_PER_STATEMENT = 256


def insert_rows(db: sqlite3.Connection, insert: str, rows: Sequence[Sequence[Any]]) -> None:
    """Run `insert` (e.g. "INSERT INTO t (a, b) VALUES") for every row, a few hundred
    rows per statement. Every row must have the same number of values."""
    if not rows:
        return
    placeholders = "(" + ", ".join(["?"] * len(rows[0])) + ")"
    for start in range(0, len(rows), ROWS_PER_STATEMENT):
        chunk = rows[start : start + ROWS_PER_STATEMENT]
        values = ",".join([placeholders] * len(chunk))
        db.execute(f"{insert} {values}", [value for row in chunk for value in row])
