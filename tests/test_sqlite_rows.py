"""Multi-row inserts write exactly what one insert per row would, across chunk edges."""

from __future__ import annotations

import random
import sqlite3

import pytest

from intently.sqlite_rows import insert_flat, insert_rows


@pytest.mark.parametrize("count", [0, 1, 7, 8, 9, 2047, 2048, 2049, 10_000])
def test_insert_rows_equals_one_insert_per_row(count: int) -> None:
    rng = random.Random(count)
    rows = [(f"d{i}", rng.randrange(10**12), rng.choice([None, "p1"]), rng.uniform(-1e9, 1e9))
            for i in range(count)]  # fmt: skip
    schema = "CREATE TABLE t (seq INTEGER PRIMARY KEY, a TEXT, b INTEGER, c TEXT, d REAL)"
    batched, plain = sqlite3.connect(":memory:"), sqlite3.connect(":memory:")
    for db in (batched, plain):
        db.execute(schema)
    insert_rows(batched, "INSERT INTO t (a, b, c, d) VALUES", rows)
    plain.executemany("INSERT INTO t (a, b, c, d) VALUES (?, ?, ?, ?)", rows)
    query = "SELECT seq, a, b, c, d FROM t ORDER BY seq"
    assert batched.execute(query).fetchall() == plain.execute(query).fetchall()
    assert [row[1:] for row in batched.execute(query)] == rows  # in order, floats exact


def test_rows_that_do_not_line_up_are_refused_not_shifted() -> None:
    db = sqlite3.connect(":memory:")
    db.execute("CREATE TABLE t (a, b)")
    with pytest.raises(ValueError, match="different lengths"):
        insert_rows(db, "INSERT INTO t VALUES", [(1, 2), (3,), (4, 5, 6)])
    with pytest.raises(ValueError, match="do not make rows"):
        insert_flat(db, "INSERT INTO t VALUES", 2, [1, 2, 3])
    assert db.execute("SELECT count(*) FROM t").fetchone() == (0,)
