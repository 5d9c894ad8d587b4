"""Counter: read and increment a key (the Apiary paper's microbenchmark).

Operations (``MIX``: 50% read, 50% increment), keys uniformly at random:

* ``read(counter_id)``: read-only; the counter's value.
* ``increment(counter_id)``: add one; returns the new value.

Data (``SCALES``): ``keys`` counters at 0. Default: 100,000 keys; ``tiny``: 1,000.

Invariants checked after a run: the counters add up to the ``increment`` calls that
answered; none is below 0.

``logged_app`` adds manual logging (one ``app_log`` row per statement; see
:mod:`apiary._bench.hotel`). Standard library and ``apiary`` only: shipped into
PostgreSQL. SQL texts are module constants (``*_SQL``) for the baselines.
"""

# Workflow bodies call functions without their context: the registrar traces the calls.
# mypy: disable-error-code="call-arg, arg-type"

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import apiary

NAME = "counter"

SCALES: dict[str, dict[str, int]] = {
    "tiny": {"keys": 1_000},
    "default": {"keys": 100_000},
}

MIX: dict[str, float] = {"read": 0.5, "increment": 0.5}

SCHEMA = """
CREATE TABLE IF NOT EXISTS counters (
    counter_id INTEGER PRIMARY KEY,
    value      INTEGER NOT NULL
);
"""

LOG_SCHEMA = """
CREATE TABLE IF NOT EXISTS app_log (
    invocation_id TEXT,
    function      TEXT NOT NULL,
    op            TEXT NOT NULL,
    tbl           TEXT NOT NULL,
    row_keys      TEXT NOT NULL,
    logged_at     DOUBLE PRECISION NOT NULL
);
"""

READ_SQL = "SELECT value FROM counters WHERE counter_id = ?"
INCREMENT_SQL = "UPDATE counters SET value = value + 1 WHERE counter_id = ? RETURNING value"
LOG_SQL = (
    "INSERT INTO app_log (invocation_id, function, op, tbl, row_keys, logged_at) "
    "VALUES (?, ?, ?, ?, ?, ?)"
)

READ = apiary.sql(READ_SQL)
INCREMENT = apiary.sql(INCREMENT_SQL)
LOG = apiary.sql(LOG_SQL)


def _log(ctx: apiary.TxContext, log: Any, function: str, op: str, table: str, keys: Any) -> None:
    """Manual logging: one ``app_log`` row per statement (only in ``logged_app``)."""
    if log is not None:
        ctx.execute(log, ctx.invocation_id, function, op, table, json.dumps(keys), time.time())


def _build(name: str, *, logged: bool) -> apiary.App:
    """The counter app; with ``logged``, every function also logs what it read and wrote."""
    app = apiary.App(name)
    app.schema(SCHEMA + (LOG_SCHEMA if logged else ""))
    log = LOG if logged else None

    @app.function
    def get_value(ctx: apiary.TxContext, counter_id: int) -> int | None:
        """The counter's value."""
        row = ctx.query_one(READ, counter_id)
        _log(ctx, log, "get_value", "read", "counters", [counter_id])
        return None if row is None else int(row[0])

    @app.function
    def add_one(ctx: apiary.TxContext, counter_id: int) -> int | None:
        """Add one to the counter; its new value."""
        row = ctx.query_one(INCREMENT, counter_id)
        _log(ctx, log, "add_one", "update", "counters", [counter_id])
        return None if row is None else int(row[0])

    @app.workflow
    def read(counter_id: int):  # type: ignore[no-untyped-def]
        """Read a counter (read-only)."""
        return get_value(counter_id)

    @app.workflow
    def increment(counter_id: int):  # type: ignore[no-untyped-def]
        """Increment a counter."""
        return add_one(counter_id)

    return app


app = _build("bench_counter", logged=False)
logged_app = _build("bench_counter_logged", logged=True)


def data(p: Mapping[str, int]) -> Iterator[tuple[str, Sequence[str], Iterator[tuple[Any, ...]]]]:
    """The initial rows: ``(table, columns, rows)`` per table."""
    yield "counters", ("counter_id", "value"), ((k, 0) for k in range(1, p["keys"] + 1))


def operation(
    op: str, rng: random.Random, p: Mapping[str, int], uid: str
) -> tuple[str, dict[str, Any]]:
    """The workflow and arguments of one ``op``; ``uid`` is unique to this operation."""
    return op, {"counter_id": rng.randint(1, p["keys"])}


def check(
    query: Callable[[str], list[tuple[Any, ...]]], p: Mapping[str, int], done: Mapping[str, int]
) -> str:
    """Check the invariants after a run (see the module docstring); return a summary."""
    total, lowest = query("SELECT coalesce(sum(value), 0), min(value) FROM counters")[0]
    if lowest is None or lowest < 0:
        raise AssertionError(f"counter: a counter is at {lowest}")
    if total != done.get("increment", 0):
        raise AssertionError(
            f"counter: counters add up to {total}, {done.get('increment', 0)} increments answered"
        )
    return f"counters add up to {total:,} = increments answered; none below 0"
