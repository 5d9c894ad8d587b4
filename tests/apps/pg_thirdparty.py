"""An app whose module imports a package the database server's Python does not have."""

from __future__ import annotations

from typing import Any

import psycopg  # installed here, not in the server's Python

import apiary

app = apiary.App("pg_thirdparty")
app.schema("CREATE TABLE IF NOT EXISTS tp_items (id INTEGER PRIMARY KEY);")

COUNT = apiary.sql("SELECT count(*) FROM tp_items")


@app.function
def which(ctx: apiary.TxContext) -> list[Any]:
    """The package's name and the table's size."""
    row = ctx.query_one(COUNT)
    assert row is not None
    return [psycopg.__name__, int(row[0])]
