"""The ``apiary trace`` command: ask the DuckDB trace store, or fill it now.

``trace workflow ID`` (a workflow's timeline), ``trace row TABLE COLUMN=VALUE...`` (every
access to given rows, oldest first), ``trace sql QUERY`` (anything else), ``trace export
--parquet DIR`` and ``trace spool MODULE:APP`` (move staged traces into the store now).
See docs/TRACING.md.

Queries open the store read-only, so several may run at once; DuckDB refuses them while a
process has the file open for writing. Spoolers hold it only for a round (a runtime's or
frontend's background spooler opens it for each round), so a refused open is retried for
:data:`LOCK_WAIT` seconds before the command gives up and names the holder.
"""

from __future__ import annotations

import argparse
import datetime
import decimal
import json
import os
import sys
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

from apiary._errors import DatabaseUnavailableError, NotFoundError
from apiary._loading import load_app
from apiary._runtime import Runtime, _trace_store

if TYPE_CHECKING:
    # DuckDB (about 50 ms to import) is imported when a trace command runs, not whenever
    # the apiary command builds its parser.
    from apiary._tracing.store import TraceStore

T = TypeVar("T")

#: Seconds a command retries a store another process has open for writing.
LOCK_WAIT = 2.0
_LOCK_POLL = 0.1
# Long statements are cut in tables (--json gives them whole).
_STATEMENT_WIDTH = 72


def add_trace_commands(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser], db_default: str
) -> None:
    """Add ``trace workflow|row|sql|export|spool`` to the ``apiary`` command's subcommands.

    ``db_default`` is the default of ``--db`` (``$APIARY_DB`` or the CLI's default URL).
    :func:`run_trace_command` runs the parsed arguments.
    """
    trace = subparsers.add_parser(
        "trace",
        help="query the trace store: a workflow's timeline, a row's history, SQL",
        description="Query the DuckDB trace store, where every function execution and "
        "every row it read or wrote is kept (see docs/TRACING.md), or spool staged traces "
        "into it now. The store is --store, by default <database>-trace.duckdb beside a "
        "SQLite --db file.",
    )
    commands = trace.add_subparsers(dest="trace_command", metavar="SUBCOMMAND", required=True)

    workflow = commands.add_parser(
        "workflow",
        help="a workflow's timeline: its functions in order, with their reads and writes",
        description="Print a workflow's function executions in the order they started, "
        "each with the rows it read and wrote (a read shows the row's key, a write the "
        "whole row) and its statement-level accesses. Exit status 1 if the store has "
        "no trace of the workflow.",
    )
    workflow.add_argument("workflow_id", metavar="ID", help="the workflow ID")
    _add_store(workflow, db_default)
    workflow.add_argument("--json", action="store_true", help="print JSON instead of a table")

    row = commands.add_parser(
        "row",
        help="every access to given rows, oldest first (who read or wrote customer 42)",
        description="Print every recorded access to the rows of TABLE whose columns have "
        "the given values, oldest first. Reads record only primary keys: filter on key "
        "columns to see reads too. VALUE is converted to the column's type. Exit status "
        "1 if nothing was found.",
    )
    row.add_argument("table", metavar="TABLE", help="an app table, e.g. customers")
    row.add_argument(
        "filters", nargs="+", metavar="COLUMN=VALUE", help="e.g. id=42 (several: all must match)"
    )
    _add_store(row, db_default)
    row.add_argument("--json", action="store_true", help="print JSON instead of a table")

    sql = commands.add_parser(
        "sql",
        help="run a SQL query on the trace store and print the result",
        description="Run any query on the trace store (opened read-only) and print the "
        "result as a table. Tables: function_invocations, <table>_events per app table, "
        "statement_events, spooled, rejected_payloads (see docs/TRACING.md).",
    )
    sql.add_argument("query", metavar="QUERY", help='e.g. "SELECT count(*) FROM orders_events"')
    _add_store(sql, db_default)
    sql.add_argument("--json", action="store_true", help="print a JSON list of objects")

    export = commands.add_parser(
        "export",
        help="write every table of the trace store to Parquet files",
        description="Write each table of the trace store to DIR/<table>.parquet.",
    )
    export.add_argument(
        "--parquet", required=True, metavar="DIR", help="folder for the files (created)"
    )
    _add_store(export, db_default)

    spool = commands.add_parser(
        "spool",
        help="move staged traces from the database into the trace store now",
        description="Move every trace staged in the database into the trace store, now "
        "(runtimes on SQLite and frontends also do this in the background). The app "
        "gives the tables' columns and types.",
    )
    spool.add_argument("app", metavar="MODULE:APP", help="e.g. examples/hotel.py:app")
    _add_store(spool, db_default, spooling=True)


def _add_store(parser: argparse.ArgumentParser, db_default: str, spooling: bool = False) -> None:
    parser.add_argument(
        "--db",
        default=db_default,
        metavar="URL",
        help=("the database to spool from" if spooling else "the database whose store to read")
        + f" (default: $APIARY_DB or {db_default})",
    )
    parser.add_argument(
        "--store",
        metavar="PATH",
        help="the DuckDB trace store (default: <database>-trace.duckdb beside a SQLite "
        "--db file; required for PostgreSQL)",
    )


def run_trace_command(args: argparse.Namespace) -> int:
    """Run ``apiary trace ...`` parsed by :func:`add_trace_commands`; return the exit status.

    Errors propagate for the caller to report like any other command's:
    :class:`~apiary.NotFoundError` (no store file yet, an app that cannot be loaded),
    :class:`~apiary.DatabaseUnavailableError` (another process kept the store locked for
    :data:`LOCK_WAIT` seconds), :class:`ValueError` (a bad ``COLUMN=VALUE``, an unknown
    table or column, a failing SQL query).
    """
    command = args.trace_command
    path = store_path(args.db, args.store)
    if command == "spool":
        return _spool(args, path)
    handlers: dict[str, Callable[[TraceStore, argparse.Namespace], int]] = {
        "workflow": _workflow,
        "row": _row,
        "sql": _sql,
        "export": _export,
    }
    handler = handlers.get(command)
    if handler is None:
        raise ValueError(f"unknown trace subcommand {command!r}")
    with open_store(path) as store:
        return handler(store, args)


# -- the store -----------------------------------------------------------------------


def store_path(db: str, store: str | None) -> str:
    """The trace store's path: ``store``, else the one beside the SQLite database ``db``."""
    if store:
        return store
    derived = _trace_store(db)
    if derived is None:
        raise ValueError(
            f"give the trace store with --store PATH: only a SQLite database has a default "
            f"store beside it, and --db is {_redact(db)}"
        )
    return derived


def open_store(path: str) -> TraceStore:
    """Open the store at ``path`` read-only, waiting up to :data:`LOCK_WAIT` for a writer."""
    if not os.path.exists(path):
        raise NotFoundError(
            f"no trace store at {path}: it is created when traces are first spooled. Run a "
            "workflow (a runtime on a SQLite database spools in the background and when it "
            "closes) or `apiary trace spool MODULE:APP --db URL --store PATH` first"
        )
    from apiary._tracing.store import TraceStore

    store = TraceStore(path, {}, read_only=True)
    _retry_locked(path, lambda: store.open(wait=0))
    return store


def _retry_locked(path: str, action: Callable[[], T]) -> T:
    """``action()``, retried while another process has the DuckDB file at ``path`` open."""
    deadline = time.monotonic() + LOCK_WAIT
    while True:
        try:
            return action()
        except DatabaseUnavailableError as exc:
            if not _is_lock_conflict(exc):
                raise
            if time.monotonic() >= deadline:
                raise DatabaseUnavailableError(
                    f"another process has the trace store {path} open for writing (a "
                    "runtime's or frontend's spooler, or `apiary trace spool`), still after "
                    f"{LOCK_WAIT:g} s; try again, or stop that process. DuckDB said: "
                    f"{exc.__cause__}"
                ) from exc
            time.sleep(_LOCK_POLL)


def _is_lock_conflict(exc: DatabaseUnavailableError) -> bool:
    # TraceStore raises DatabaseUnavailableError from DuckDB's IOException for every file
    # it cannot open; only a lock is worth waiting for (not a file that is no store).
    import duckdb

    cause = exc.__cause__
    return isinstance(cause, duckdb.IOException) and "lock" in str(cause).lower()


# -- subcommands ---------------------------------------------------------------------


def _workflow(store: TraceStore, args: argparse.Namespace) -> int:
    timeline = store.workflow_timeline(args.workflow_id)
    if args.json:
        print(_json(timeline))
    else:
        print(render_timeline(args.workflow_id, timeline))
    if not timeline:
        print(
            f"apiary trace workflow: no trace of workflow {args.workflow_id!r} in "
            f"{store.path} (traces reach the store when they are spooled)",
            file=sys.stderr,
        )
        return 1
    return 0


def _row(store: TraceStore, args: argparse.Namespace) -> int:
    filters = parse_filters(args.filters)
    history = store.row_history(args.table, **filters)
    if args.json:
        print(_json(history))
    else:
        print(render_history(args.table, filters, history))
    return 0 if history else 1


def _sql(store: TraceStore, args: argparse.Namespace) -> int:
    import duckdb

    try:
        columns, rows = store.sql(args.query)
    except duckdb.Error as exc:
        # A bad query is the user's input: reported like one, without a traceback.
        raise ValueError(f"the query failed: {exc}") from exc
    if args.json:
        print(_json([dict(zip(columns, row, strict=True)) for row in rows]))
    elif columns:
        print(render_table(columns, [[_text(v) for v in row] for row in rows]))
        print(f"({len(rows)} row{'' if len(rows) == 1 else 's'})")
    else:
        print("OK")
    return 0


def _export(store: TraceStore, args: argparse.Namespace) -> int:
    for path in store.export_parquet(args.parquet):
        print(path)
    return 0


def _spool(args: argparse.Namespace, path: str) -> int:
    app = load_app(args.app)
    # trace_store=None: this runtime only moves what is staged now, it spools nothing in
    # the background.
    with Runtime(app, args.db, trace_store=None) as rt:
        moved = _retry_locked(path, lambda: rt.spool(path, wait=0))
    print(f"spooled {moved} staged unit trace{'' if moved == 1 else 's'} into {path}")
    return 0


# -- input and output ----------------------------------------------------------------


def parse_filters(pairs: Sequence[str]) -> dict[str, str]:
    """``COLUMN=VALUE`` arguments as a dict (values stay text: the store converts them)."""
    filters: dict[str, str] = {}
    for pair in pairs:
        column, sep, value = pair.partition("=")
        column = column.strip()
        if not sep or not column:
            raise ValueError(f"expected COLUMN=VALUE, got {pair!r}")
        if column.lower() in filters:
            raise ValueError(f"column {column!r} is given twice")
        filters[column.lower()] = value
    return filters


def render_table(header: Sequence[str], rows: Sequence[Sequence[str]], indent: str = "") -> str:
    """Rows of text as aligned columns under ``header``."""
    every = [list(header), *(list(row) for row in rows)]
    widths = [max(len(row[i]) for row in every) for i in range(len(header))]
    return "\n".join(
        indent + "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in every
    )


def render_timeline(workflow_id: str, timeline: Sequence[Mapping[str, Any]]) -> str:
    """A workflow's timeline (:meth:`TraceStore.workflow_timeline`) as text."""
    if not timeline:
        return f"workflow {workflow_id}: no traces"
    count = sum(len(f["accesses"]) for f in timeline)
    executions = "execution" if len(timeline) == 1 else "executions"
    accesses = "access" if count == 1 else "accesses"
    lines = [f"workflow {workflow_id}: {len(timeline)} function {executions}, {count} {accesses}"]
    for number, function in enumerate(timeline, 1):
        unit = function["unit_invocation_id"]
        group = f"  in transaction {unit}" if unit != function["invocation_id"] else ""
        duration = _duration(function["started"], function["ended"])
        kind = "read-only" if function["read_only"] else "writes"
        lines.append(
            f"{number}. {function['function']}  {function['invocation_id']}  {kind}  "
            f"started {_text(function['ts'])} UTC  {duration}{group}"
        )
        rows = [
            [access["op"], _table_of(access), _described(access)] for access in function["accesses"]
        ]
        if rows:
            lines.append(render_table(["op", "table", "row"], rows, indent="   "))
        else:
            lines.append("   (no reads or writes)")
    return "\n".join(lines)


def render_history(
    table: str, filters: Mapping[str, Any], history: Sequence[Mapping[str, Any]]
) -> str:
    """A row's history (:meth:`TraceStore.row_history`) as text."""
    which = f"{table} {' '.join(f'{c}={v}' for c, v in filters.items())}"
    if not history:
        return f"{which}: no accesses"
    header = ["ts (UTC)", "op", "function", "workflow_id", "invocation_id", "row"]
    rows = [
        [
            _text(access["ts"]),
            access["op"],
            access["function"],
            _text(access["workflow_id"]) if access["workflow_id"] is not None else "-",
            _text(access["invocation_id"]),
            _row_text(access["row"]),
        ]
        for access in history
    ]
    noun = "access" if len(history) == 1 else "accesses"
    return f"{which}: {len(history)} {noun}, oldest first\n" + render_table(header, rows)


def _table_of(access: Mapping[str, Any]) -> str:
    if access.get("table"):
        return str(access["table"])
    return ",".join(access.get("tables") or []) or "-"


def _described(access: Mapping[str, Any]) -> str:
    if access.get("row") is not None:
        return _row_text(access["row"])
    # Statement level: an aggregate and the like, or a statement that matched no row.
    statement = " ".join(str(access["statement"]).split())
    if len(statement) > _STATEMENT_WIDTH:
        statement = statement[: _STATEMENT_WIDTH - 3] + "..."
    return f"(statement, no rows named) {statement}"


def _row_text(row: Mapping[str, Any]) -> str:
    return ", ".join(f"{column}={_text(value)}" for column, value in row.items())


def _duration(started: float | None, ended: float | None) -> str:
    if started is None or ended is None:
        return "-"
    return f"{(ended - started) * 1000:.3f} ms"


def _text(value: Any) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, datetime.datetime):
        return value.isoformat(sep=" ")
    if isinstance(value, bytes | bytearray | memoryview):
        return "\\x" + bytes(value).hex()
    return str(value)


def _plain(value: Any) -> Any:
    """``value`` for JSON: times as ISO 8601, decimals and UUIDs as text, bytes as hex."""
    if isinstance(value, datetime.date | datetime.time):
        return value.isoformat()
    if isinstance(value, decimal.Decimal | uuid.UUID):
        return str(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return "\\x" + bytes(value).hex()
    if isinstance(value, datetime.timedelta):
        return value.total_seconds()
    raise TypeError(f"{type(value).__name__} is not JSON")


def _json(data: Any) -> str:
    return json.dumps(data, default=_plain, indent=2)


def _redact(url: str) -> str:
    """``url`` without its password, for messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))
