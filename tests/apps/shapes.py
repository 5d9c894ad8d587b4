"""Workflows of several shapes: a diamond, two concurrent branches, context misuse."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import apiary

app = apiary.App("shapes")
app.schema("""
CREATE TABLE IF NOT EXISTS visits (workflow_id TEXT, node TEXT NOT NULL, amount INTEGER);
""")

LOG_VISIT = apiary.sql("INSERT INTO visits (workflow_id, node, amount) VALUES (?, ?, ?)")
VISITS = apiary.sql("SELECT workflow_id, node, amount FROM visits ORDER BY workflow_id, node")
COUNT_VISITS = apiary.sql("SELECT count(*) FROM visits")
# Declared, but referenced by no function: only reachable through _UNDECLARED at run time.
_UNDECLARED = {"wipe": apiary.sql("DELETE FROM visits")}

#: Both branch steps of :func:`fork` must be inside at once to pass; a scheduler that
#: ran them one after the other would break the barrier (after its timeout).
BRANCH_BARRIER = threading.Barrier(2, timeout=20)
#: ``(step, idempotency key, argument)`` per step execution.
STEP_CALLS: list[tuple[str, str | None, Any]] = []


def reset_journals() -> None:
    """Forget the step calls of earlier tests; repair the barrier."""
    STEP_CALLS.clear()
    BRANCH_BARRIER.reset()


@app.function
def seed(ctx: apiary.TxContext, x: int) -> int:
    """Root of the diamond (writes)."""
    ctx.execute(LOG_VISIT, ctx.workflow_id, "seed", x)
    return x + 1


@app.function
def double(ctx: apiary.TxContext, a: int) -> int:
    """Left branch: a read-only function."""
    row = ctx.query_one(COUNT_VISITS)
    if row is None or row[0] < 1:
        raise LookupError("the seed's visit is not visible")
    return a * 2


@app.step
def triple(ctx: apiary.StepContext, a: int) -> int:
    """Right branch: a step."""
    STEP_CALLS.append(("triple", ctx.idempotency_key, a))
    return a * 3


@app.function
def join(ctx: apiary.TxContext, left: int, right: int) -> int:
    """Join of both branches (writes)."""
    ctx.execute(LOG_VISIT, ctx.workflow_id, "join", left + right)
    return left + right


@app.workflow
def diamond(x: int):  # type: ignore[no-untyped-def]
    """seed -> (double, triple) -> join."""
    a = seed(x)
    b = double(a)
    c = triple(a)
    d = join(b, c)
    return {"a": a, "d": d}


@app.step
def branch(ctx: apiary.StepContext, side: str, x: int) -> str:
    """Meet the other branch at the barrier."""
    STEP_CALLS.append(("branch", ctx.idempotency_key, side))
    BRANCH_BARRIER.wait()
    return f"{side}:{x}"


@app.function
def meet(ctx: apiary.TxContext, left: str, right: str) -> str:
    """Join the two branches (writes)."""
    ctx.execute(LOG_VISIT, ctx.workflow_id, "meet", 0)
    return f"{left}+{right}"


@app.workflow
def fork(x: int):  # type: ignore[no-untyped-def]
    """Two independent steps that must run at the same time, then a join."""
    left = branch("left", x)
    right = branch("right", x)
    return meet(left, right)


@app.step
async def remote_square(ctx: apiary.StepContext, x: int) -> int:
    """An ``async def`` step (an external call made with an async client)."""
    STEP_CALLS.append(("remote_square", ctx.idempotency_key, x))
    await asyncio.sleep(0)
    return x * x


@app.workflow
def square_then_log(x: int):  # type: ignore[no-untyped-def]
    """A write, an async step, a write."""
    a = seed(x)
    squared = remote_square(a)
    return join(a, squared)


@app.function
def visits(ctx: apiary.TxContext) -> list[list[Any]]:
    """Every visit row (read-only)."""
    return [list(row) for row in ctx.query(VISITS)]


@app.function
def raw_at_run_time(ctx: apiary.TxContext, table: str) -> int:
    """Write, then pass a SQL string built at run time (the registrar cannot see it)."""
    ctx.execute(LOG_VISIT, ctx.workflow_id, "raw", 1)
    text = "SELECT count(*) FROM " + table
    return len(ctx.query(text))  # type: ignore[arg-type]


@app.function
def undeclared_at_run_time(ctx: apiary.TxContext, key: str) -> int:
    """Write, then run a statement fetched by a name the registrar cannot see."""
    ctx.execute(LOG_VISIT, ctx.workflow_id, "undeclared", 1)
    statements = globals()["_UNDEC" + "LARED"]
    return ctx.execute(statements[key])


@app.workflow
def misuse_raw(table: str):  # type: ignore[no-untyped-def]
    """A workflow around :func:`raw_at_run_time`."""
    return raw_at_run_time(table)


@app.workflow
def misuse_undeclared(key: str):  # type: ignore[no-untyped-def]
    """A workflow around :func:`undeclared_at_run_time`."""
    return undeclared_at_run_time(key)
