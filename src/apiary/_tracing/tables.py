"""The app's tables, read from its schema with sqlglot: columns, types, primary keys.

Tracing records the rows a function touched, keyed by each table's primary key, and the
trace store gives each table ``T`` an event table ``T_events`` with ``T``'s own columns,
typed. Both come from here, at registration, from the DDL the app declared with
``app.schema()``. A table without a declared primary key is keyed by all its columns.
Tables the app did not declare (made by other tools) are traced per statement, not per row.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import sqlglot
from sqlglot import exp
from sqlglot.errors import ParseError, TokenError


@dataclass(frozen=True)
class TableInfo:
    """A table of the app: its columns in order, their declared types, its primary key."""

    name: str
    columns: tuple[str, ...]
    types: tuple[str, ...]
    primary_key: tuple[str, ...]

    def to_json(self) -> list[object]:
        """The table as JSON data (shipped with compiled statements)."""
        return [self.name, list(self.columns), list(self.types), list(self.primary_key)]


def _parse(ddl: str) -> list[Any]:
    for dialect in ("sqlite", "postgres", None):
        try:
            return [e for e in sqlglot.parse(ddl, read=dialect) if e is not None]
        except (ParseError, TokenError):
            continue
    return []


def _table(create: exp.Create) -> TableInfo | None:
    schema = create.this
    if not isinstance(schema, exp.Schema) or not isinstance(schema.this, exp.Table):
        return None  # CREATE TABLE ... AS SELECT: no declared columns
    columns: list[str] = []
    types: list[str] = []
    key: list[str] = []
    for item in schema.expressions:
        if isinstance(item, exp.ColumnDef):
            columns.append(item.name.lower())
            kind = item.args.get("kind")
            types.append(kind.sql() if kind is not None else "")
            if any(isinstance(c.kind, exp.PrimaryKeyColumnConstraint) for c in item.constraints):
                key.append(item.name.lower())
        elif isinstance(item, exp.PrimaryKey):
            key = [part.name.lower() for part in item.expressions]
    if not columns:
        return None
    return TableInfo(schema.this.name.lower(), tuple(columns), tuple(types), tuple(key or columns))


def tables_of(ddls: Iterable[str]) -> dict[str, TableInfo]:
    """Every table the DDL creates, by lower-case name (later definitions win)."""
    found: dict[str, TableInfo] = {}
    for ddl in ddls:
        for statement in _parse(ddl):
            if isinstance(statement, exp.Create) and str(statement.kind).upper() == "TABLE":
                table = _table(statement)
                if table is not None:
                    found[table.name] = table
    return found


def table_from_json(data: Sequence[object]) -> TableInfo:
    """The inverse of :meth:`TableInfo.to_json`."""
    name, columns, types, key = data
    return TableInfo(
        str(name),
        tuple(columns),  # type: ignore[arg-type]
        tuple(types),  # type: ignore[arg-type]
        tuple(key),  # type: ignore[arg-type]
    )
