"""A row of many PostgreSQL column types, returned by functions and through a workflow."""

from __future__ import annotations

from typing import Any

import apiary

app = apiary.App("pg_values")
app.schema("""
CREATE TABLE IF NOT EXISTS pv_typed (
    k     TEXT PRIMARY KEY,
    i     INTEGER,
    b     BIGINT,
    n     NUMERIC(10, 2),
    d     DOUBLE PRECISION,
    t     TEXT,
    f     BOOLEAN,
    raw   BYTEA,
    day   DATE,
    ts    TIMESTAMP,
    tstz  TIMESTAMPTZ,
    doc   JSONB,
    id    UUID,
    nums  INTEGER[]
);
""")

PUT_FULL = apiary.sql(
    "INSERT INTO pv_typed (k, i, b, n, d, t, f, raw, day, ts, tstz, doc, id, nums) VALUES "
    "(?, -42, 9007199254740993, 12.30, 0.1, 'h\u00e9llo \U0001f41d', true, '\\x00ff10'::bytea, "
    "DATE '2026-02-28', TIMESTAMP '2026-01-02 03:04:05.678901', "
    "TIMESTAMPTZ '2026-01-02 03:04:05.5+02', '{\"b\": [true, null], \"a\": 1.5}'::jsonb, "
    "'12345678-1234-5678-1234-567812345678'::uuid, '{1,NULL,3}'::integer[]) "
    "ON CONFLICT (k) DO NOTHING"
)
PUT_NULLS = apiary.sql("INSERT INTO pv_typed (k) VALUES (?) ON CONFLICT (k) DO NOTHING")
GET = apiary.sql(
    "SELECT i, b, n, d, t, f, raw, day, ts, tstz, doc, id, nums FROM pv_typed WHERE k = ?"
)

COLUMNS = ("i", "b", "n", "d", "t", "f", "raw", "day", "ts", "tstz", "doc", "id", "nums")


@app.function
def store(ctx: apiary.TxContext, key: str, filled: bool) -> list[Any]:
    """Insert the typed row (or one of NULLs) under ``key`` and return it."""
    ctx.execute(PUT_FULL if filled else PUT_NULLS, key)
    row = ctx.query_one(GET, key)
    assert row is not None
    return list(row)


@app.function
def fetch(ctx: apiary.TxContext, key: str) -> list[Any] | None:
    """The row under ``key`` (read-only)."""
    row = ctx.query_one(GET, key)
    return None if row is None else list(row)


@app.function
def label(ctx: apiary.TxContext, row: list[Any]) -> dict[str, Any]:
    """The row by column name (no statements: runs on what the first unit returned)."""
    return dict(zip(COLUMNS, row, strict=True))


@app.workflow
def typed_flow(key: str, filled: bool):  # type: ignore[no-untyped-def]
    """Store the row in one unit and pass it to a second one."""
    return label(store(key, filled))
