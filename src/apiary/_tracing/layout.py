"""The trace store's tables and how a batch of staged unit traces is inserted into them."""

from __future__ import annotations

import contextlib
import gc
import itertools
import json
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import duckdb
import numpy as np

from apiary import _codec
from apiary._tracing.types import _Unfit

if TYPE_CHECKING:
    from apiary._tracing.store import TraceStore

#: A staged row: ``(staging_id, workflow_id, invocation_id, payload)``.
StagedRow = tuple[int, str | None, str | None, str]


def _columns(text: str) -> list[tuple[str, str]]:
    """``"a INT, b TEXT"`` as ``[("a", "INT"), ("b", "TEXT")]``."""
    return [(part.split()[0], part.split()[1]) for part in text.split(",")]


_HEAD = _columns(
    "ts TIMESTAMP, workflow_id VARCHAR, invocation_id VARCHAR, function VARCHAR, op VARCHAR, "
    "statement VARCHAR"
)
_TAIL = _columns("staging_id BIGINT, seq INTEGER, unconverted VARCHAR")
#: Trace columns of an event table; app columns with these names get a ``_`` appended.
RESERVED = frozenset(name for name, _ in _HEAD + _TAIL)
_TRACE_COLUMNS = [name for name, _ in _HEAD + _TAIL]

# The type EPOCH is inserted as seconds and stored as TIMESTAMP (see _timestamp).
_FUNCTION_COLUMNS = _columns(
    "ts EPOCH, workflow_id VARCHAR, invocation_id VARCHAR, function VARCHAR, started DOUBLE, "
    "ended DOUBLE, read_only BOOLEAN, unit_invocation_id VARCHAR, staging_id BIGINT"
)
_REJECTED_COLUMNS = _columns(
    "staging_id BIGINT, workflow_id VARCHAR, invocation_id VARCHAR, payload VARCHAR, error VARCHAR"
)
_SCHEMA = """
CREATE TABLE IF NOT EXISTS function_invocations (
    ts TIMESTAMP, workflow_id VARCHAR, invocation_id VARCHAR, function VARCHAR,
    started DOUBLE, ended DOUBLE, read_only BOOLEAN, unit_invocation_id VARCHAR,
    staging_id BIGINT);
CREATE TABLE IF NOT EXISTS statement_events (
    ts TIMESTAMP, workflow_id VARCHAR, invocation_id VARCHAR, function VARCHAR,
    op VARCHAR, statement VARCHAR, tables VARCHAR[], staging_id BIGINT, seq INTEGER);
CREATE TABLE IF NOT EXISTS spooled (
    staging_id BIGINT, digest BIGINT, PRIMARY KEY (staging_id, digest));
CREATE TABLE IF NOT EXISTS rejected_payloads (
    staging_id BIGINT, workflow_id VARCHAR, invocation_id VARCHAR, payload VARCHAR,
    error VARCHAR);
"""
_STORE_TABLES = frozenset(
    {"function_invocations", "statement_events", "spooled", "rejected_payloads"}
)
_STATEMENT_TABLE = "events_of_statement"  # the events of an app table named "statement"


def quote(name: str) -> str:
    """``name`` as a DuckDB identifier."""
    return '"' + name.replace('"', '""') + '"'


def events_table(table: str) -> str:
    """The name of the event table of app table ``table``."""
    return _STATEMENT_TABLE if table == "statement" else f"{table}_events"


# -- schema -------------------------------------------------------------------------


@dataclass(frozen=True)
class _Column:
    name: str  # in the store
    type: str  # DuckDB
    convert: Callable[[Any], Any]


@dataclass
class _EventTable:
    """An app table's event table: how each app column is stored."""

    name: str
    columns: dict[str, _Column] = field(default_factory=dict)  # by app column name
    stored: dict[str, str] = field(default_factory=dict)  # store column -> DuckDB type

    def store_name(self, column: str) -> str:
        """The store column for app column ``column``: ``_`` appended per clash."""
        taken = {c.name for c in self.columns.values()}
        name = column
        while name in RESERVED or name in taken:
            name += "_"
        return name


class _Rows:
    """Rows for one INSERT, collected as tuples and inserted as one list per column."""

    __slots__ = ("names", "rows", "table", "types")

    def __init__(self, table: str, columns: Sequence[tuple[str, str]]) -> None:
        self.table = table
        self.names = [name for name, _ in columns]
        self.types = [kind for _, kind in columns]
        self.rows: list[tuple[Any, ...]] = []

    def insert(self, con: duckdb.DuckDBPyConnection) -> None:
        if not self.rows:
            return
        selects = [_cast(f"c{i}", kind) for i, kind in enumerate(self.types, 1)]
        with _scanned(con, list(zip(*self.rows, strict=True))) as source:
            con.execute(
                f"INSERT INTO {quote(self.table)} ({', '.join(map(quote, self.names))}) "
                f"SELECT {', '.join(selects)} FROM {source}"
            )


def _cast(column: str, kind: str) -> str:
    if kind == "EPOCH":
        return _timestamp(column)
    return f"CAST({column} AS {kind})"


def _timestamp(seconds: str) -> str:
    # Seconds to TIMESTAMP without a session time zone: make_timestamp takes UTC
    # microseconds (to_timestamp gives a TIMESTAMPTZ, shifted when cast to TIMESTAMP).
    return f"make_timestamp(CAST(round(CAST({seconds} AS DOUBLE) * 1000000) AS BIGINT))"


_scans = itertools.count()


@contextlib.contextmanager
def _scanned(con: duckdb.DuckDBPyConnection, columns: Sequence[Sequence[Any]]) -> Iterator[str]:
    """``columns`` as a relation DuckDB can select from (``c1``, ``c2``, ...; its name is
    yielded), for the ``with`` block.

    The columns go in as NumPy object arrays, which DuckDB scans whole. Passed as list
    parameters (``UNNEST($1::INTEGER[])``), each value was converted on its own: an
    insert cost about 8 us a row of 5 columns, against 0.5 us scanned (measured).
    ``np.fromiter`` keeps each value as it is (a list stays one value).
    """
    name = f"apiary_scan_{next(_scans)}"
    con.register(
        name,
        {
            f"c{i}": np.fromiter(column, dtype=object, count=len(column))
            for i, column in enumerate(columns, 1)
        },
    )
    try:
        yield name
    finally:
        # In a transaction that failed, the registration goes with its rollback.
        with contextlib.suppress(duckdb.TransactionException):
            con.unregister(name)


class _Events:
    """Event rows for one INSERT into an event table (or ``statement_events``).

    A row is ``(ts, function number, statement number, *values, seq, unconverted)``:
    what every event of a function or statement shares is stored once per batch, in
    relations the numbers join (:meth:`_Batch.insert`), not once per event.
    """

    __slots__ = ("columns", "converters", "rows", "table")

    def __init__(self, table: str, columns: Sequence[_Column]) -> None:
        self.table = table
        self.columns = list(columns)
        self.converters = [column.convert for column in columns]
        self.rows: list[tuple[Any, ...]] = []

    def add(self, ts: Any, function: int, statement: int, values: Sequence[Any], seq: int) -> None:
        if len(values) != len(self.converters):
            raise ValueError(f"{len(values)} values for {len(self.converters)} columns")
        try:
            converted = [
                None if value is None else convert(value)
                for convert, value in zip(self.converters, values, strict=True)
            ]
            unconverted = None
        except _Unfit:
            converted, kept = [], {}
            for column, value in zip(self.columns, values, strict=True):
                try:
                    converted.append(None if value is None else column.convert(value))
                except _Unfit:
                    converted.append(None)
                    kept[column.name] = value
            unconverted = _codec.dumps(kept)
        self.rows.append((ts, function, statement, *converted, seq, unconverted))

    def add_values(
        self, ts: Any, function: int, statement: int, values: Sequence[Any], seq: int
    ) -> int:
        """:meth:`add` for a table captured by one column: a row per value that is not
        ``None`` (an outer join's missing side); returns the next ``seq``."""
        convert, append = self.converters[0], self.rows.append
        for value in values:
            if value is None:
                continue
            try:
                append((ts, function, statement, convert(value), seq, None))
            except _Unfit:
                self.add(ts, function, statement, (value,), seq)
            seq += 1
        return seq

    def add_rows(
        self, ts: Any, function: int, statement: int, rows: Sequence[Sequence[Any]], seq: int
    ) -> int:
        """:meth:`add` for each of ``rows`` (each holding all of this table's captured
        columns) that is not all ``None``; returns the next ``seq``."""
        converters, append, width = self.converters, self.rows.append, len(self.converters)
        for row in rows:
            if type(row) is not list or len(row) != width:
                raise ValueError(f"a row of {width} columns expected, not {row!r}")
            if row.count(None) == width:  # an outer join's missing side
                continue
            try:
                converted = [
                    None if value is None else convert(value)
                    for convert, value in zip(converters, row)  # noqa: B905 (checked above)
                ]
                append((ts, function, statement, *converted, seq, None))
            except _Unfit:
                self.add(ts, function, statement, row, seq)
            seq += 1
        return seq

    def insert(self, con: duckdb.DuckDBPyConnection, functions: str, statements: str) -> None:
        """Insert the rows, their function's and statement's columns joined from the
        batch's ``functions`` and ``statements`` relations (see :meth:`_Batch.insert`)."""
        if not self.rows:
            return
        columns: list[Sequence[Any]] = list(zip(*self.rows, strict=True))
        unconverted = columns.pop()
        types = ["DOUBLE", "INTEGER", "INTEGER", *(c.type for c in self.columns), "INTEGER"]
        inner = [f"CAST(c{i} AS {kind}) AS c{i}" for i, kind in enumerate(types, 1)]
        k = len(types)
        names = [*_TRACE_COLUMNS[:-1], *(c.name for c in self.columns)]
        selects = [
            _timestamp("e.c1"),
            "f.c2",  # workflow_id
            "f.c3",  # invocation_id
            "f.c4",  # function
            "s.c2",  # op
            "s.c3",  # statement
            "f.c5",  # staging_id
            f"e.c{k}",  # seq
            *(f"e.c{i}" for i in range(4, k)),
        ]
        if self.table == _ALL:
            names, selects = [*names, "tables"], [*selects, "CAST(s.c4 AS VARCHAR[])"]
        elif any(value is not None for value in unconverted):
            columns.append(unconverted)
            inner.append(f"CAST(c{k + 1} AS VARCHAR) AS u")
            names, selects = [*names, "unconverted"], [*selects, "e.u"]
        table = "statement_events" if self.table == _ALL else self.table
        with _scanned(con, columns) as source:
            con.execute(
                f"INSERT INTO {quote(table)} ({', '.join(map(quote, names))}) "
                f"SELECT {', '.join(selects)} FROM (SELECT {', '.join(inner)} FROM {source}) e "
                f"LEFT JOIN {functions} f ON f.c1 = e.c2 LEFT JOIN {statements} s ON s.c1 = e.c3"
            )


_ALL = ""  # the _Events of statement-level events, which belong to no app table


class _Batch:
    """Everything one ingest stores, collected in Python and inserted in bulk."""

    def __init__(self, store: TraceStore, con: duckdb.DuckDBPyConnection) -> None:
        self.store = store
        self.con = con
        self.functions = _Rows("function_invocations", _FUNCTION_COLUMNS)
        self.statement_events = _Events(_ALL, [])
        self.events: dict[tuple[str, tuple[str, ...]], _Events] = {}
        # Units of one app repeat the same statements: each is resolved once per batch,
        # and numbered (from 1, as DuckDB lists are indexed) for _Events rows.
        self.plans: dict[str, tuple[Sequence[Any], tuple[int, list[_Events]]]] = {}
        self.statements: list[tuple[str, str, list[str]]] = []
        #: Units' traces added (a staged row holds one, or several read-only ones).
        self.units = 0

    def add(self, row: StagedRow, doc: Mapping[str, Any]) -> None:
        """Add one staged row: one unit's trace, or several (``{"b": [[workflow_id,
        invocation_id, document], ...]}``, read-only units staged together); on an error
        the batch is as it was before."""
        lengths = {id(rows): len(rows) for rows in self._all_rows()}
        try:
            if "b" in doc:
                staging_id, _, _, payload = row
                for workflow_id, invocation_id, unit_doc in doc["b"]:
                    self._add((staging_id, workflow_id, invocation_id, payload), unit_doc)
                self.units += len(doc["b"])
            else:
                self._add(row, doc)
                self.units += 1
        except BaseException:
            for rows in self._all_rows():
                del rows[lengths.get(id(rows), 0) :]
            raise

    def _all_rows(self) -> list[list[tuple[Any, ...]]]:
        events = [self.statement_events, *self.events.values()]
        return [self.functions.rows, *(e.rows for e in events)]

    def _add(self, row: StagedRow, doc: Mapping[str, Any]) -> None:
        staging_id, workflow_id, unit_invocation_id, _ = row
        first = len(self.functions.rows) + 1
        add_function = self.functions.rows.append
        version = doc.get("u")
        if version not in (None, 1, 2):
            raise ValueError(f"a trace document of version {version!r}, newer than this spooler")
        scale = 1.0 if version is None else 1e-6  # float seconds, or integer microseconds
        for invocation_id, function, begun, done, read_only in doc["f"]:
            started = begun * scale
            ended = None if done is None else done * scale
            add_function(
                (started, workflow_id, invocation_id, function, started, ended,
                 bool(read_only), unit_invocation_id, staging_id)
            )  # fmt: skip
        count = len(self.functions.rows) - first + 1
        statements = [self._plan(statement) for statement in doc["s"]]
        if version == 2:
            self._add_statement_events(doc["e"], first, count, statements)
            return
        add_statement = self.statement_events.add
        for seq, (number, at, statement, group, values) in enumerate(doc["e"]):
            if not (0 <= number < count and statement >= 0):
                raise IndexError(f"event {seq} names no function or statement of its unit")
            index, events = statements[statement]
            ts = at * scale
            if group < 0:
                add_statement(ts, first + number, index, (), seq)
            else:
                events[group].add(ts, first + number, index, values, seq)

    def _add_statement_events(
        self,
        events: Sequence[Sequence[Any]],
        first: int,
        count: int,
        statements: Sequence[tuple[int, list[_Events]]],
    ) -> None:
        """Add a ``"u": 2`` document's events: one per statement run, holding the captured
        columns of each row it returned (see :class:`apiary._capture.UnitTrace`)."""
        add_statement = self.statement_events.add
        seq = 0
        for number, event in enumerate(events):
            function, at, statement, *captured = event
            if not (0 <= function < count and statement >= 0) or len(captured) > 1:
                raise IndexError(f"event {number} names no function or statement of its unit")
            index, targets = statements[statement]
            ts, function = at * 1e-6, first + function
            if not captured or not captured[0]:  # no rows named (or none found)
                add_statement(ts, function, index, (), seq)
                seq += 1
                continue
            if len(targets) == 1:
                target = targets[0]
                if len(target.columns) == 1:  # one key column: the values themselves
                    seq = target.add_values(ts, function, index, captured[0], seq)
                else:
                    seq = target.add_rows(ts, function, index, captured[0], seq)
                continue
            slices, start = [], 0
            for target in targets:
                slices.append((target, start, start + len(target.columns)))
                start += len(target.columns)
            for row in captured[0]:
                if type(row) is not list or len(row) != start:
                    raise ValueError(f"event {number}: a row of {start} columns expected")
                for target, begin, end in slices:
                    values = row[begin:end]
                    if values.count(None) < len(values):  # an outer join's missing side
                        target.add(ts, function, index, values, seq)
                        seq += 1

    def _plan(self, statement: Sequence[Any]) -> tuple[int, list[_Events]]:
        # Keyed by text, checked whole: a statement's capture plan may differ between
        # versions of the app (an UPDATE returns all of a table's columns).
        found = self.plans.get(statement[0])
        if found is not None and found[0] == statement:
            return found[1]
        text, op, tables, groups = statement
        targets = []
        for table, columns in groups:
            shape = (str(table).lower(), tuple(str(c).lower() for c in columns))
            events = self.events.get(shape)
            if events is None:
                # DDL autocommits: the batch is inserted later, in its own transaction.
                self.store._ensure(self.con, *shape)
                stored = self.store._events[shape[0]]
                mapped = [stored.columns[c] for c in shape[1]]
                events = self.events[shape] = _Events(stored.name, mapped)
            targets.append(events)
        self.statements.append((str(text), str(op), [str(t) for t in tables]))
        plan = (len(self.statements), targets)
        self.plans[text] = (statement, plan)
        return plan

    def insert(self, con: duckdb.DuckDBPyConnection) -> None:
        self.functions.insert(con)
        events = [e for e in (self.statement_events, *self.events.values()) if e.rows]
        if not events:
            return
        # What every event of a function or statement shares is scanned once per batch,
        # numbered from 1 as the events' function and statement numbers count.
        _, workflows, invocations, functions, *_, staging_ids = zip(
            *self.functions.rows, strict=True
        )
        texts, ops, tables = zip(*self.statements, strict=True)
        numbers = range(1, len(workflows) + 1)
        function_columns = [numbers, workflows, invocations, functions, staging_ids]
        statement_columns = [range(1, len(texts) + 1), ops, texts, tables]
        with (
            _scanned(con, function_columns) as function_rows,
            _scanned(con, statement_columns) as statement_rows,
        ):
            for each in events:
                each.insert(con, function_rows, statement_rows)


@contextlib.contextmanager
def _without_cyclic_gc() -> Iterator[None]:
    """Switch Python's cyclic garbage collector off for the block (if it is on).

    An ingest makes hundreds of thousands of small lists and tuples (decoded documents,
    event rows) that live until its insert. Each few hundred allocations start a
    collection that walks them again, so with the collector on, a batch of hotel traces
    cost 72 µs of CPU per operation to spool, against 48 with it off (measured). None
    of them form cycles: reference counting frees them all; cycles made by other threads
    meanwhile wait for the first collection after the block. An application that keeps
    the collector off keeps it off.
    """
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def _decode(payload: str) -> Any:
    """:func:`apiary._codec.loads`, faster on trace payloads (measured 4x): the parser undoes
    each tag as it meets it, instead of a second walk over every list in Python."""
    if '"$dict"' in payload:
        return _codec.loads(payload)  # an escaped dict shields its contents: the codec's walk
    return _decoder.decode(payload)


def _untag(obj: dict[str, Any]) -> Any:
    if len(obj) == 1:
        key, inner = next(iter(obj.items()))
        untag = _codec._UNTAG.get(key)
        if untag is not None:
            try:
                return untag(inner)
            except (TypeError, ValueError) as exc:
                raise ValueError(f"malformed {key} value {inner!r}") from exc
    return obj


_decoder = json.JSONDecoder(object_hook=_untag)

# Errors caused by the data of one staged row: it is rejected, not retried forever.
_MALFORMED = (ValueError, TypeError, KeyError, IndexError, AttributeError)
_DATA_ERRORS = (duckdb.DataError, duckdb.IntegrityError, duckdb.InvalidInputException)
log = logging.getLogger("apiary.trace")


def _app_table(events: str) -> str | None:
    """The app table whose events DuckDB table ``events`` holds, if it is one."""
    if events == _STATEMENT_TABLE:
        return "statement"
    if events in _STORE_TABLES or not events.endswith("_events"):
        return None
    return events[: -len("_events")]
