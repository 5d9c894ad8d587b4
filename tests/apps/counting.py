"""A counter app whose side effects prove (or disprove) exactly-once execution.

Every execution of a writing function adds a row to ``effects`` (no unique constraint, so
a second execution of the same call shows as a second row) and adds to a counter. Steps
append to :data:`STEP_CALLS`; a test may hook :data:`STEP_HOOKS` to look at the database
while a workflow is between two of its transactions.

Error messages of the failing functions quote the counter as the database holds it when
they run, so a re-execution (rather than the replay of a recorded error) would give
another message.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import apiary

app = apiary.App("counting")
app.schema("""
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, total INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS effects (workflow_id TEXT, fn TEXT NOT NULL, name TEXT,
                                    amount INTEGER);
""")

ADD = apiary.sql(
    "INSERT INTO counters (name, total) VALUES (?, ?) "
    "ON CONFLICT (name) DO UPDATE SET total = counters.total + excluded.total"
)
TOTAL = apiary.sql("SELECT total FROM counters WHERE name = ?")
LOG_EFFECT = apiary.sql("INSERT INTO effects (workflow_id, fn, name, amount) VALUES (?, ?, ?, ?)")
ALL_TOTALS = apiary.sql("SELECT name, total FROM counters ORDER BY name")
ALL_EFFECTS = apiary.sql(
    "SELECT workflow_id, fn, name, amount FROM effects "
    "ORDER BY coalesce(workflow_id, ''), fn, name, amount"
)

#: ``(step, idempotency key, argument)`` for every execution of a step, in order.
STEP_CALLS: list[tuple[str, str | None, Any]] = []
#: Called by :func:`notify` with its context, before it returns.
STEP_HOOKS: list[Callable[[apiary.StepContext], None]] = []


def reset_journals() -> None:
    """Forget the step calls and hooks of earlier tests."""
    STEP_CALLS.clear()
    STEP_HOOKS.clear()


class QuotaExceededError(Exception):
    """Application error: a counter would pass its limit."""


def _add(ctx: apiary.TxContext, fn: str, name: str, amount: int) -> int:
    ctx.execute(LOG_EFFECT, ctx.workflow_id, fn, name, amount)
    ctx.execute(ADD, name, amount)
    row = ctx.query_one(TOTAL, name)
    assert row is not None
    return int(row[0])


@app.function
def bump(ctx: apiary.TxContext, name: str, amount: int) -> int:
    """Add ``amount`` to counter ``name``; return its new total."""
    return _add(ctx, "bump", name, amount)


@app.function
def bump_then_fail(ctx: apiary.TxContext, name: str, amount: int) -> int:
    """Write, then raise: the writes must be rolled back."""
    total = _add(ctx, "bump_then_fail", name, amount)
    raise QuotaExceededError(f"{name} would reach {total}")


@app.function
def enforce_limit(ctx: apiary.TxContext, name: str, total: int, limit: int) -> int:
    """Write an effect, then refuse a total over ``limit`` (quoting the stored total)."""
    ctx.execute(LOG_EFFECT, ctx.workflow_id, "enforce_limit", name, total)
    if total > limit:
        row = ctx.query_one(TOTAL, name)
        raise QuotaExceededError(f"{name} is at {row[0] if row else None}, over {limit}")
    return total


@app.function
def peek(ctx: apiary.TxContext, name: str) -> int | None:
    """The total of a counter (read-only)."""
    row = ctx.query_one(TOTAL, name)
    return None if row is None else int(row[0])


@app.function
def totals(ctx: apiary.TxContext) -> dict[str, int]:
    """Every counter (read-only)."""
    return {name: int(total) for name, total in ctx.query(ALL_TOTALS)}


@app.function
def effects(ctx: apiary.TxContext) -> list[list[Any]]:
    """Every effect row (read-only)."""
    return [list(row) for row in ctx.query(ALL_EFFECTS)]


@app.function
def whoami(ctx: apiary.TxContext, tag: str, previous: Any) -> dict[str, Any]:
    """Write an effect and report the context's IDs."""
    ctx.execute(LOG_EFFECT, ctx.workflow_id, "whoami", tag, 0)
    return {"workflow_id": ctx.workflow_id, "invocation_id": ctx.invocation_id}


@app.step
def notify(ctx: apiary.StepContext, name: str, total: int) -> str:
    """Stand-in for a notification service."""
    STEP_CALLS.append(("notify", ctx.idempotency_key, total))
    for hook in list(STEP_HOOKS):
        hook(ctx)
    return f"{name} reached {total}"


@app.step
def notify_unique(ctx: apiary.StepContext, name: str, total: int) -> str:
    """A step whose output differs on every execution (a service's receipt number)."""
    STEP_CALLS.append(("notify_unique", ctx.idempotency_key, total))
    return f"{name} reached {total}, receipt {uuid.uuid4().hex}"


@app.step
def refuse_mail(ctx: apiary.StepContext, total: int) -> str:
    """A step whose service is down."""
    STEP_CALLS.append(("refuse_mail", ctx.idempotency_key, total))
    raise ConnectionRefusedError(f"mail server refused total {total}")


@app.workflow
def count(name: str, amount: int):  # type: ignore[no-untyped-def]
    """Add to a counter, then notify."""
    total = bump(name, amount)
    note = notify(name, total)
    return {"total": total, "note": note}


@app.workflow
def count_unique(name: str, amount: int):  # type: ignore[no-untyped-def]
    """Add to a counter, then notify through a step with a unique receipt."""
    total = bump(name, amount)
    note = notify_unique(name, total)
    return {"total": total, "note": note}


@app.workflow
def count_failing(name: str, amount: int):  # type: ignore[no-untyped-def]
    """A single function that writes and then raises."""
    return bump_then_fail(name, amount)


@app.workflow
def count_then_limit(name: str, amount: int, limit: int):  # type: ignore[no-untyped-def]
    """Add, notify, then enforce a limit in a transaction of its own."""
    total = bump(name, amount)
    notify(name, total)
    return enforce_limit(name, total, limit)


@app.workflow
def count_within_limit(name: str, amount: int, limit: int):  # type: ignore[no-untyped-def]
    """Add and enforce a limit in one multi-function transaction."""
    with apiary.transaction():
        total = bump(name, amount)
        checked = enforce_limit(name, total, limit)
    return checked


@app.workflow
def count_then_mail(name: str, amount: int):  # type: ignore[no-untyped-def]
    """Add, then call a step that fails."""
    total = bump(name, amount)
    return refuse_mail(total)


@app.workflow
def peek_total(name: str):  # type: ignore[no-untyped-def]
    """A read-only workflow."""
    return peek(name)


@app.workflow
def identify(tag: str):  # type: ignore[no-untyped-def]
    """Context IDs: two calls in one group, a step, and a third call on its own."""
    with apiary.transaction():
        first = whoami(tag, None)
        second = whoami(tag, first)
    note = notify(tag, 0)
    third = whoami(tag, note)
    return {"first": first, "second": second, "third": third}
