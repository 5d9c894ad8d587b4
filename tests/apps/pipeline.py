"""The crash-test app: a write, a step, a write; every execution leaves a visible trace.

``events`` has no unique constraint: a function executed twice for one workflow leaves
two rows. ``totals`` adds each workflow's item once per function.
"""

from __future__ import annotations

import time
from typing import Any

import apiary
from tests.apps import die_if_asked

app = apiary.App("pipeline")
app.schema("""
CREATE TABLE IF NOT EXISTS events (workflow_id TEXT NOT NULL, fn TEXT NOT NULL,
                                   item INTEGER NOT NULL, note TEXT);
CREATE TABLE IF NOT EXISTS totals (name TEXT PRIMARY KEY, total INTEGER NOT NULL);
""")

LOG_EVENT = apiary.sql("INSERT INTO events (workflow_id, fn, item, note) VALUES (?, ?, ?, ?)")
ADD = apiary.sql(
    "INSERT INTO totals (name, total) VALUES (?, ?) "
    "ON CONFLICT (name) DO UPDATE SET total = totals.total + excluded.total"
)
TOTAL = apiary.sql("SELECT total FROM totals WHERE name = ?")
EVENT_COUNTS = apiary.sql(
    "SELECT workflow_id, fn, count(*), min(note), max(note) FROM events "
    "GROUP BY workflow_id, fn ORDER BY workflow_id, fn"
)


@app.function
def first(ctx: apiary.TxContext, item: int) -> int:
    """Log, add the item, return it doubled."""
    ctx.execute(LOG_EVENT, ctx.workflow_id, "first", item, None)
    ctx.execute(ADD, "sum", item)
    return item * 2


@app.step
def stamp(ctx: apiary.StepContext, doubled: int) -> dict[str, Any]:
    """A step between the two writes (a child may be told to die here)."""
    die_if_asked("stamp", (ctx.idempotency_key, doubled))
    # A pause like a real external call's: it keeps the crash children's pace (and the
    # parent's retries) modest, and widens the window between the two writes.
    time.sleep(0.002)
    return {"key": ctx.idempotency_key, "doubled": doubled}


@app.function
def second(ctx: apiary.TxContext, item: int, stamped: dict[str, Any]) -> int:
    """Log with the step's idempotency key, add the item again, return doubled + 1."""
    ctx.execute(LOG_EVENT, ctx.workflow_id, "second", item, stamped["key"])
    ctx.execute(ADD, "sum", item)
    return int(stamped["doubled"]) + 1


@app.workflow
def process(item: int):  # type: ignore[no-untyped-def]
    """first -> stamp -> second; the output is ``2 * item + 1``."""
    doubled = first(item)
    stamped = stamp(doubled)
    return second(item, stamped)


@app.function
def event_counts(ctx: apiary.TxContext) -> list[list[Any]]:
    """``[workflow_id, fn, executions, min(note), max(note)]`` per workflow and function."""
    return [list(row) for row in ctx.query(EVENT_COUNTS)]


@app.function
def total(ctx: apiary.TxContext) -> int:
    """The sum of every item added (twice per workflow)."""
    row = ctx.query_one(TOTAL, "sum")
    return 0 if row is None else int(row[0])


def workflow_id(item: int) -> str:
    """The ID under which the crash tests run ``process(item)``."""
    return f"w-{item}"
