"""The DuckDB trace store and the spooler that fills it from the staging table.

Staged rows live in a real SQLite file with the engines' staging table; the spooler
reaches it through :class:`SqliteEngine`, a minimal ``transact`` over ``sqlite3``.
Payloads are built in the format :mod:`apiary._capture` stages. The crash test kills a
real child process (SIGKILL) between the DuckDB commit and the OLTP delete; the lock test
holds the DuckDB file in a second process.
"""

from __future__ import annotations

import datetime
import decimal
import gc
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import duckdb
import pytest

import apiary
from apiary import _codec
from apiary._database import Database, Statement
from apiary._errors import DatabaseUnavailableError
from apiary._tracing.spool import HOLD, Spooler
from apiary._tracing.spool_process import SpoolerProcess
from apiary._tracing.store import TraceStore
from apiary._tracing.tables import TableInfo, tables_of
from apiary._tracing.turns import WANTED_SUFFIX
from apiary._tracing.types import duckdb_type
from tests.apps import ROOT

STAGING_DDL = (
    "CREATE TABLE IF NOT EXISTS apiary_trace_staging (id INTEGER PRIMARY KEY AUTOINCREMENT, "
    "workflow_id TEXT, invocation_id TEXT, payload TEXT NOT NULL, created_at REAL NOT NULL)"
)

SCHEMA = [
    """CREATE TABLE customers (
        id INTEGER PRIMARY KEY, name TEXT, balance NUMERIC(10, 2), photo BLOB,
        vip BOOLEAN, born DATE, seen TIMESTAMP, seen_tz TIMESTAMPTZ, token UUID,
        score REAL, notes JSON)""",
    """CREATE TABLE orders (
        customer_id INTEGER, order_no INTEGER, amount DOUBLE PRECISION, status VARCHAR(10),
        PRIMARY KEY (customer_id, order_no))""",
    "CREATE TABLE logs (ts INTEGER, ts_ TEXT, function TEXT, body TEXT)",
]
TABLES = tables_of(SCHEMA)


class SqliteDatabase:
    """``Database`` over one ``sqlite3`` connection; ``{sys}`` names ``apiary_`` tables."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def query(self, stmt: Statement, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        return self.conn.execute(stmt.text.replace("{sys}", "apiary_"), params).fetchall()

    def execute(self, stmt: Statement, params: Sequence[Any]) -> int:
        return self.conn.execute(stmt.text.replace("{sys}", "apiary_"), params).rowcount


class SqliteEngine:
    """The spooler's view of an engine: ``transact`` over a real SQLite file."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self._local = threading.local()

    def transact(self, work: Callable[[Database], Any], *, write: bool) -> Any:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = sqlite3.connect(self.path, isolation_level=None, timeout=30)
        conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
        try:
            result = work(SqliteDatabase(conn))
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        return result


def make_staging(path: Path) -> None:
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(STAGING_DDL)


def stage(path: Path, payloads: Sequence[tuple[str | None, str | None, str]]) -> list[int]:
    """Stage ``(workflow_id, invocation_id, payload)`` rows; return their ids."""
    with sqlite3.connect(path) as conn:
        return [
            int(
                conn.execute(
                    "INSERT INTO apiary_trace_staging (workflow_id, invocation_id, payload, "
                    "created_at) VALUES (?, ?, ?, ?) RETURNING id",
                    (workflow, invocation, payload, time.time()),
                ).fetchone()[0]
            )
            for workflow, invocation, payload in payloads
        ]


def staged_ids(path: Path) -> list[int]:
    with sqlite3.connect(path) as conn:
        return [r[0] for r in conn.execute("SELECT id FROM apiary_trace_staging ORDER BY id")]


def wait_until_spooled(path: Path, seconds: float = 10.0) -> None:
    """Wait until a background spooler has taken every staged row of ``path``."""
    deadline = time.monotonic() + seconds
    while staged_ids(path) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert staged_ids(path) == []


T0 = 1_700_000_000.0  # 2023-11-14 22:13:20 UTC
CUSTOMER_COLUMNS = list(TABLES["customers"].columns)


def unit_payload(workflow: str, customer: int, order_no: int, t: float = T0) -> str:
    """A unit of two functions: ``pay`` reads a customer, writes an order and its balance;
    ``audit`` counts orders (a statement-level read) and finds no log."""
    pay, audit = f"{workflow}/1", f"{workflow}/2"
    functions = [[pay, "pay", t, t + 0.01, False], [audit, "audit", t + 0.02, t + 0.03, True]]
    statements = [
        ["SELECT name FROM customers WHERE id = ?", "read", ["customers"], [["customers", ["id"]]]],
        [
            "INSERT INTO orders VALUES (?, ?, ?, ?)",
            "insert",
            ["orders"],
            [["orders", ["customer_id", "order_no", "amount", "status"]]],
        ],
        [
            "UPDATE customers SET balance = balance - ? WHERE id = ?",
            "update",
            ["customers"],
            [["customers", CUSTOMER_COLUMNS]],
        ],
        ["SELECT count(*) FROM orders", "read", ["orders"], []],
        ["SELECT body FROM logs WHERE ts = ?", "read", ["logs"], [["logs", ["ts", "ts_"]]]],
    ]
    customer_row = [
        customer,
        f"customer {customer}",
        decimal.Decimal("90.50"),
        b"\x00\xff",
        1,  # SQLite's boolean
        "1990-02-03",
        "2024-05-06 07:08:09",
        "2024-05-06T07:08:09+02:00",
        "12345678-1234-5678-1234-567812345678",
        4.5,
        '{"a": 1}',
    ]
    events = [
        [0, t + 0.001, 0, 0, [customer]],
        [0, t + 0.002, 1, 0, [customer, order_no, 9.5, "new"]],
        [0, t + 0.003, 2, 0, customer_row],
        [1, t + 0.021, 3, -1, None],
        [1, t + 0.022, 4, -1, None],  # a lookup that found nothing
    ]
    return _codec.dumps({"f": functions, "s": statements, "e": events})


@pytest.fixture
def store(tmp_path: Path) -> Iterator[TraceStore]:
    with TraceStore(str(tmp_path / "trace.duckdb"), TABLES) as opened:
        yield opened


def count(store: TraceStore, table: str) -> int:
    return int(store.sql(f'SELECT count(*) FROM "{table}"')[1][0][0])


# -- schema ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("declared", "expected"),
    [
        ("INT", "BIGINT"),
        ("INTEGER", "BIGINT"),
        ("BIGSERIAL", "BIGINT"),
        ("DOUBLE PRECISION", "DOUBLE"),
        ("REAL", "DOUBLE"),
        ("NUMERIC", "DOUBLE"),
        ("DECIMAL(10, 2)", "DECIMAL(10,2)"),
        ("NUMERIC(5)", "DECIMAL(5,0)"),
        ("NUMERIC(40, 2)", "DOUBLE"),
        ("VARCHAR(20)", "VARCHAR"),
        ("TEXT", "VARCHAR"),
        ("VARBINARY", "BLOB"),
        ("bytea", "BLOB"),
        ("BOOL", "BOOLEAN"),
        ("DATE", "DATE"),
        ("TIMESTAMP(3)", "TIMESTAMP"),
        ("TIMESTAMP WITH TIME ZONE", "TIMESTAMPTZ"),
        ("UUID", "UUID"),
        ("JSONB", "VARCHAR"),
        ("ARRAY<INT>", "VARCHAR"),
        ("INTEGER[]", "VARCHAR"),
        ("", "VARCHAR"),
        ("GEOMETRY", "VARCHAR"),
    ],
)
def test_declared_types_map_to_duckdb_types(declared: str, expected: str) -> None:
    assert duckdb_type(declared) == expected


def describe(store: TraceStore, table: str) -> dict[str, str]:
    return {row[0]: row[1] for row in store.sql(f'DESCRIBE "{table}"')[1]}


def test_schema_is_created_and_typed_from_the_tables(store: TraceStore) -> None:
    columns = describe(store, "customers_events")
    assert list(columns)[:6] == [
        "ts",
        "workflow_id",
        "invocation_id",
        "function",
        "op",
        "statement",
    ]
    assert columns == {
        "ts": "TIMESTAMP",
        "workflow_id": "VARCHAR",
        "invocation_id": "VARCHAR",
        "function": "VARCHAR",
        "op": "VARCHAR",
        "statement": "VARCHAR",
        "id": "BIGINT",
        "name": "VARCHAR",
        "balance": "DECIMAL(10,2)",
        "photo": "BLOB",
        "vip": "BOOLEAN",
        "born": "DATE",
        "seen": "TIMESTAMP",
        "seen_tz": "TIMESTAMP WITH TIME ZONE",
        "token": "UUID",
        "score": "DOUBLE",
        "notes": "VARCHAR",
        "staging_id": "BIGINT",
        "seq": "INTEGER",
        "unconverted": "VARCHAR",
    }
    # App columns named like trace columns get a "_" per clash, in column order.
    logs = describe(store, "logs_events")
    assert [c for c in logs if c in ("ts_", "ts__", "function_", "body")] == [
        "ts_",
        "ts__",
        "function_",
        "body",
    ]
    assert logs["ts_"] == "BIGINT"
    assert logs["ts__"] == "VARCHAR"
    assert describe(store, "function_invocations")["read_only"] == "BOOLEAN"
    assert describe(store, "statement_events")["tables"] == "VARCHAR[]"
    key = store.sql(
        "SELECT constraint_type FROM duckdb_constraints() WHERE table_name = 'spooled'"
    )[1]
    assert ("PRIMARY KEY",) in key


def test_an_app_table_named_statement_gets_its_own_event_table(tmp_path: Path) -> None:
    tables = tables_of(["CREATE TABLE statement (id INTEGER PRIMARY KEY, body TEXT)"])
    with TraceStore(str(tmp_path / "t.duckdb"), tables) as store:
        assert "body" in describe(store, "events_of_statement")
        assert "tables" in describe(store, "statement_events")


def test_columns_added_later_are_added_to_the_store(tmp_path: Path) -> None:
    path = str(tmp_path / "t.duckdb")
    with TraceStore(path, TABLES) as store:
        store.ingest([(1, "w1", "w1/1", unit_payload("w1", 7, 1))])
    later = dict(TABLES)
    later["orders"] = TableInfo(
        "orders",
        (*TABLES["orders"].columns, "note", "ts"),
        (*TABLES["orders"].types, "TEXT", "INT"),
        TABLES["orders"].primary_key,
    )
    with TraceStore(path, later) as store:
        columns = describe(store, "orders_events")
        assert columns["note"] == "VARCHAR"
        assert columns["ts_"] == "BIGINT"
        assert list(columns)[-2:] == ["note", "ts_"]
        assert store.row_history("orders", customer_id=7)[0]["row"]["note"] is None
    with TraceStore(path, TABLES) as store:  # an older declaration: nothing is dropped
        assert "note" in describe(store, "orders_events")


# -- ingest ---------------------------------------------------------------------------


def test_an_ingest_runs_without_cyclic_collections(store: TraceStore) -> None:
    # The collector would walk the batch's many small objects again and again; it is off
    # during an ingest, and left as it was found (on, or off by the application's choice).
    collections: list[str] = []

    def seen(phase: str, info: dict[str, Any]) -> None:
        collections.append(phase)

    batch = [(i, f"w{i}", f"w{i}/u", unit_payload(f"w{i}", 7, 1)) for i in range(1, 401)]
    assert gc.isenabled()
    gc.callbacks.append(seen)
    try:
        assert len(store.ingest(batch)) == 400
        # At most the one that runs when the collector is switched back on.
        assert collections.count("start") <= 1, collections
        assert gc.isenabled()
        gc.disable()
        try:
            store.ingest([(1000, "w", "w/u", "not json")])  # kept aside, not raised
            assert not gc.isenabled()
        finally:
            gc.enable()
    finally:
        gc.callbacks.remove(seen)
    assert count(store, "function_invocations") == 800  # two functions a unit


def test_ingest_stores_functions_rows_and_statements(store: TraceStore) -> None:
    assert store.ingest([(5, "w1", "w1/u", unit_payload("w1", 7, 1))]) == [5]

    functions = store.sql(
        "SELECT ts, workflow_id, invocation_id, function, started, ended, read_only, "
        "unit_invocation_id, staging_id FROM function_invocations ORDER BY started"
    )[1]
    assert functions == [
        (datetime.datetime(2023, 11, 14, 22, 13, 20), "w1", "w1/1", "pay", T0, T0 + 0.01, False,
         "w1/u", 5),
        (datetime.datetime(2023, 11, 14, 22, 13, 20, 20000), "w1", "w1/2", "audit", T0 + 0.02,
         T0 + 0.03, True, "w1/u", 5),
    ]  # fmt: skip

    customers = store.sql(
        "SELECT op, function, id, name, balance, photo, vip, born, seen, seen_tz, token, score, "
        "notes, seq, unconverted FROM customers_events ORDER BY ts"
    )[1]
    assert customers[0] == ("read", "pay", 7, *[None] * 10, 0, None)
    assert customers[1] == (
        "update",
        "pay",
        7,
        "customer 7",
        decimal.Decimal("90.50"),
        b"\x00\xff",
        True,
        datetime.date(1990, 2, 3),
        datetime.datetime(2024, 5, 6, 7, 8, 9),
        datetime.datetime(2024, 5, 6, 5, 8, 9, tzinfo=datetime.UTC),
        uuid.UUID("12345678-1234-5678-1234-567812345678"),
        4.5,
        '{"a": 1}',
        2,
        None,
    )
    orders = store.sql("SELECT op, customer_id, order_no, amount, status FROM orders_events")[1]
    assert orders == [("insert", 7, 1, 9.5, "new")]

    statements = store.sql(
        "SELECT function, op, statement, tables, seq FROM statement_events ORDER BY seq"
    )[1]
    assert statements == [
        ("audit", "read", "SELECT count(*) FROM orders", ["orders"], 3),
        ("audit", "read", "SELECT body FROM logs WHERE ts = ?", ["logs"], 4),
    ]
    assert store.sql("SELECT staging_id FROM spooled")[1] == [(5,)]


def test_values_that_do_not_fit_their_column_are_kept_as_json(store: TraceStore) -> None:
    payload = _codec.dumps(
        {
            "f": [["c1", "fix", T0, T0, False]],
            "s": [["UPDATE ...", "update", ["orders"], [["orders", ["customer_id", "order_no",
                                                                   "amount", "status"]]]]],
            "e": [[0, T0, 0, 0, ["seven", 99999999999999999999, "1.5e3", b"\x01"]]],
        }
    )  # fmt: skip
    assert store.ingest([(1, None, "c1", payload)]) == [1]
    row = store.sql("SELECT customer_id, order_no, amount, status FROM orders_events")[1][0]
    assert row == (None, None, 1500.0, None)
    history = store.row_history("orders", amount=1500)
    assert history[0]["row"] == {
        "customer_id": "seven",
        "order_no": 99999999999999999999,
        "amount": 1500.0,
        "status": b"\x01",
    }
    assert store.row_history("orders", customer_id="seven") == []  # not a stored BIGINT


def test_microsecond_timestamps_and_float_seconds_are_both_read(store: TraceStore) -> None:
    # Units stage integer microseconds ("u": 1); older versions staged float seconds.
    micros = 1_700_000_000_123_456
    statement = ["SELECT ...", "read", ["orders"], [["orders", ["customer_id", "order_no"]]]]
    new = _codec.dumps(
        {
            "u": 1,
            "f": [["c1", "get", micros, micros + 250, True]],
            "s": [statement],
            "e": [[0, micros + 100, 0, 0, [7, 1]]],
        }
    )
    old = _codec.dumps(
        {"f": [["c2", "get", T0, T0 + 0.5, True]], "s": [statement], "e": [[0, T0, 0, 0, [7, 2]]]}
    )
    assert sorted(store.ingest([(1, None, "c1", new), (2, None, "c2", old)])) == [1, 2]
    functions = store.sql(
        "SELECT invocation_id, epoch_us(ts), round(started * 1e6)::BIGINT, "
        "round(ended * 1e6)::BIGINT FROM function_invocations ORDER BY invocation_id"
    )[1]
    assert functions == [
        ("c1", micros, micros, micros + 250),
        ("c2", int(T0 * 1e6), int(T0 * 1e6), int((T0 + 0.5) * 1e6)),
    ]
    events = store.sql("SELECT epoch_us(ts), order_no FROM orders_events ORDER BY order_no")[1]
    assert events == [(micros + 100, 1), (int(T0 * 1e6), 2)]


def test_a_document_of_statement_events_stores_what_row_events_store(tmp_path: Path) -> None:
    # Units stage "u": 2 documents (one event per statement run, holding its rows'
    # captured columns); older versions staged one event per row ("u": 1). The same
    # accesses in both forms must store the same events, in the same order.
    micros = 1_700_000_000_000_000
    join = [
        "SELECT c.name, o.amount FROM customers c LEFT JOIN orders o ON ...",
        "read",
        ["customers", "orders"],
        [["customers", ["id"]], ["orders", ["customer_id", "order_no"]]],
    ]
    point = [
        "SELECT name FROM customers WHERE id = ?",
        "read",
        ["customers"],
        [["customers", ["id"]]],
    ]
    total = ["SELECT count(*) FROM orders", "read", ["orders"], []]
    functions = [["c1", "get", micros, micros + 50, True], ["c2", "put", micros + 60, None, False]]
    statements = [join, point, total]
    grouped = {
        "u": 2,
        "s": statements,
        "f": functions,
        "e": [
            [0, micros + 1, 0, [[1, 1, 7], [2, None, None], [None, 3, 8]]],
            [0, micros + 2, 1, [5, None]],
            [1, micros + 61, 1, []],  # a lookup that found nothing
            [1, micros + 62, 2],  # a statement that names no rows
        ],
    }
    by_row = {
        "u": 1,
        "f": functions,
        "s": statements,
        "e": [
            [0, micros + 1, 0, 0, [1]],
            [0, micros + 1, 0, 1, [1, 7]],
            [0, micros + 1, 0, 0, [2]],
            [0, micros + 1, 0, 1, [3, 8]],
            [0, micros + 2, 1, 0, [5]],
            [1, micros + 61, 1, -1, None],
            [1, micros + 62, 2, -1, None],
        ],
    }
    stored = []
    for name, document in (("grouped", grouped), ("by_row", by_row)):
        with TraceStore(str(tmp_path / f"{name}.duckdb"), TABLES) as store:
            assert store.ingest([(1, "w", "w/1", _codec.dumps(document))]) == [1]
            stored.append(
                [
                    store.sql(
                        f"SELECT epoch_us(ts), invocation_id, op, statement, {columns}, seq "
                        f"FROM {table} ORDER BY seq"
                    )[1]
                    for table, columns in (
                        ("customers_events", "id"),
                        ("orders_events", "customer_id, order_no"),
                        ("statement_events", "tables"),
                    )
                ]
            )
    assert stored[0] == stored[1]
    customers, orders, statement_level = stored[0]
    assert [row[4] for row in customers] == [1, 2, 5]
    assert [row[4:6] for row in orders] == [(1, 7), (3, 8)]
    assert [row[1] for row in statement_level] == ["c2", "c2"]


def test_malformed_statement_events_are_kept_aside(store: TraceStore) -> None:
    statement = ["SELECT ...", "read", ["orders"], [["orders", ["customer_id", "order_no"]]]]
    functions = [["c", "get", 1_700_000_000_000_000, None, True]]

    def document(events: list[Any], version: int = 2) -> str:
        return _codec.dumps({"u": version, "s": [statement], "f": functions, "e": events})

    good = document([[0, 1_700_000_000_000_001, 0, [[7, 1]]]])
    batch = [
        (1, "w1", "w1/u", good),
        (2, "w2", "w2/u", document([[0, 1_700_000_000_000_001, 0, [[7]]]])),  # one column
        (3, "w3", "w3/u", document([[0, 1_700_000_000_000_001, 0, [7, 1]]])),  # not rows
        (4, "w4", "w4/u", document([[0, 1_700_000_000_000_001, 0, [], []]])),  # two lists
        (5, "w5", "w5/u", document([[1, 1_700_000_000_000_001, 0, []]])),  # no function 1
        (6, "w6", "w6/u", document([], version=3)),  # a newer format
    ]
    assert sorted(store.ingest(batch)) == [1, 2, 3, 4, 5, 6]
    rejected = store.sql("SELECT staging_id FROM rejected_payloads ORDER BY 1")[1]
    assert rejected == [(2,), (3,), (4,), (5,), (6,)]
    assert store.sql("SELECT workflow_id, customer_id, order_no FROM orders_events")[1] == [
        ("w1", 7, 1)
    ]
    assert "newer" in store.sql("SELECT error FROM rejected_payloads WHERE staging_id = 6")[1][0][0]


def test_an_already_spooled_row_is_skipped_not_stored_twice(store: TraceStore) -> None:
    batch = [
        (1, "w1", "w1/u", unit_payload("w1", 7, 1)),
        (2, "w2", "w2/u", unit_payload("w2", 8, 1)),
    ]
    assert store.ingest(batch[:1]) == [1]
    assert sorted(store.ingest(batch)) == [1, 2]  # 1 found again: reported, not stored
    assert sorted(store.ingest(batch)) == [1, 2]
    assert count(store, "function_invocations") == 4
    assert count(store, "orders_events") == 2
    assert count(store, "spooled") == 2


def test_malformed_payloads_are_kept_aside_and_do_not_block(store: TraceStore) -> None:
    bad_shape = _codec.dumps({"f": [], "s": [], "e": [[5, T0, 0, 0, [1]]]})  # no function 5
    wrong_width = unit_payload("w3", 9, 1).replace('[9,1,9.5,"new"]', "[9,1]")
    batch = [
        (1, "w1", "w1/u", unit_payload("w1", 7, 1)),
        (2, "w2", "w2/u", "{not json"),
        (3, "w3", "w3/u", wrong_width),
        (4, None, "c", bad_shape),
        (5, None, "c", _codec.dumps([1, 2])),
    ]
    assert sorted(store.ingest(batch)) == [1, 2, 3, 4, 5]
    rejected = store.sql("SELECT staging_id FROM rejected_payloads ORDER BY 1")[1]
    assert rejected == [(2,), (3,), (4,), (5,)]
    assert count(store, "spooled") == 5
    # Nothing of a rejected unit is stored, not even the parts before its error.
    assert store.sql("SELECT DISTINCT workflow_id FROM function_invocations")[1] == [("w1",)]
    assert store.sql("SELECT DISTINCT workflow_id FROM customers_events")[1] == [("w1",)]


def test_a_row_that_fails_in_duckdb_is_rejected_alone(store: TraceStore) -> None:
    # Valid JSON of the right shape, but no TIMESTAMP holds this time: DuckDB refuses
    # the batch's INSERT, and the rows are then stored one by one.
    far_future = unit_payload("w2", 8, 1, t=1e300)
    batch = [(1, "w1", "w1/u", unit_payload("w1", 7, 1)), (2, "w2", "w2/u", far_future)]
    batch.append((3, "w3", "w3/u", unit_payload("w3", 9, 1)))
    assert sorted(store.ingest(batch)) == [1, 2, 3]
    assert store.sql("SELECT staging_id, error FROM rejected_payloads")[1][0][0] == 2
    assert "Conversion" in store.sql("SELECT error FROM rejected_payloads")[1][0][0]
    workflows = store.sql("SELECT DISTINCT workflow_id FROM orders_events ORDER BY 1")[1]
    assert workflows == [("w1",), ("w3",)]
    assert count(store, "spooled") == 3


@pytest.mark.parametrize(
    "value",
    [
        decimal.Decimal("-12.50"),
        datetime.datetime(2024, 1, 2, 3, 4, 5, tzinfo=datetime.UTC),
        datetime.date(2024, 1, 2),
        datetime.time(3, 4, 5),
        b"\x00\x01",
        uuid.UUID(int=7),
        {"$x": [decimal.Decimal("1.5")]},  # escaped as $dict: the codec's own decoder runs
        {"a": {"$decimal": "not a tag, a string"}},
        [{"$datetime": "x"}, "$decimal"],
    ],
)
def test_payloads_decode_as_the_codec_decodes_them(value: Any, store: TraceStore) -> None:
    from apiary._tracing.layout import _decode

    payload = _codec.dumps({"f": [["c", "f", T0, T0, False]], "s": [], "e": [[0, T0, 0, 0, value]]})
    assert _decode(payload) == _codec.loads(payload)
    assert type(_decode(payload)["e"][0][4]) is type(value)


def test_json_values_are_stored_as_json_text(store: TraceStore) -> None:
    customers = list(TABLES["customers"].columns)
    payload = _codec.dumps(
        {
            "f": [["c", "f", T0, T0, False]],
            "s": [["INSERT ...", "insert", ["customers"], [["customers", ["id", "notes"]]]]],
            "e": [[0, T0, 0, 0, [1, {"$x": 1}]], [0, T0, 0, 0, [2, [1, "a"]]]],
        }
    )
    assert customers[-1] == "notes"
    store.ingest([(1, None, "c", payload)])
    notes = store.sql("SELECT notes FROM customers_events ORDER BY id")[1]
    assert notes == [('{"$x":1}',), ('[1,"a"]',)]


def test_tables_and_columns_met_only_in_traces_are_stored_as_text(tmp_path: Path) -> None:
    path = str(tmp_path / "t.duckdb")
    payload = _codec.dumps(
        {
            "f": [["c", "f", T0, T0, False]],
            "s": [["INSERT ...", "insert", ["extra"], [["extra", ["k", "ts", "when"]]]]],
            "e": [[0, T0, 0, 0, [1, 2, datetime.date(2024, 1, 2)]]],
        }
    )
    with TraceStore(path, {}) as store:
        store.ingest([(1, None, "c", payload)])
        assert store.sql('SELECT k, ts_, "when" FROM extra_events')[1] == [("1", "2", "2024-01-02")]
    with TraceStore(path, {}) as store:  # reopened: the same columns, not new ones
        store.ingest([(2, None, "c", payload)])
        assert count(store, "extra_events") == 2
        assert store.row_history("extra", ts="2")[0]["row"]["ts"] == "2"
        assert "ts__" not in describe(store, "extra_events")


# -- queries --------------------------------------------------------------------------


def test_workflow_timeline_lists_functions_with_their_accesses(store: TraceStore) -> None:
    store.ingest(
        [(1, "w1", "w1/u", unit_payload("w1", 7, 1)), (2, "w2", "w2/u", unit_payload("w2", 8, 1))]
    )
    timeline = store.workflow_timeline("w1")
    assert [(f["function"], f["invocation_id"]) for f in timeline] == [
        ("pay", "w1/1"),
        ("audit", "w1/2"),
    ]
    pay, audit = timeline
    assert [(a["op"], a["table"]) for a in pay["accesses"]] == [
        ("read", "customers"),
        ("insert", "orders"),
        ("update", "customers"),
    ]
    assert pay["accesses"][0]["row"] == {"id": 7}
    assert pay["accesses"][1]["row"] == {
        "customer_id": 7,
        "order_no": 1,
        "amount": 9.5,
        "status": "new",
    }
    assert [(a["table"], a["tables"], a["row"]) for a in audit["accesses"]] == [
        (None, ["orders"], None),
        (None, ["logs"], None),
    ]
    assert store.workflow_timeline("nope") == []


def test_row_history_with_a_composite_key(store: TraceStore) -> None:
    columns = list(TABLES["orders"].columns)

    def write(op: str, order_no: int, status: str, t: float) -> str:
        return _codec.dumps(
            {
                "f": [[f"w{t}/1", f"{op}_order", t, t, op == "read"]],
                "s": [[f"{op} orders", op, ["orders"], [["orders", columns]]]],
                "e": [[0, t, 0, 0, [7, order_no, 1.0, status]]],
            }
        )  # fmt: skip

    read_key = _codec.dumps(
        {
            "f": [["r/1", "look", T0 + 3, T0 + 3, True]],
            "s": [["SELECT ...", "read", ["orders"], [["orders", ["customer_id", "order_no"]]]]],
            "e": [[0, T0 + 3, 0, 0, [7, 1]]],
        }
    )
    # Staging ids out of time order: history follows ts, not ids.
    store.ingest(
        [
            (10, "w", "u", write("delete", 1, "gone", T0 + 4)),
            (11, "w", "u", read_key),
            (12, "w", "u", write("insert", 1, "new", T0 + 1)),
            (13, "w", "u", write("insert", 2, "other", T0 + 1.5)),
            (14, "w", "u", write("update", 1, "paid", T0 + 2)),
        ]
    )
    history = store.row_history("orders", customer_id=7, order_no=1)
    assert [(h["op"], h["row"].get("status")) for h in history] == [
        ("insert", "new"),
        ("update", "paid"),
        ("read", None),
        ("delete", "gone"),
    ]
    assert history[2]["row"] == {"customer_id": 7, "order_no": 1}
    assert history[0]["function"] == "insert_order"
    assert history[0]["ts"] == datetime.datetime(2023, 11, 14, 22, 13, 21)
    assert len(store.row_history("ORDERS", customer_id=7)) == 5
    assert store.row_history("orders", customer_id=8) == []
    with pytest.raises(ValueError, match="no column"):
        store.row_history("orders", nope=1)
    with pytest.raises(ValueError, match="no table"):
        store.row_history("nope", id=1)


def test_row_history_converts_keys_to_the_column_type(store: TraceStore) -> None:
    store.ingest([(1, "w1", "w1/u", unit_payload("w1", 7, 1))])
    assert len(store.row_history("customers", id="7")) == 2
    assert len(store.row_history("customers", balance=decimal.Decimal("90.5"))) == 1
    assert (
        len(store.row_history("customers", token=uuid.UUID(int=0x12345678123456781234567812345678)))
        == 1
    )


def test_sql_and_parquet_export(store: TraceStore, tmp_path: Path) -> None:
    store.ingest(
        [(1, "w1", "w1/u", unit_payload("w1", 7, 1)), (2, "w2", "w2/u", unit_payload("w2", 8, 2))]
    )
    columns, rows = store.sql(
        "SELECT workflow_id, count(*) AS n FROM function_invocations GROUP BY 1 ORDER BY 1"
    )
    assert columns == ["workflow_id", "n"]
    assert rows == [("w1", 2), ("w2", 2)]
    assert store.sql("SELECT count(*) FROM orders_events WHERE order_no = ?", [2])[1] == [(1,)]

    paths = store.export_parquet(str(tmp_path / "it's out"))
    names = sorted(Path(p).name for p in paths)
    assert "orders_events.parquet" in names
    assert "function_invocations.parquet" in names
    assert "spooled.parquet" in names
    back = duckdb.connect()
    orders = str(tmp_path / "it's out" / "orders_events.parquet").replace("'", "''")
    assert back.execute(
        f"SELECT customer_id, order_no, status FROM read_parquet('{orders}') ORDER BY 1"
    ).fetchall() == [(7, 1, "new"), (8, 2, "new")]
    back.close()


def test_a_locked_file_and_a_read_only_store(tmp_path: Path) -> None:
    path = str(tmp_path / "t.duckdb")
    with TraceStore(path, TABLES) as store:
        store.ingest([(1, "w1", "w1/u", unit_payload("w1", 7, 1))])
    with TraceStore(path, TABLES, read_only=True) as reader:
        assert len(reader.row_history("orders", customer_id=7)) == 1
        with pytest.raises(DatabaseUnavailableError):
            reader.ingest([(2, "w2", "w2/u", unit_payload("w2", 8, 1))])


# -- spooling -------------------------------------------------------------------------


@pytest.fixture
def staging(tmp_path: Path) -> Path:
    path = tmp_path / "app.db"
    make_staging(path)
    return path


def test_spooler_moves_every_staged_row_once(staging: Path, store: TraceStore) -> None:
    ids = stage(staging, [(f"w{i}", f"w{i}/u", unit_payload(f"w{i}", i, 1)) for i in range(23)])
    spooler = Spooler(SqliteEngine(staging), store, batch=5)
    assert spooler.spool_once() == 5
    assert staged_ids(staging) == ids[5:]
    assert spooler.spool_all() == 18
    assert staged_ids(staging) == []
    assert store.sql("SELECT staging_id FROM spooled ORDER BY 1")[1] == [(i,) for i in ids]
    assert count(store, "function_invocations") == 46
    assert spooler.spool_once() == 0


def test_spooler_keeps_no_high_water_mark(staging: Path, store: TraceStore) -> None:
    stage(staging, [("w1", "u", unit_payload("w1", 1, 1)), ("w2", "u", unit_payload("w2", 2, 1))])
    spooler = Spooler(SqliteEngine(staging), store)
    assert spooler.spool_all() == 2
    # A transaction that took a lower id commits late.
    with sqlite3.connect(staging) as conn:
        conn.execute(
            "INSERT INTO apiary_trace_staging VALUES (0, 'w0', 'u', ?, 0)",
            (unit_payload("w0", 3, 1),),
        )
    assert spooler.spool_all() == 1
    assert len(store.workflow_timeline("w0")) == 2


def test_background_spooling_and_stop(staging: Path, store: TraceStore) -> None:
    engine = SqliteEngine(staging)
    spooler = Spooler(engine, store, batch=4)
    assert spooler.start(interval=0.02)
    stage(staging, [(f"w{i}", "u", unit_payload(f"w{i}", i, 1)) for i in range(10)])
    deadline = time.monotonic() + 10
    while staged_ids(staging) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert staged_ids(staging) == []
    stage(staging, [(f"late{i}", "u", unit_payload(f"late{i}", i, 1)) for i in range(3)])
    spooler.stop()  # whatever the thread has not moved yet, stop() moves
    assert not spooler.running
    assert staged_ids(staging) == []
    assert count(store, "spooled") == 13


CHILD = r"""
import os, signal, sys
from apiary._tracing.spool import Spooler
from apiary._tracing.store import TraceStore
from tests.test_trace_store import TABLES, SqliteEngine

staging, trace, mode = sys.argv[1:4]
store = TraceStore(trace, TABLES)
spooler = Spooler(SqliteEngine(staging), store, batch=4)
if mode == "crash":
    # Killed between the DuckDB commit and the OLTP delete of the third batch.
    delete, batches = Spooler._delete, []
    def crashing_delete(self, part, ids):
        batches.append(ids)
        if len(batches) == 3:
            print(",".join(map(str, ids)), flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
        delete(self, part, ids)
    Spooler._delete = crashing_delete
    spooler.spool_all()
    sys.exit("not killed")
else:  # hold the store until told to stop
    print("started" if spooler.start(interval=0.05) else "refused", flush=True)
    sys.stdin.readline()
    spooler.stop()
    store.close()
"""


def child(*args: str) -> subprocess.Popen[str]:
    """A child running CHILD: ``<staging> <trace> crash`` or ``... hold``."""
    path = [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(path)}
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, *args],
        cwd=ROOT,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


@pytest.mark.slow
def test_a_crash_between_duckdb_commit_and_oltp_delete_loses_and_duplicates_nothing(
    staging: Path, tmp_path: Path
) -> None:
    ids = stage(staging, [(f"w{i}", f"w{i}/u", unit_payload(f"w{i}", i, i)) for i in range(18)])
    trace = str(tmp_path / "trace.duckdb")
    proc = child(str(staging), trace, "crash")
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    in_flight = [int(i) for i in out.split(",")]
    assert in_flight == ids[8:12]
    assert staged_ids(staging) == ids[8:]  # the third batch: stored but still staged

    with TraceStore(trace, TABLES) as store:
        spooled = [r[0] for r in store.sql("SELECT staging_id FROM spooled ORDER BY 1")[1]]
        assert spooled == ids[:12]
        assert Spooler(SqliteEngine(staging), store, batch=4).spool_all() == 10
        assert staged_ids(staging) == []
        per_id = store.sql(
            "SELECT staging_id, count(*) FROM function_invocations GROUP BY 1 ORDER BY 1"
        )[1]
        assert per_id == [(i, 2) for i in ids]
        assert store.sql("SELECT count(*), count(DISTINCT staging_id) FROM orders_events")[1] == [
            (18, 18)
        ]
        assert store.sql("SELECT staging_id FROM spooled ORDER BY 1")[1] == [(i,) for i in ids]


@pytest.mark.slow
def test_only_one_process_spools(
    staging: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    trace = str(tmp_path / "trace.duckdb")
    holder = child(str(staging), trace, "hold")
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "started"
        store = TraceStore(trace, TABLES)
        spooler = Spooler(SqliteEngine(staging), store)
        with caplog.at_level(logging.WARNING, logger="apiary.trace"):
            assert not spooler.start()
            assert not spooler.start()
        assert len(caplog.records) == 1
        assert "another process" in caplog.records[0].getMessage()
        with pytest.raises(DatabaseUnavailableError, match="lock"):
            store.open()
        # The holder spools what is staged meanwhile.
        stage(staging, [("w1", "u", unit_payload("w1", 1, 1))])
        wait_until_spooled(staging)
    finally:
        holder.communicate("stop\n", timeout=60)
    assert holder.returncode == 0
    assert spooler.start(interval=0.05)  # the file is free now
    spooler.stop()
    assert count(store, "spooled") == 1
    store.close()


def test_spoolers_of_one_file_in_one_process_take_turns(tmp_path: Path) -> None:
    # Two databases' spoolers and a query, all on one trace file in this process: DuckDB
    # would share one database between them and fail their concurrent transactions.
    dbs = [tmp_path / "a.db", tmp_path / "b.db"]
    trace = str(tmp_path / "trace.duckdb")
    for db in dbs:
        make_staging(db)
    spoolers = [Spooler(SqliteEngine(db), TraceStore(trace, TABLES), batch=3) for db in dbs]
    for spooler in spoolers:
        assert spooler.start(interval=0.001, release=True)
    try:
        for i in range(40):
            for name, db in zip("ab", dbs, strict=True):
                stage(db, [(f"{name}{i}", "u", unit_payload(f"{name}{i}", i, 1))])
            with TraceStore(trace, TABLES) as reader:  # waits for its turn, as spoolers do
                reader.sql("SELECT count(*) FROM function_invocations")
    finally:
        for spooler in spoolers:
            spooler.stop()
            spooler.store.close()
    assert [staged_ids(db) for db in dbs] == [[], []]
    with TraceStore(trace, TABLES) as store:
        assert count(store, "function_invocations") == 2 * 40 * 2
        assert count(store, "spooled") == 80


def test_an_open_waits_for_its_turn_then_gives_up(tmp_path: Path) -> None:
    trace = str(tmp_path / "trace.duckdb")
    holder = TraceStore(trace, TABLES)
    holder.open()
    waiting = TraceStore(trace, TABLES)
    started = time.monotonic()
    with pytest.raises(DatabaseUnavailableError, match="open in this process by another"):
        waiting.open(wait=0.2)
    assert time.monotonic() - started >= 0.2
    threading.Timer(0.2, holder.close).start()
    waiting.open(wait=10)  # gets it once the holder closes
    assert count(waiting, "spooled") == 0
    waiting.close()


def test_a_database_created_again_is_not_mistaken_for_the_old_one(tmp_path: Path) -> None:
    # Staging ids start again at 1 in a new database: its rows are new, not "spooled".
    trace = str(tmp_path / "trace.duckdb")
    with TraceStore(trace, TABLES) as store:
        for attempt in range(2):
            db = tmp_path / f"app-{attempt}.db"
            make_staging(db)
            ids = stage(db, [(f"w{attempt}", "u", unit_payload(f"w{attempt}", 1, attempt))])
            assert ids == [1]
            assert Spooler(SqliteEngine(db), store).spool_all() == 1
        assert [f["function"] for f in store.workflow_timeline("w1")] == ["pay", "audit"]
        assert count(store, "spooled") == 2


def test_a_background_spooler_holds_the_store_until_another_store_asks(tmp_path: Path) -> None:
    # Opening the DuckDB file and closing it (a checkpoint) cost as much as storing a
    # second's traces, so a release-mode spooler keeps it open across rounds; a store
    # of this process that waits for the file gets it at once, not after HOLD seconds.
    staging = tmp_path / "staging.db"
    trace = str(tmp_path / "trace.duckdb")
    make_staging(staging)
    spooler = Spooler(SqliteEngine(staging), TraceStore(trace, TABLES))
    assert spooler.start(interval=0.02, release=True)
    try:
        for round_number in range(3):
            stage(staging, [(f"w{round_number}", "u", unit_payload(f"w{round_number}", 1, 1))])
            wait_until_spooled(staging)
            time.sleep(0.1)  # a few rounds with nothing to do
            assert spooler.store.is_open  # held, as no one asked
            started = time.monotonic()
            with TraceStore(trace, TABLES, read_only=True) as reader:
                assert time.monotonic() - started < HOLD / 2
                assert count(reader, "spooled") == round_number + 1
    finally:
        spooler.stop()
    assert not spooler.store.is_open  # a stopped spooler lets the file go


@pytest.mark.slow
def test_a_store_of_another_process_asks_the_holding_spooler_for_the_file(
    tmp_path: Path,
) -> None:
    # The spooler process of a runtime holds the file across rounds; a query from this
    # process leaves a mark beside the file, and the holder lets the file go at once.
    staging = tmp_path / "staging.db"
    trace = str(tmp_path / "trace.duckdb")
    app = apiary.App("held")
    for ddl in SCHEMA:
        app.schema(ddl)
    with apiary.Runtime(app, f"sqlite:///{staging}", trace_store=None) as runtime:
        runtime.install()  # the spooler process opens the database as a runtime does
    process = SpoolerProcess(f"sqlite:///{staging}", trace, SCHEMA, interval=0.05)
    process.start()
    try:
        for number in range(3):
            stage(staging, [(f"p{number}", "u", unit_payload(f"p{number}", 1, 1))])
            wait_until_spooled(staging, 30)
            started = time.monotonic()
            with TraceStore(trace, TABLES, read_only=True) as reader:
                assert time.monotonic() - started < HOLD / 2
                assert count(reader, "spooled") == number + 1
            assert not os.path.exists(trace + WANTED_SUFFIX)  # the holder took the mark away
        # `apiary trace` tries for LOCK_WAIT (2 s), with opens that do not wait: the first
        # failed try leaves the mark all the same, so it gets the file in time.
        stage(staging, [("p3", "u", unit_payload("p3", 1, 1))])
        wait_until_spooled(staging, 30)
        time.sleep(0.2)  # the holder between rounds, with the file open
        cli = subprocess.run(
            [sys.executable, "-c", "import sys; from apiary._cli import main; sys.exit(main())",
             "trace", "sql", "SELECT count(*) AS n FROM spooled",
             "--db", f"sqlite:///{staging}", "--store", trace, "--json"],
            check=False, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert cli.returncode == 0, cli.stderr
        assert '"n": 4' in cli.stdout
    finally:
        process.stop()
    assert not process.running
