"""The app the client library's tests run on a real frontend.

Every execution of :func:`bump` adds a row to ``effects`` (no unique constraint, so a
second execution of one workflow's call shows as a second row): ``count_effects`` tells a
test how many times a workflow's write took effect. The step :func:`pause` sleeps when a
test asks it to, so that a first attempt outlasts the client's timeout.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import apiary

app = apiary.App("client_app")
app.schema("""
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, total INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS effects (workflow_id TEXT NOT NULL, name TEXT NOT NULL,
                                    amount INTEGER NOT NULL);
""")

ADD = apiary.sql(
    "INSERT INTO counters (name, total) VALUES (?, ?) "
    "ON CONFLICT (name) DO UPDATE SET total = counters.total + excluded.total"
)
TOTAL = apiary.sql("SELECT total FROM counters WHERE name = ?")
LOG_EFFECT = apiary.sql("INSERT INTO effects (workflow_id, name, amount) VALUES (?, ?, ?)")
EFFECTS_OF = apiary.sql("SELECT count(*) FROM effects WHERE workflow_id = ?")

#: Seconds the next executions of :func:`pause` sleep, one entry each (tests fill it).
PAUSES: list[float] = []
#: Set by :func:`pause` when it starts sleeping.
PAUSED = threading.Event()
#: How many times :func:`pause` ran.
PAUSE_RUNS: list[str | None] = []


class QuotaError(Exception):
    """Application error: a counter may not grow by that much."""


@app.function
def bump(ctx: apiary.TxContext, name: str, amount: int) -> dict[str, Any]:
    """Add ``amount`` to counter ``name``; return its total and the workflow ID."""
    ctx.execute(LOG_EFFECT, ctx.workflow_id, name, amount)
    ctx.execute(ADD, name, amount)
    row = ctx.query_one(TOTAL, name)
    assert row is not None
    return {"total": int(row[0]), "workflow_id": ctx.workflow_id}


@app.function
def refuse(ctx: apiary.TxContext, name: str, amount: int) -> int:
    """Write, then raise: the write is rolled back and the workflow ends ERROR."""
    ctx.execute(LOG_EFFECT, ctx.workflow_id, name, amount)
    raise QuotaError(f"{name} may not grow by {amount}")


@app.function
def effects_of(ctx: apiary.TxContext, run_id: str) -> int:
    """How many times the :func:`bump` of workflow ``run_id`` took effect (read-only)."""
    row = ctx.query_one(EFFECTS_OF, run_id)
    return 0 if row is None else int(row[0])


@app.function
def echo_value(ctx: apiary.TxContext, value: Any) -> Any:
    """Return the value (read-only): tagged codec values must survive both ways."""
    return value


@app.step
def pause(ctx: apiary.StepContext, result: dict[str, Any]) -> dict[str, Any]:
    """Sleep as long as the next entry of :data:`PAUSES` says, then pass ``result`` on."""
    PAUSE_RUNS.append(ctx.idempotency_key)
    if PAUSES:
        seconds = PAUSES.pop(0)
        PAUSED.set()
        time.sleep(seconds)
    return result


@app.workflow
def add(name: str, amount: int):  # type: ignore[no-untyped-def]
    """Add to a counter."""
    return bump(name, amount)


@app.workflow
def add_slowly(name: str, amount: int):  # type: ignore[no-untyped-def]
    """Add to a counter, then a step that may be told to take its time."""
    return pause(bump(name, amount))


@app.workflow
def add_over_quota(name: str, amount: int):  # type: ignore[no-untyped-def]
    """A function that raises."""
    return refuse(name, amount)


@app.workflow
def count_effects(run_id: str):  # type: ignore[no-untyped-def]
    """How many times workflow ``run_id``'s write took effect (read-only: no status row)."""
    return effects_of(run_id)


@app.workflow
def echo(value: Any):  # type: ignore[no-untyped-def]
    """Return the value (read-only)."""
    return echo_value(value)


def reset() -> None:
    """Forget what earlier tests asked of :func:`pause`."""
    PAUSES.clear()
    PAUSED.clear()
    PAUSE_RUNS.clear()
