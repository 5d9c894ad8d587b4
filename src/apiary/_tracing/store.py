"""The DuckDB trace store: every function execution and every row it touched, for queries.

The spooler (:mod:`apiary._tracing.spool`) moves staged unit traces (:mod:`apiary._capture`)
here with :meth:`TraceStore.ingest`; ``apiary trace`` asks the questions below.

Tables (identifiers are quoted; every ``ts`` is a ``TIMESTAMP`` in UTC, without zone):

* ``function_invocations``: one row per function execution. ``ts`` is when it started (the
  same meaning as an event's ``ts``, so tables sort together); ``started`` and ``ended``
  are the captured epoch seconds as ``DOUBLE`` (``ended - started`` is the duration, to
  the microsecond); ``unit_invocation_id`` names the transaction unit the function ran in,
  ``staging_id`` the staged row it came from.
* ``<T>_events`` per app table ``T``: ``ts, workflow_id, invocation_id, function, op,
  statement``, then ``T``'s columns, then ``staging_id, seq, unconverted``. ``op`` is
  ``read | insert | update | delete``; a write carries the whole row (after an insert or
  update, before a delete), a read only the primary key (that is what the capture
  returns). ``seq`` orders the events of one unit that share a ``ts``. The table of an app
  table named ``statement`` is ``events_of_statement`` (``statement_events`` is taken).
* ``statement_events``: accesses that name no rows (aggregates and other statement-level
  reads, writes to undeclared tables, lookups that found nothing), with the ``tables``
  the statement touches as ``VARCHAR[]``.
* ``spooled (staging_id, digest)``: every staged row already here, by id and a 64-bit
  hash of its payload (:func:`digest`). The spooler deletes a staged row only after the
  DuckDB transaction that stored it committed, and ``spooled`` gains the row in that
  same transaction, so a row found again after a crash between the two is skipped, not
  stored twice. A database never reuses a staging id (``AUTOINCREMENT``, ``bigserial``),
  but a database deleted and created again starts over at 1: the digest tells its rows
  from the old ones. The table only grows, by 16 bytes a unit.
* ``rejected_payloads``: staged rows that could not be stored (malformed payloads), kept
  verbatim with the error, so that one bad row neither blocks the spooler nor is lost.

Column typing. An app column's DuckDB type comes from its declared SQL type
(:func:`duckdb_type`): integers → ``BIGINT``; ``REAL``/``DOUBLE``/``FLOAT`` → ``DOUBLE``;
``NUMERIC(p, s)`` → ``DECIMAL(p, s)`` (``DOUBLE`` without a precision or beyond DuckDB's 38
digits); text types → ``VARCHAR``; ``BLOB``/``BYTEA`` → ``BLOB``; ``BOOLEAN``; ``DATE``;
``TIME``; ``TIMESTAMP``/``DATETIME`` → ``TIMESTAMP`` (an aware value is converted to UTC),
``TIMESTAMPTZ`` (naive values are taken as UTC); ``UUID``; anything else (JSON, arrays,
intervals, unknown names) → ``VARCHAR``. Dates and times are typed rather than kept as
text, so that time ranges can be queried; the text both engines return (ISO 8601) is
parsed. SQLite does not enforce declared types, so a value may not fit its column (text
in an ``INTEGER`` column): it is stored as ``NULL`` and, with its column name, in the
row's ``unconverted`` column as codec JSON, so nothing is lost and ingest never fails
on data. Columns added to an app table later are added with ``ALTER TABLE ADD COLUMN``;
a column whose declared type changed keeps its stored type. An app column named like a
trace column (``ts``, ``op``, ``function``...) is stored with ``_`` appended, once more
per clash, assigned in the table's column order (stable, since new columns come last).

Performance (measured on 1M events, ``duckdb`` 2.0, one core busy): ``executemany``
inserts about 2,500 rows/s, so a batch is inserted with one ``INSERT ... SELECT
UNNEST($1), UNNEST($2), ...`` per event shape, a Python list per column (no pandas or
Arrow). DuckDB converts every Python value passed (about 0.5 us each), so what events
share (workflow, invocation, function, statement text) is passed once per batch and
indexed (:class:`_Events`), and payloads are decoded by the JSON parser with the codec's
tags undone as met (:func:`_decode`). The cyclic garbage collector is off during an
ingest (:func:`_without_cyclic_gc`). Ingest runs at about 100,000 events/s for units of
10 events and 60,000 for units of 3. "Who touched row X" is a filtered scan of one event
table: 2-10 ms over a million rows, so no index is kept on event tables (an ART index
slows every insert and must fit in memory); DuckDB's zone maps skip row groups when the
key correlates with time.

One process at a time may open a DuckDB file for writing. The file is opened on first
use (or :meth:`TraceStore.open`); a file another process holds is waited for (``wait``
seconds), then raises :class:`~apiary.DatabaseUnavailableError`. The store holds the lock
until :meth:`close`.
Within one process, DuckDB would share one database between two stores of the same file
(their transactions then conflict on every row), so stores of one file take turns: one
open for writing, or any number open read-only; an open waits for its turn (``wait``
seconds, then :class:`~apiary.DatabaseUnavailableError`).
"""

from __future__ import annotations

import datetime
import hashlib
import os
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from types import TracebackType
from typing import Any

import duckdb

from apiary import _codec
from apiary._errors import DatabaseUnavailableError
from apiary._tracing.layout import (
    _DATA_ERRORS,
    _FUNCTION_COLUMNS,
    _HEAD,
    _MALFORMED,
    _REJECTED_COLUMNS,
    _SCHEMA,
    _TAIL,
    _TRACE_COLUMNS,
    RESERVED,
    StagedRow,
    _app_table,
    _Batch,
    _Column,
    _decode,
    _EventTable,
    _Rows,
    _without_cyclic_gc,
    events_table,
    log,
    quote,
)
from apiary._tracing.tables import TableInfo
from apiary._tracing.turns import asked_for, open_file, turns
from apiary._tracing.types import _converter, _Unfit, duckdb_type

#: Seconds an open waits, by default, for the file another store (of this process or
#: another) has open.
OPEN_WAIT = 30.0


def digest(payload: str) -> int:
    """A staged row's fingerprint (a signed 64-bit hash of its payload).

    ``spooled`` keeps it with the staging id, so that a row of a database recreated since
    (whose ids start again at 1) is not mistaken for one already stored.
    """
    raw = hashlib.blake2b(payload.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(raw, "little", signed=True)


class TraceStore:
    """The DuckDB trace store (see the module docstring for its tables).

    Args:
        path: the DuckDB file; created if missing.
        tables: the app's tables by name (:func:`apiary._tracing.tables.tables_of`); each
            gets its typed event table. Tables met later in traces get one of ``VARCHAR``s.
        read_only: open for queries only; several processes may then read at once, but
            not while a process has the file open for writing.

    Safe to use from several threads (calls are serialized). Close it (or use ``with``).
    """

    def __init__(
        self, path: str, tables: Mapping[str, TableInfo], *, read_only: bool = False
    ) -> None:
        self.path = os.fspath(path)
        self.tables = {info.name.lower(): info for info in tables.values()}
        self.read_only = read_only
        #: Units' traces this store took in so far (a staged row holds one, or several
        #: read-only units' traces staged together).
        self.units_stored = 0
        self._lock = threading.RLock()
        self._con: duckdb.DuckDBPyConnection | None = None
        self._events: dict[str, _EventTable] = {}

    # -- connection and schema -------------------------------------------------------

    def open(self, wait: float = OPEN_WAIT, *, ask: bool = True) -> None:
        """Open the file now (it is otherwise opened on first use).

        Raises :class:`~apiary.DatabaseUnavailableError` if another store, of this process
        or another, still holds it after ``wait`` seconds. With ``ask``, a holder in
        another process is asked to let it go (:func:`apiary._tracing.turns.open_file`).
        """
        with self._lock:
            self._connect(wait, ask)

    @property
    def is_open(self) -> bool:
        """Whether this store has the file open now."""
        return self._con is not None

    def wanted(self) -> bool:
        """Whether another store, of this process or another, waits for the file this
        store has open (the caller is expected to let it go; :mod:`~apiary._tracing.turns`)."""
        return turns.wanted(self._key) or asked_for(self.path)

    def close(self) -> None:
        """Close the file, releasing its lock. A later call opens it again."""
        with self._lock:
            if self._con is not None:
                try:
                    self._con.close()
                finally:
                    self._con = None
                    turns.give_back(self._key, self.read_only)

    def __enter__(self) -> TraceStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def _key(self) -> str:
        return os.path.realpath(self.path)

    def _connect(self, wait: float = OPEN_WAIT, ask: bool = True) -> duckdb.DuckDBPyConnection:
        if self._con is not None:
            return self._con
        deadline = time.monotonic() + wait
        if not turns.take(self._key, self.read_only, wait):
            raise DatabaseUnavailableError(
                f"trace store {self.path!r} is open in this process by another store "
                f"(a spooler's round, or a query), still after {wait:g} s"
            )
        try:
            con = open_file(self.path, self.read_only, deadline, ask=ask)
            try:
                con.execute("SET TimeZone = 'UTC'")  # TIMESTAMPTZ values read back in UTC
                if not self.read_only:
                    con.execute(_SCHEMA)
                self._load(con)
            except BaseException:
                con.close()
                raise
        except BaseException:
            turns.give_back(self._key, self.read_only)
            raise
        self._con = con
        return con

    def _load(self, con: duckdb.DuckDBPyConnection) -> None:
        """Read the event tables' columns from the file; add what ``tables`` declares."""
        self._events = {}
        found = con.execute(
            "SELECT table_name, column_name, data_type FROM information_schema.columns "
            "WHERE table_schema = 'main' AND table_catalog = current_database() "
            "ORDER BY table_name, ordinal_position"
        ).fetchall()
        for events_name, column, kind in found:
            table = _app_table(events_name)
            if table is not None:
                events = self._events.setdefault(table, _EventTable(events_name))
                events.stored[column] = kind
        for table, info in self.tables.items():
            self._ensure(con, table, info.columns)
        for table, events in self._events.items():
            if table not in self.tables:  # met in traces only: columns kept their names,
                # but for the "_" given to those named like a trace column
                columns = [c for c in events.stored if c not in RESERVED]
                self._ensure(con, table, [_unreserved(c) for c in columns])

    def _ensure(self, con: duckdb.DuckDBPyConnection, table: str, columns: Iterable[str]) -> None:
        """Make sure ``table``'s event table stores ``columns`` (autocommitted DDL)."""
        events = self._events.get(table) or _EventTable(events_table(table))
        info = self.tables.get(table)
        declared = dict(zip(info.columns, info.types, strict=True)) if info else {}
        new: list[tuple[str, str]] = []
        for column in columns:
            if column in events.columns:
                continue
            name = events.store_name(column)
            if name in events.stored:
                kind = duckdb_type(events.stored[name])  # as stored, even if since redeclared
            elif self.read_only:
                continue
            else:
                kind = duckdb_type(declared.get(column, ""))
                new.append((name, kind))
            events.columns[column] = _Column(name, kind, _converter(kind))
        if self.read_only and not events.stored:
            return
        self._events[table] = events
        if not events.stored:
            parts = [*_HEAD, *new, *_TAIL]
            body = ", ".join(f"{quote(name)} {kind}" for name, kind in parts)
            con.execute(f"CREATE TABLE IF NOT EXISTS {quote(events.name)} ({body})")
            events.stored.update(parts)
        else:
            for name, kind in new:
                con.execute(f"ALTER TABLE {quote(events.name)} ADD COLUMN {quote(name)} {kind}")
                events.stored[name] = kind

    # -- ingest ------------------------------------------------------------------------

    def ingest(self, batch: Iterable[StagedRow]) -> list[int]:
        """Store staged rows ``(staging_id, workflow_id, invocation_id, payload)``.

        In one DuckDB transaction: rows already in ``spooled`` (same id and payload
        :func:`digest`) are skipped, the others' functions and events are inserted and
        their ids and digests added to ``spooled``.
        Returns every id of ``batch``, all now safely stored (the caller deletes them from
        staging). A malformed payload is kept in ``rejected_payloads`` and counts as stored.
        """
        with _without_cyclic_gc():
            return self._ingest(batch)

    def _ingest(self, batch: Iterable[StagedRow]) -> list[int]:
        rows = {int(row[0]): (int(row[0]), row[1], row[2], row[3]) for row in batch}
        if not rows:
            return []
        ids = list(rows)
        digests = {i: digest(str(rows[i][3])) for i in ids}
        with self._lock:
            con = self._connect()
            if self.read_only:
                raise DatabaseUnavailableError(f"trace store {self.path!r} is open read-only")
            done = con.execute(
                "SELECT staging_id, digest FROM spooled WHERE staging_id BETWEEN $2 AND $3 "
                "AND staging_id IN (SELECT UNNEST($1::BIGINT[]))",
                [ids, min(ids), max(ids)],
            ).fetchall()
            seen = set(done)
            fresh = [rows[i] for i in ids if (i, digests[i]) not in seen]
            if fresh:
                try:
                    self._store(con, fresh)
                except _DATA_ERRORS:
                    # Some row's data failed the batch's INSERT: store the rows one by one,
                    # rejecting the one that fails alone.
                    for row in fresh:
                        try:
                            self._store(con, [row])
                        except _DATA_ERRORS as exc:
                            self._store(con, [], [(row, exc)])
        return ids

    def _store(
        self,
        con: duckdb.DuckDBPyConnection,
        rows: Sequence[StagedRow],
        rejected: Sequence[tuple[StagedRow, BaseException]] = (),
    ) -> None:
        rejects = list(rejected)
        batch = _Batch(self, con)
        for row in rows:
            try:
                batch.add(row, _decode(row[3]))
            except _MALFORMED as exc:
                rejects.append((row, exc))
        rejects_rows = _Rows("rejected_payloads", _REJECTED_COLUMNS)
        for (staging_id, workflow_id, invocation_id, payload), error in rejects:
            rejects_rows.rows.append(
                (staging_id, workflow_id, invocation_id, str(payload), repr(error))
            )
        con.execute("BEGIN TRANSACTION")
        try:
            batch.insert(con)
            if rejects:
                rejects_rows.insert(con)
            stored = [*rows, *(row for row, _ in rejected)]
            con.execute(
                "INSERT INTO spooled SELECT UNNEST($1::BIGINT[]), UNNEST($2::BIGINT[])",
                [[row[0] for row in stored], [digest(str(row[3])) for row in stored]],
            )
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
        self.units_stored += batch.units
        for (staging_id, *_), error in rejects:
            log.warning(
                "trace row %s is malformed, kept in rejected_payloads: %r", staging_id, error
            )

    # -- queries -----------------------------------------------------------------------

    def workflow_timeline(self, workflow_id: str) -> list[dict[str, Any]]:
        """A workflow's function executions in start order, each with its accesses.

        Each item: ``ts`` (start), ``invocation_id``, ``function``, ``started``, ``ended``
        (epoch seconds), ``read_only``, ``unit_invocation_id``, ``staging_id`` and
        ``accesses``, oldest first, shaped as the items of :meth:`row_history`.
        """
        with self._lock:
            con = self._connect()
            names = [n for n, _ in _FUNCTION_COLUMNS if n != "workflow_id"]
            found = con.execute(
                f"SELECT {', '.join(names)} FROM function_invocations WHERE workflow_id = $1 "
                "ORDER BY started, staging_id",
                [workflow_id],
            ).fetchall()
            functions = [dict(zip(names, record, strict=True), accesses=[]) for record in found]
            by_key = {(f["staging_id"], f["invocation_id"]): f for f in functions}
            accesses = self._statement_accesses(con, workflow_id)
            for table in self._events:
                accesses += self._accesses(con, table, "workflow_id = $1", [workflow_id])
        accesses.sort(key=_chronological)
        for access in accesses:
            owner = by_key.get((access["staging_id"], access["invocation_id"]))
            if owner is not None:
                owner["accesses"].append(access)
        return functions

    def row_history(self, table: str, /, **key_values: Any) -> list[dict[str, Any]]:
        """Every access to the rows of ``table`` whose columns equal ``key_values``, oldest first.

        Reads capture only primary keys, so filter on key columns to see reads too.
        Each item: ``ts``, ``workflow_id``, ``invocation_id``, ``function``, ``op``,
        ``statement``, ``table``, ``tables``, ``row`` (the captured values by app column;
        a read's ``row`` holds only its non-NULL columns), ``staging_id`` and ``seq``.
        Statement-level accesses (aggregates and the like) name no rows and are not
        included; they are in ``statement_events``.
        """
        table = table.lower()
        if not key_values:
            raise ValueError("row_history needs at least one column=value filter")
        with self._lock:
            con = self._connect()
            events = self._events.get(table)
            if events is None:
                known = ", ".join(sorted(self._events)) or "none"
                raise ValueError(f"the trace store has no table {table!r} (known: {known})")
            conditions, params = [], []
            for column_name, value in key_values.items():
                column = events.columns.get(column_name.lower())
                if column is None:
                    raise ValueError(f"table {table!r} has no column {column_name!r}")
                if value is None:
                    conditions.append(f"{quote(column.name)} IS NULL")
                    continue
                try:
                    params.append(column.convert(value))
                except _Unfit:
                    return []  # no stored value of the column's type equals it
                conditions.append(f"{quote(column.name)} = CAST(${len(params)} AS {column.type})")
            found = self._accesses(con, table, " AND ".join(conditions), params)
        found.sort(key=_chronological)
        return found

    def _accesses(
        self, con: duckdb.DuckDBPyConnection, table: str, where: str, params: Sequence[Any]
    ) -> list[dict[str, Any]]:
        events = self._events[table]
        columns = list(events.columns.items())
        names = [*_TRACE_COLUMNS, *(c.name for _, c in columns)]
        app_names = {c.name: app for app, c in columns}
        found = con.execute(
            f"SELECT {', '.join(map(quote, names))} FROM {quote(events.name)} WHERE {where}",
            list(params),
        ).fetchall()
        accesses = []
        width = len(_TRACE_COLUMNS)
        for record in found:
            access = dict(zip(_TRACE_COLUMNS, record[:width], strict=True))
            writes = access["op"] != "read"
            row = {
                app: value
                for (app, _), value in zip(columns, record[width:], strict=True)
                if writes or value is not None
            }
            unconverted = access.pop("unconverted")
            if unconverted is not None:
                for name, value in _codec.loads(unconverted).items():
                    row[app_names.get(name, name)] = value
            access.update(table=table, tables=[table], row=row)
            accesses.append(access)
        return accesses

    def _statement_accesses(
        self, con: duckdb.DuckDBPyConnection, workflow_id: str
    ) -> list[dict[str, Any]]:
        names = [*_TRACE_COLUMNS[:-1], "tables"]
        found = con.execute(
            f"SELECT {', '.join(map(quote, names))} FROM statement_events WHERE workflow_id = $1",
            [workflow_id],
        ).fetchall()
        return [dict(zip(names, record, strict=True), table=None, row=None) for record in found]

    def sql(self, query: str, params: Sequence[Any] | None = None) -> tuple[list[str], list[Any]]:
        """Run any SQL on the store; return the column names and the rows."""
        with self._lock:
            cursor = self._connect().execute(query, params)
            if cursor.description is None:
                return [], []
            return [d[0] for d in cursor.description], cursor.fetchall()

    def export_parquet(self, directory: str) -> list[str]:
        """Write every table of the store to ``<directory>/<table>.parquet``; return the paths."""
        os.makedirs(directory, exist_ok=True)
        paths = []
        with self._lock:
            con = self._connect()
            tables = con.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = 'main' "
                "AND table_catalog = current_database() AND table_type = 'BASE TABLE' "
                "ORDER BY table_name"
            ).fetchall()
            for (table,) in tables:
                path = os.path.join(directory, f"{table}.parquet")
                target = path.replace("'", "''")  # COPY takes no parameter for its file
                con.execute(f"COPY {quote(table)} TO '{target}' (FORMAT PARQUET)")
                paths.append(path)
        return paths


def _chronological(access: Mapping[str, Any]) -> tuple[Any, ...]:
    return (access["ts"] or datetime.datetime.min, access["staging_id"], access["seq"])


def _unreserved(stored: str) -> str:
    """The app column a store column of a table met only in traces was named for."""
    return stored[:-1] if stored.endswith("_") and stored.rstrip("_") in RESERVED else stored
