"""An app for the PostgreSQL engine's own tests: where code runs, errors, many writes.

Its functions run inside the database with ``placement=db``: ``os.getpid()`` there is the
backend's process ID.
"""

from __future__ import annotations

import os

import apiary

app = apiary.App("pg_engine")
app.schema("""
CREATE TABLE IF NOT EXISTS pe_items (id INTEGER PRIMARY KEY, note TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS pe_side (tag TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS pe_a (id INTEGER PRIMARY KEY);
CREATE TABLE IF NOT EXISTS pe_b (id INTEGER PRIMARY KEY, a_id INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS pe_many (batch TEXT NOT NULL, n INTEGER NOT NULL);
""")

BACKEND_PID = apiary.sql("SELECT pg_backend_pid()")
ADD_ITEM = apiary.sql("INSERT INTO pe_items (id, note) VALUES (?, ?)")
ADD_SIDE = apiary.sql("INSERT INTO pe_side (tag) VALUES (?)")
COUNT_ITEMS = apiary.sql("SELECT count(*) FROM pe_items")
COUNT_SIDE = apiary.sql("SELECT count(*) FROM pe_side WHERE tag LIKE ?")
ADD_A = apiary.sql("INSERT INTO pe_a (id) VALUES (?)")
ADD_B = apiary.sql("INSERT INTO pe_b (id, a_id) VALUES (?, ?)")
# Two result columns named "id": PL/Python returns rows as dicts, which would merge them.
PAIRS = apiary.sql("SELECT a.id, b.id FROM pe_a a JOIN pe_b b ON b.a_id = a.id ORDER BY b.id")
ADD_MANY = apiary.sql("INSERT INTO pe_many (batch, n) VALUES (?, ?)")
COUNT_MANY = apiary.sql("SELECT count(*), count(DISTINCT n) FROM pe_many WHERE batch = ?")


@app.function
def whereami(ctx: apiary.TxContext) -> list[int]:
    """The process the function body runs in, and the backend serving its transaction."""
    row = ctx.query_one(BACKEND_PID)
    assert row is not None
    return [os.getpid(), int(row[0])]


@app.function
def fail(ctx: apiary.TxContext, message: str) -> None:
    """An application error."""
    raise ValueError(message)


@app.function
def swallow_duplicate(ctx: apiary.TxContext, key: int) -> str:
    """Write, then insert a duplicate key and swallow the error, then write again."""
    ctx.execute(ADD_ITEM, key, "first")
    ctx.execute(ADD_SIDE, "before")
    try:  # noqa: SIM105 - the pitfall under test is exactly this shape
        ctx.execute(ADD_ITEM, key, "again")
    except Exception:
        pass
    try:  # noqa: SIM105
        ctx.execute(ADD_SIDE, "after")
    except Exception:
        pass
    return "swallowed"


@app.function
def counts(ctx: apiary.TxContext) -> list[int]:
    """Rows in ``pe_items`` and in ``pe_side`` (read-only)."""
    items = ctx.query_one(COUNT_ITEMS)
    side = ctx.query_one(COUNT_SIDE, "%")
    assert items is not None
    assert side is not None
    return [int(items[0]), int(side[0])]


@app.function
def make_pairs(ctx: apiary.TxContext) -> int:
    """Rows for :func:`pairs`: a 1 with b 10 and 11, a 2 with b 20."""
    for a in (1, 2):
        ctx.execute(ADD_A, a)
    for b, a in ((10, 1), (11, 1), (20, 2)):
        ctx.execute(ADD_B, b, a)
    return 3


@app.function
def pairs(ctx: apiary.TxContext) -> list[list[int]]:
    """A join whose two columns share the name ``id``."""
    return [list(row) for row in ctx.query(PAIRS)]


@app.function
def many_writes(ctx: apiary.TxContext, batch: str, n: int) -> int:
    """``n`` inserts in one transaction (PL/Python runs each in a subtransaction)."""
    for i in range(n):
        ctx.execute(ADD_MANY, batch, i)
    return n


@app.function
def count_many(ctx: apiary.TxContext, batch: str) -> list[int]:
    """Rows of a batch, and distinct values among them."""
    row = ctx.query_one(COUNT_MANY, batch)
    assert row is not None
    return [int(row[0]), int(row[1])]


@app.function
def double(ctx: apiary.TxContext, tag: str, n: int) -> int:
    """Write a row tagged ``tag`` and return ``2 * n``."""
    ctx.execute(ADD_SIDE, tag)
    return 2 * n


@app.function
def plus_one(ctx: apiary.TxContext, n: int) -> int:
    """``n + 1`` (no statements: read-only)."""
    return n + 1


@app.function
def count_tagged(ctx: apiary.TxContext, pattern: str) -> int:
    """Rows of ``pe_side`` whose tag matches a LIKE pattern."""
    row = ctx.query_one(COUNT_SIDE, pattern)
    assert row is not None
    return int(row[0])


@app.workflow
def doubled(tag: str, n: int):  # type: ignore[no-untyped-def]
    """A writing function, then a read-only one: ``2 * n + 1``."""
    return plus_one(double(tag, n))


ISOLATION = apiary.sql("SELECT current_setting('transaction_isolation')")


@app.function
def note_isolation(ctx: apiary.TxContext, tag: str) -> str:
    """Write a row tagged ``tag``; return the transaction's isolation level."""
    ctx.execute(ADD_SIDE, tag)
    row = ctx.query_one(ISOLATION)
    assert row is not None
    return str(row[0])


@app.step
def echo(ctx: apiary.StepContext, value: str) -> str:
    """A step: the workflow ends in a transaction of its own after it."""
    return value


@app.workflow
def isolation_then_step(tag: str):  # type: ignore[no-untyped-def]
    """A writing unit, then a step."""
    return echo(note_isolation(tag))
