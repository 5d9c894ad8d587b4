"""An app with a statement whose parameter type PostgreSQL cannot infer."""

from __future__ import annotations

import apiary

app = apiary.App("pg_ambiguous")

IS_NULL = apiary.sql("SELECT ? IS NULL")


@app.function
def is_null(ctx: apiary.TxContext, value: int | None) -> bool:
    """Whether ``value`` is NULL, asked of the database."""
    row = ctx.query_one(IS_NULL, value)
    return bool(row and row[0])
