"""Capturing what each function read and wrote, inside its own transaction (tracing).

At registration every statement gets a *capture plan* (made with sqlglot on the client,
shipped as JSON into PostgreSQL):

* ``rows``: the statement runs as a variant that returns extra columns at the end of each
  row: a write (INSERT, UPDATE, DELETE) ``RETURNING`` the written table's columns (the
  row after an insert or update, before a delete), a read the primary key of every table
  it reads. The extra columns are cut off before the application sees the rows.
* ``statement``: the statement is recorded with the tables it touches, without rows
  (aggregates, DISTINCT, set operations, subqueries: reads that cannot name their rows).

A :class:`UnitTrace` collects, during one unit, one entry per function execution and one
event per statement run (holding the captured columns of every row it returned), as one
JSON document. A unit whose transaction writes stages it
with **one** statement in that same transaction: the trace of a write exists exactly when
the transaction committed. A read-only unit's transaction stays read-only (on SQLite it
runs on a snapshot, without the write lock; on PostgreSQL it needs no WAL flush at
commit): its document is handed back with the outcome, and the engine stages such
documents in batches, in transactions of their own, a fraction of a second later
(:func:`stage_rows`). A crash in between loses those reads' traces, never a write's. The
spooler moves staged documents to the DuckDB trace store.

Part of the execution core: standard library only (it also runs inside PostgreSQL).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

from apiary import _codec
from apiary._database import Database, Statement

ROWS, STATEMENT = "rows", "statement"

STAGE_TRACE = Statement(
    "INSERT INTO {sys}trace_staging (workflow_id, invocation_id, payload, created_at) "
    "VALUES (?, ?, ?, ?)",
    system=True,
)


class CapturePlan:
    """How one statement is captured (see the module docstring); plain data.

    Attributes:
        mode: ``"rows"`` or ``"statement"``.
        op: ``read``, ``insert``, ``update`` or ``delete`` (an upsert is ``insert``).
        tables: every table the statement touches.
        variant: the statement to run instead (``rows`` mode), returning ``extra``
            more columns, which ``groups`` split: ``[table, [columns...]]`` each.
    """

    __slots__ = ("entry", "extra", "groups", "mode", "op", "tables", "variant")

    def __init__(
        self,
        mode: str,
        op: str,
        tables: Sequence[str],
        variant: Statement | None = None,
        groups: Sequence[Sequence[Any]] = (),
    ) -> None:
        self.mode = mode
        self.op = op
        self.tables = list(tables)
        self.variant = variant
        self.groups = [(str(table), [str(c) for c in columns]) for table, columns in groups]
        self.extra = sum(len(columns) for _, columns in self.groups)
        #: The statement's entry in a trace document, JSON text (made on first use).
        self.entry: str | None = None

    def to_json(self) -> list[Any]:
        """The plan as JSON data."""
        text = self.variant.text if self.variant is not None else None
        return [self.mode, self.op, self.tables, text, [list(g) for g in self.groups]]

    @classmethod
    def from_json(
        cls, data: Sequence[Any], statements: Mapping[str, Statement] | None = None
    ) -> CapturePlan:
        """Rebuild a plan; ``statements`` maps texts to the already-analysed variants."""
        mode, op, tables, text, groups = data
        variant = None
        if text is not None:
            variant = (statements or {}).get(text) or Statement(text)
        return cls(mode, op, tables, variant, groups)


_time_ns = time.time_ns


def _micros() -> int:
    """Now, in whole microseconds since the epoch: integers encode in a fraction of the
    time of floats (most of a trace document's numbers are timestamps)."""
    return time.time_ns() // 1000


class UnitTrace:
    """What one unit's functions touched, staged at the end of its transaction.

    The staged document is ``{"u": 2, "s": statements, "f": functions, "e": events}``:

    * ``s``: ``[text, op, tables, groups]`` of each statement the unit ran;
    * ``f``: ``[invocation_id, function, started, ended, read_only]`` of each function
      execution, timestamps in integer microseconds since the epoch;
    * ``e``: one event per statement run, ``[function, ts, statement]`` for a statement
      captured without rows, ``[function, ts, statement, rows]`` for one captured with
      rows: ``rows`` holds, for each row the statement returned, its captured columns (the
      value itself when the plan captures one column, else the list of them all, which
      the plan's ``groups`` split by table). A statement that returned no rows has an
      empty list: the access still happened (a lookup that found nothing).

    Older versions staged ``"u": 1`` documents (one event per row captured) and
    documents without ``"u"`` (float seconds); the spooler reads all three.
    """

    __slots__ = ("_entries", "_index", "events", "functions")

    def __init__(self) -> None:
        self.functions: list[list[Any]] = []
        self.events: list[list[Any]] = []
        self._entries: list[str] = []
        self._index: dict[str, int] = {}

    def begin(self, invocation_id: str | None, function: str, read_only: bool) -> int:
        """Note a function starting; returns its number within the unit."""
        self.functions.append([invocation_id, function, _micros(), None, read_only])
        return len(self.functions) - 1

    def end(self, number: int) -> None:
        """Note a function returning."""
        self.functions[number][3] = _micros()

    def _statement(self, text: str, plan: CapturePlan) -> int:
        found = self._index.get(text)
        if found is None:
            entry = plan.entry
            if entry is None:  # encoded once per plan, not once per unit
                entry = plan.entry = _codec.dumps([text, plan.op, plan.tables, plan.groups])
            found = self._index[text] = len(self._entries)
            self._entries.append(entry)
        return found

    def rows(
        self, number: int, text: str, plan: CapturePlan, rows: Sequence[Sequence[Any]]
    ) -> list[tuple[Any, ...]]:
        """Record the captured columns of ``rows``; return the rows the application sees."""
        extra = plan.extra
        if len(rows) == 1:  # the common case, without the comprehensions
            row = rows[0]
            captured: list[Any] = [row[-1] if extra == 1 else row[-extra:]]
        elif extra == 1:  # one key column (the common read)
            captured = [row[-1] for row in rows]
        else:
            captured = [row[-extra:] for row in rows]
        self.events.append([number, _time_ns() // 1000, self._statement(text, plan), captured])
        if not rows:
            return []
        cut = len(rows[0]) - extra
        if not cut:  # a write without RETURNING of its own shows no rows
            return []
        if type(rows[0]) is tuple:
            if len(rows) == 1:
                return [rows[0][:cut]]
            return [row[:cut] for row in rows]  # type: ignore[misc]
        return [tuple(row[:cut]) for row in rows]

    def statement(self, number: int, text: str, plan: CapturePlan) -> None:
        """Record a statement that cannot name its rows."""
        self.events.append([number, _time_ns() // 1000, self._statement(text, plan)])

    def staged_row(self, workflow_id: str | None, invocation_id: str | None) -> StagedTrace | None:
        """The unit's trace as a row of the staging table (``None`` if nothing ran)."""
        if not self.functions:
            return None
        document = (
            f'{{"u":2,"s":[{",".join(self._entries)}],'
            f'"f":{_codec.dumps_rows(self.functions)},"e":{_codec.dumps_rows(self.events)}}}'
        )
        return (workflow_id, invocation_id, document, time.time())

    def stage(self, db: Database, workflow_id: str | None, invocation_id: str | None) -> None:
        """Stage the unit's trace in the current transaction (one statement)."""
        row = self.staged_row(workflow_id, invocation_id)
        if row is not None:
            db.execute(STAGE_TRACE, row)


#: A staging row: ``(workflow_id, invocation_id, payload, created_at)``.
StagedTrace = tuple[str | None, str | None, str, float]


def stage_rows(db: Database, rows: Sequence[Sequence[Any]]) -> int:
    """Stage traces handed back by read-only units, in the current transaction.

    Several go into **one** staging row, ``{"b": [[workflow_id, invocation_id, document],
    ...]}``: one insert (one round trip on PostgreSQL) for the lot. The documents are
    already JSON text, so they are joined, not encoded again.
    """
    if len(rows) == 1:
        db.execute(STAGE_TRACE, tuple(rows[0]))
    elif rows:
        dumps = _codec.dumps
        parts = [f"[{dumps(w)},{dumps(i)},{payload}]" for w, i, payload, _ in rows]
        db.execute(STAGE_TRACE, (None, None, '{"b":[' + ",".join(parts) + "]}", rows[-1][3]))
    return len(rows)


def plans_from_json(
    data: Mapping[str, Sequence[Any]], statements: Mapping[str, Statement] | None = None
) -> dict[str, CapturePlan]:
    """Capture plans by statement text, from JSON data."""
    return {text: CapturePlan.from_json(plan, statements) for text, plan in data.items()}
