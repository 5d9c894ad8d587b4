"""An app whose schema is written in SQLite's dialect, as most embedded apps start out.

``INTEGER PRIMARY KEY AUTOINCREMENT`` and ``BLOB`` do not exist in PostgreSQL; the
PostgreSQL engine installs the schema through sqlglot's translation.
"""

from __future__ import annotations

import apiary

app = apiary.App("notes")
app.schema("""
CREATE TABLE IF NOT EXISTS notes (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    body TEXT NOT NULL,
    attachment BLOB
);
""")

ADD = apiary.sql("INSERT INTO notes (body, attachment) VALUES (?, ?) RETURNING id")
ALL = apiary.sql("SELECT id, body, attachment FROM notes ORDER BY id")


@app.function
def add_note(ctx: apiary.TxContext, body: str, attachment: bytes | None = None) -> int:
    """Store a note; return its generated ID."""
    row = ctx.query_one(ADD, body, attachment)
    assert row is not None
    return int(row[0])


@app.function
def list_notes(ctx: apiary.TxContext) -> list[list[object]]:
    """Every note, oldest first."""
    return [list(row) for row in ctx.query(ALL)]


@app.workflow
def keep(body: str):  # type: ignore[no-untyped-def]
    """Store a note exactly once per workflow ID."""
    return add_note(body)
