"""Tracing end to end, on every engine: what a workload did, against what the store holds.

A mixed workload of ``tests/apps/traced.py`` (point and range reads, a join, an aggregate,
inserts, ``INSERT ... SELECT``, updates, deletes, an upsert, a two-function transaction,
functions that raise, replays of finished workflow IDs) runs while a Python model of the
tables (:class:`Model`) writes down every access it must leave in the trace: the op, the
function, the workflow and invocation IDs, the statement and the row (the key for a read,
the row after an insert or update, before a delete). After spooling, the DuckDB file is
read with DuckDB directly and must hold exactly those accesses, each once.

The spooler's crash test kills a real child process (SIGKILL) between the DuckDB commit
of a batch and the deletion of that batch from staging, then spools again. The CLI tests
run ``apiary trace`` as subprocesses.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import duckdb
import pytest

import apiary
from apiary._tracing.store import TraceStore
from apiary._tracing.tables import tables_of
from tests.apps import ROOT, traced

MakeRuntime = Callable[..., apiary.Runtime]
TABLES = tables_of(traced.app.schemas)
APIARY = str(Path(sys.executable).with_name("apiary"))
APP = "tests/apps/traced.py:app"
# A direct call's invocation ID: the runtime's client ID, a counter, the function.
CALL_ID = re.compile(r"^\d+-\d+/(\w+)$")

# -- the model --------------------------------------------------------------------------

Row = tuple[tuple[str, Any], ...]  # a row as sorted (column, value) pairs


def _row(**values: Any) -> Row:
    return tuple(sorted(values.items()))


class Model:
    """The app's tables in Python, and every access the workload must leave in the trace.

    Row events are ``(table, function, workflow_id, invocation_id, op, statement, row)``;
    statement events ``(function, workflow_id, invocation_id, op, statement, tables)``;
    functions ``(function, workflow_id, invocation_id, unit_invocation_id, read_only)``.
    A direct call (no workflow) has its invocation ID written as ``call/<function>``.
    """

    def __init__(self) -> None:
        self.customers: dict[int, dict[str, Any]] = {}
        self.orders: dict[tuple[int, int], dict[str, Any]] = {}
        self.archive: dict[tuple[int, int], dict[str, Any]] = {}
        self.tags: dict[str, int] = {}
        self.rows: Counter[tuple[Any, ...]] = Counter()
        self.statements: Counter[tuple[Any, ...]] = Counter()
        self.functions: Counter[tuple[Any, ...]] = Counter()
        self._current: tuple[str, str | None, str] = ("", None, "")

    def function(
        self, name: str, workflow_id: str | None, unit: str | None = None, read_only: bool = False
    ) -> Model:
        """The accesses noted next are ``name``'s, in ``workflow_id`` (None: a direct call)."""
        invocation = f"{workflow_id}/{name}" if workflow_id else f"call/{name}"
        unit_id = f"{workflow_id}/{unit}" if workflow_id and unit else invocation
        self._current = (name, workflow_id, invocation)
        self.functions[(name, workflow_id, invocation, unit_id, read_only)] += 1
        return self

    def row(self, table: str, op: str, statement: apiary.Statement, row: Row) -> None:
        name, workflow_id, invocation = self._current
        self.rows[(table, name, workflow_id, invocation, op, statement.text, row)] += 1

    def statement(self, op: str, statement: apiary.Statement, *tables: str) -> None:
        name, workflow_id, invocation = self._current
        key = (name, workflow_id, invocation, op, statement.text, tuple(sorted(tables)))
        self.statements[key] += 1

    # What each function of the app touches, given the tables' state.

    def customer_image(self, id: int) -> Row:
        return _row(id=id, **self.customers[id])

    def order_image(self, key: tuple[int, int]) -> Row:
        return _row(customer_id=key[0], order_no=key[1], **self.orders[key])

    def add_customer(self, id: int, name: str, city: str, balance: int) -> None:
        self.customers[id] = {"name": name, "city": city, "balance": balance}
        self.row("customers", "insert", traced.ADD_CUSTOMER, self.customer_image(id))

    def place_order(self, customer_id: int, order_no: int, amount: int) -> None:
        key = (customer_id, order_no)
        self.orders[key] = {"amount": amount, "status": "new"}
        self.row("orders", "insert", traced.PLACE_ORDER, self.order_image(key))

    def order_total(self, customer_id: int) -> None:
        self.statement("read", traced.ORDER_TOTAL, "orders")  # an aggregate: no rows

    def get_customer(self, id: int) -> None:
        if id in self.customers:
            self.row("customers", "read", traced.GET_CUSTOMER, _row(id=id))
        else:  # a lookup that found nothing still happened
            self.statement("read", traced.GET_CUSTOMER, "customers")

    def richest(self, min_balance: int, limit: int) -> None:
        found = sorted(
            (c for c, v in self.customers.items() if v["balance"] >= min_balance),
            key=lambda c: (-self.customers[c]["balance"], c),
        )[:limit]
        for id in found:
            self.row("customers", "read", traced.RICHEST, _row(id=id))

    def customer_orders(self, customer_id: int) -> None:
        keys = [k for k in self.orders if k[0] == customer_id and customer_id in self.customers]
        for key in keys:  # one event per table per joined row
            self.row("customers", "read", traced.CUSTOMER_ORDERS, _row(id=customer_id))
            self.row(
                "orders", "read", traced.CUSTOMER_ORDERS, _row(customer_id=key[0], order_no=key[1])
            )
        if not keys:
            self.statement("read", traced.CUSTOMER_ORDERS, "customers", "orders")

    def adjust(self, id: int, amount: int) -> None:
        self.customers[id]["balance"] += amount
        self.row("customers", "update", traced.ADJUST, self.customer_image(id))

    def debit(self, src: int, amount: int) -> None:
        self.row("customers", "read", traced.BALANCE, _row(id=src))
        self.adjust(src, -amount)

    def ship(self, customer_id: int, order_no: int) -> None:
        key = (customer_id, order_no)
        if key in self.orders and self.orders[key]["status"] == "new":
            self.orders[key]["status"] = "shipped"
            self.row("orders", "update", traced.SHIP, self.order_image(key))
        else:  # an update that matched nothing
            self.statement("update", traced.SHIP, "orders")

    def archive_and_purge(self, status: str) -> None:
        keys = [k for k, v in self.orders.items() if v["status"] == status]
        for key in keys:
            self.archive[key] = {"amount": self.orders[key]["amount"]}
            image = _row(customer_id=key[0], order_no=key[1], **self.archive[key])
            self.row("archive", "insert", traced.ARCHIVE, image)
        if not keys:
            self.statement("insert", traced.ARCHIVE, "archive", "orders")
        for key in keys:  # deleted: the row as it was
            self.row("orders", "delete", traced.PURGE, self.order_image(key))
            del self.orders[key]
        if not keys:
            self.statement("delete", traced.PURGE, "orders")

    def raise_city(self, city: str, amount: int) -> None:
        for id, customer in self.customers.items():
            if customer["city"] == city:
                customer["balance"] += amount
                self.row("customers", "update", traced.RAISE_CITY, self.customer_image(id))

    def tag(self, name: str) -> None:
        self.tags[name] = self.tags.get(name, 0) + 1
        # An upsert is recorded as an insert of the row as written.
        self.row("tags", "insert", traced.TAG, _row(tag=name, uses=self.tags[name]))


def run_workload(rt: apiary.Runtime) -> Model:
    """Run the mixed workload on ``rt``; return the model of what it must have traced."""
    m = Model()
    for wid, (id, name, city, balance, amount) in {
        "on-1": (1, "ann", "oslo", 100, 30),
        "on-2": (2, "bob", "oslo", 50, 20),
        "on-3": (3, "cy", "rome", 500, 40),
    }.items():
        out = rt.run(
            "onboard",
            workflow_id=wid,
            id=id,
            name=name,
            city=city,
            balance=balance,
            order_no=1,
            amount=amount,
        )
        assert out == [1, amount]
        m.function("add_customer", wid).add_customer(id, name, city, balance)
        m.function("place_order", wid).place_order(id, 1, amount)
        m.function("order_total", wid, read_only=True).order_total(id)

    rt.call("place_order", customer_id=1, order_no=2, amount=15)
    m.function("place_order", None).place_order(1, 2, 15)

    # A read-only workflow records nothing: its replay runs the reads again, and they are
    # traced again (they happened).
    for _ in range(2):
        out = rt.run("review", workflow_id="rv-1", customer_id=1, min_balance=60, limit=2)
        assert out == [["ann", 100], [3, 1], [1, 2], [2, 45]]
        m.function("get_customer", "rv-1", read_only=True).get_customer(1)
        m.function("richest", "rv-1", read_only=True).richest(60, 2)
        m.function("customer_orders", "rv-1", read_only=True).customer_orders(1)
        m.function("order_total", "rv-1", read_only=True).order_total(1)

    assert rt.call("get_customer", id=99) is None
    m.function("get_customer", None, read_only=True).get_customer(99)
    assert rt.call("customer_orders", customer_id=99) == []
    m.function("customer_orders", None, read_only=True).customer_orders(99)

    # A two-function transaction: both members name the group's unit.
    assert rt.run("transfer", workflow_id="tr-1", src=3, dst=2, amount=100) == 400
    m.function("debit", "tr-1", unit="debit+credit").debit(3, 100)
    m.function("credit", "tr-1", unit="debit+credit").adjust(2, 100)

    # Functions that raise roll back: nothing of theirs may be traced.
    with pytest.raises(apiary.FunctionError, match="NotEnoughError"):
        rt.run("transfer", workflow_id="tr-2", src=2, dst=1, amount=1000)
    with pytest.raises(apiary.FunctionError, match="refusing to credit"):
        rt.run("transfer_then_fail", workflow_id="tf-1", src=3, dst=1, amount=10)
    with pytest.raises(apiary.FunctionError, match="changed my mind"):
        rt.run("tag_twice_then_fail", workflow_id="tg-1", name="vip", id=1)
    m.function("tag", "tg-1").tag("vip")  # committed before the failing unit

    rt.call("tag", name="vip")  # the upsert's update path
    m.function("tag", None).tag("vip")
    for customer_id, order_no in [(1, 1), (2, 1), (1, 1)]:  # the last matches nothing
        rt.call("ship", customer_id=customer_id, order_no=order_no)
        m.function("ship", None).ship(customer_id, order_no)
    for status in ["shipped", "lost"]:
        rt.call("archive_and_purge", status=status)
        m.function("archive_and_purge", None).archive_and_purge(status)
    rt.call("raise_city", city="oslo", amount=5)
    m.function("raise_city", None).raise_city("oslo", 5)
    return m


def replay_finished(rt: apiary.Runtime) -> None:
    """Run finished workflow IDs again: each answers from its status row, runs nothing."""
    assert rt.run(
        "onboard",
        workflow_id="on-1",
        id=1,
        name="ann",
        city="oslo",
        balance=100,
        order_no=1,
        amount=30,
    ) == [1, 30]
    assert rt.run("transfer", workflow_id="tr-1", src=3, dst=2, amount=100) == 400
    with pytest.raises(apiary.FunctionError, match="changed my mind"):
        rt.run("tag_twice_then_fail", workflow_id="tg-1", name="vip", id=1)
    with pytest.raises(apiary.FunctionError, match="NotEnoughError"):
        rt.run("transfer", workflow_id="tr-2", src=2, dst=1, amount=1000)


# -- reading the store with DuckDB directly -------------------------------------------


def _invocation(workflow_id: str | None, invocation_id: str) -> str:
    if workflow_id is not None:
        return invocation_id
    match = CALL_ID.match(invocation_id)
    assert match is not None, f"a direct call's invocation ID: {invocation_id!r}"
    return f"call/{match.group(1)}"


class Stored:
    """What the trace store at ``path`` holds, in the model's shapes."""

    def __init__(self, path: str | Path) -> None:
        con = duckdb.connect(str(path), read_only=True)
        try:
            self.rows: Counter[tuple[Any, ...]] = Counter()
            for table, info in TABLES.items():
                columns = ", ".join(f'"{c}"' for c in info.columns)
                found = con.execute(
                    "SELECT function, workflow_id, invocation_id, op, statement, unconverted, "
                    f"{columns} FROM {table}_events"
                ).fetchall()
                for function, wid, invocation, op, statement, unconverted, *values in found:
                    assert unconverted is None, "every value fits its column"
                    row = dict(zip(info.columns, values, strict=True))
                    if op == "read":  # a read records the key, nothing else
                        assert all(
                            row[c] is None for c in info.columns if c not in info.primary_key
                        )
                        row = {c: row[c] for c in info.primary_key}
                    key = (table, function, wid, _invocation(wid, invocation), op, statement)
                    self.rows[(*key, _row(**row))] += 1
            self.statements: Counter[tuple[Any, ...]] = Counter(
                (function, wid, _invocation(wid, invocation), op, statement, tuple(sorted(tables)))
                for function, wid, invocation, op, statement, tables in con.execute(
                    "SELECT function, workflow_id, invocation_id, op, statement, tables "
                    "FROM statement_events"
                ).fetchall()
            )
            self.functions: Counter[tuple[Any, ...]] = Counter()
            for function, wid, invocation, unit, read_only, started, ended in con.execute(
                "SELECT function, workflow_id, invocation_id, unit_invocation_id, read_only, "
                "started, ended FROM function_invocations"
            ).fetchall():
                assert started <= ended
                unit_id = unit if wid is not None else _invocation(wid, unit)
                key = (function, wid, _invocation(wid, invocation), unit_id, read_only)
                self.functions[key] += 1
            (self.units,) = con.execute(
                "SELECT count(DISTINCT staging_id) FROM function_invocations"
            ).fetchone() or (0,)
            (self.rejected,) = con.execute("SELECT count(*) FROM rejected_payloads").fetchone() or (
                0,
            )
        finally:
            con.close()


def assert_traced(path: str | Path, model: Model) -> Stored:
    """The store holds exactly the model's accesses and functions, each once."""
    stored = Stored(path)
    assert stored.rejected == 0
    _assert_same_counts(stored.rows, model.rows, "row events")
    _assert_same_counts(stored.statements, model.statements, "statement events")
    _assert_same_counts(stored.functions, model.functions, "function invocations")
    return stored


def _assert_same_counts(found: Counter[Any], expected: Counter[Any], what: str) -> None:
    missing, extra = expected - found, found - expected
    assert not missing, f"{what}: missing {dict(missing)}"
    assert not extra, f"{what}: unexpected {dict(extra)}"


# -- ground truth on every engine -----------------------------------------------------


@pytest.fixture
def store_path(tmp_path: Path) -> Path:
    return tmp_path / "trace.duckdb"


def test_every_committed_access_is_traced_exactly_once(
    make_runtime: MakeRuntime, store_path: Path
) -> None:
    rt = make_runtime(traced.app, trace_store=None)
    model = run_workload(rt)
    assert rt.spool(str(store_path)) > 0
    assert rt.spool(str(store_path)) == 0  # staging is empty
    stored = assert_traced(store_path, model)
    assert stored.units > 0

    # Replaying finished workflows runs nothing, so stages nothing.
    replay_finished(rt)
    assert rt.spool(str(store_path)) == 0
    assert_traced(store_path, model)


def test_nothing_of_a_rolled_back_function(make_runtime: MakeRuntime, store_path: Path) -> None:
    rt = make_runtime(traced.app, trace_store=None)
    run_workload(rt)
    rt.spool(str(store_path))
    with duckdb.connect(str(store_path), read_only=True) as con:
        functions = {
            f for (f,) in con.execute("SELECT function FROM function_invocations").fetchall()
        }
        assert not functions & {"tag_then_fail", "credit_then_fail"}
        failed = ["tr-2", "tf-1"]  # their only units rolled back
        for table in [*(f"{t}_events" for t in TABLES), "statement_events", "function_invocations"]:
            found = con.execute(
                f"SELECT count(*) FROM {table} WHERE workflow_id IN (SELECT UNNEST($1))", [failed]
            ).fetchone()
            assert found == (0,), table
        # tg-1: the committed upsert only, not the rolled-back one and its update.
        tagged = con.execute(
            "SELECT op, tag, uses FROM tags_events WHERE workflow_id = 'tg-1'"
        ).fetchall()
        assert tagged == [("insert", "vip", 1)]
        assert con.execute(
            "SELECT count(*) FROM customers_events WHERE workflow_id = 'tg-1'"
        ).fetchone() == (0,)


def test_queries_of_the_store(make_runtime: MakeRuntime, store_path: Path) -> None:
    rt = make_runtime(traced.app, trace_store=None)
    model = run_workload(rt)
    rt.spool(str(store_path))
    with TraceStore(str(store_path), TABLES, read_only=True) as store:
        # Who touched customer 1: its insert, reads by key, the raise; oldest first.
        history = store.row_history("customers", id=1)
        expected = sum(
            n for r, n in model.rows.items() if r[0] == "customers" and ("id", 1) in r[6]
        )
        assert len(history) == expected
        writes = [
            (a["op"], a["function"], a["row"]["balance"]) for a in history if a["op"] != "read"
        ]
        assert writes == [("insert", "add_customer", 100), ("update", "raise_city", 105)]
        assert [a["ts"] for a in history] == sorted(a["ts"] for a in history)
        reads = Counter((a["function"], a["workflow_id"]) for a in history if a["op"] == "read")
        assert reads == {
            ("get_customer", "rv-1"): 2,
            ("richest", "rv-1"): 2,
            ("customer_orders", "rv-1"): 4,  # two joined orders, two runs
        }
        assert all(a["row"] == {"id": 1} for a in history if a["op"] == "read")

        # A deleted order: inserted, read by the join, shipped, deleted (before image).
        order = store.row_history("orders", customer_id="1", order_no="1")
        ops = [(a["op"], a["row"].get("status")) for a in order if a["op"] != "read"]
        assert ops == [("insert", "new"), ("update", "shipped"), ("delete", "shipped")]

        # A workflow's timeline: a two-function transaction, in order.
        timeline = store.workflow_timeline("tr-1")
        assert [f["function"] for f in timeline] == ["debit", "credit"]
        assert {f["unit_invocation_id"] for f in timeline} == {"tr-1/debit+credit"}
        assert [(a["op"], a["row"]) for a in timeline[0]["accesses"]] == [
            ("read", {"id": 3}),
            ("update", {"id": 3, "name": "cy", "city": "rome", "balance": 400}),
        ]
        assert [(a["op"], a["row"]["balance"]) for a in timeline[1]["accesses"]] == [
            ("update", 150)
        ]
        # An aggregate is a statement-level access in the timeline.
        onboard = store.workflow_timeline("on-1")
        total = onboard[-1]["accesses"]
        assert [(a["op"], a["tables"], a["row"]) for a in total] == [("read", ["orders"], None)]
        assert store.workflow_timeline("tr-2") == []
        with pytest.raises(ValueError, match="no table 'nope'"):
            store.row_history("nope", id=1)
        with pytest.raises(ValueError, match="no column 'nope'"):
            store.row_history("customers", nope=1)


def test_execute_counts_rows_traced(make_runtime: MakeRuntime) -> None:
    # Traced, a write runs as its RETURNING variant; execute() still counts rows written.
    rt = make_runtime(traced.app, trace_store=None)
    rt.call("add_customer", id=1, name="ann", city="oslo", balance=1)
    rt.call("place_order", customer_id=1, order_no=1, amount=5)
    assert rt.call("ship", customer_id=1, order_no=1) == 1
    assert rt.call("ship", customer_id=1, order_no=9) == 0
    assert rt.call("raise_city", city="oslo", amount=1) == 1


def test_execute_counts_rows_untraced(make_runtime: MakeRuntime) -> None:
    rt = make_runtime(traced.app, trace=False, trace_store=None)
    rt.call("add_customer", id=1, name="ann", city="oslo", balance=1)
    rt.call("place_order", customer_id=1, order_no=1, amount=5)
    assert rt.call("ship", customer_id=1, order_no=1) == 1
    assert rt.call("raise_city", city="oslo", amount=1) == 1


def test_trace_off_records_nothing(make_runtime: MakeRuntime, store_path: Path) -> None:
    rt = make_runtime(traced.app, trace=False, trace_store=None)
    run_workload(rt)
    assert rt.spool(str(store_path)) == 0
    # A tracing runtime on the same database finds nothing staged either.
    tracing = make_runtime(traced.app, install=False, trace_store=None)
    assert tracing.spool(str(store_path)) == 0
    if store_path.exists():
        assert Stored(store_path).functions == Counter()


def test_default_store(engine_url: str, tmp_path: Path) -> None:
    """Beside a SQLite file, spooled in the background and at close; none for PostgreSQL."""
    rt = apiary.Runtime(traced.app, engine_url)
    try:
        if not engine_url.startswith("sqlite"):
            assert rt.trace_store is None
            return
        assert rt.trace_store == str(tmp_path / "apiary-trace.duckdb")
        rt.install()
        model = run_workload(rt)
    finally:
        rt.close()  # spools what the background thread has not yet
    assert_traced(tmp_path / "apiary-trace.duckdb", model)


def test_a_read_only_unit_stays_read_only_when_traced(tmp_path: Path) -> None:
    # Its trace is staged later, in a transaction of its own: on SQLite the read runs on
    # a snapshot while another connection holds the write lock.
    import sqlite3

    path = tmp_path / "app.db"
    store = tmp_path / "trace.duckdb"
    rt = apiary.Runtime(traced.app, f"sqlite:///{path}", trace_store=None)
    try:
        rt.install()
        rt.call("add_customer", id=1, name="ann", city="oslo", balance=5)
        writer = sqlite3.connect(path, isolation_level=None)
        writer.execute("BEGIN IMMEDIATE")  # holds the write lock
        try:
            started = time.monotonic()
            assert rt.call("get_customer", id=1) == ["ann", 5]
            assert time.monotonic() - started < 2  # did not wait for the lock
        finally:
            writer.execute("ROLLBACK")
            writer.close()
        assert rt.spool(str(store)) == 2  # the read's trace was staged, then spooled
    finally:
        rt.close()
    with TraceStore(str(store), tables_of(traced.app.schemas), read_only=True) as found:
        history = found.row_history("customers", id=1)
    assert [(a["op"], a["function"]) for a in history] == [
        ("insert", "add_customer"),
        ("read", "get_customer"),
    ]


# -- the spooler's crash safety --------------------------------------------------------

# The child spools in batches of BATCH; after its second batch is committed in DuckDB,
# and before that batch is deleted from staging, it says so and waits to be killed.
CRASH_CHILD = """
import sys, time
import apiary
from apiary._tracing.spool import Spooler
from apiary._tracing.store import TraceStore
from apiary._tracing.tables import tables_of
from tests.apps.traced import app

url, path, batch = sys.argv[1], sys.argv[2], int(sys.argv[3])
rt = apiary.Runtime(app, url, trace_store=None)
store = TraceStore(path, tables_of(app.schemas))
spooler = Spooler(rt._engine, store, batch=batch)
ingest, rounds = store.ingest, []

def ingest_then_hang(rows):
    stored = ingest(rows)  # committed in DuckDB
    rounds.append(len(stored))
    if len(rounds) == 2:
        print("committed", flush=True)
        time.sleep(600)  # killed here, before the spooler deletes the batch from staging
    return stored

store.ingest = ingest_then_hang
spooler.spool_all()
print("finished without being killed", flush=True)
"""
BATCH = 4


def test_spooler_killed_between_duckdb_commit_and_staging_delete(
    make_runtime: MakeRuntime, engine_url: str, store_path: Path, tmp_path: Path
) -> None:
    rt = make_runtime(traced.app, trace_store=None)
    model = run_workload(rt)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    stderr = (tmp_path / "child.err").open("wb")
    child = subprocess.Popen(
        [sys.executable, "-c", CRASH_CHILD, engine_url, str(store_path), str(BATCH)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=stderr,
    )
    try:
        assert child.stdout is not None
        line = child.stdout.readline()
        assert line == b"committed\n", (line, (tmp_path / "child.err").read_text())
        child.send_signal(signal.SIGKILL)
        assert child.wait(timeout=30) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        if child.stdout is not None:
            child.stdout.close()
        stderr.close()

    # Two batches reached DuckDB; only the first left staging.
    assert Stored(store_path).units == 2 * BATCH
    rt.spool(str(store_path))  # the second batch is found staged again, and skipped
    assert_traced(store_path, model)  # nothing lost, nothing twice
    with duckdb.connect(str(store_path), read_only=True) as con:
        twice = con.execute(
            "SELECT count(*) FROM (SELECT staging_id FROM function_invocations "
            "GROUP BY staging_id, invocation_id, started HAVING count(*) > 1)"
        ).fetchone()
        assert twice == (0,)
    assert rt.spool(str(store_path)) == 0


# -- the apiary trace command ----------------------------------------------------------


def trace(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    """Run ``apiary trace ARGS`` in a subprocess."""
    return subprocess.run(
        [APIARY, "trace", *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )


@pytest.fixture
def spooled_by_cli(
    make_runtime: MakeRuntime, engine_url: str, store_path: Path
) -> tuple[Model, list[str]]:
    """The workload run on the engine, spooled by ``apiary trace spool``; the store's args."""
    rt = make_runtime(traced.app, trace_store=None)
    model = run_workload(rt)
    rt.flush_traces()  # read-only units' traces, else staged within 0.25 s
    done = trace("spool", APP, "--db", engine_url, "--store", str(store_path))
    assert done.returncode == 0, done.stderr
    units = sum(model.functions.values()) - 1  # tr-1: two functions, one unit
    assert done.stdout == f"spooled {units} staged unit traces into {store_path}\n"
    assert_traced(store_path, model)
    return model, ["--store", str(store_path)]


def test_cli_workflow(spooled_by_cli: tuple[Model, list[str]]) -> None:
    _, store = spooled_by_cli
    done = trace("workflow", "tr-1", *store)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "workflow tr-1: 2 function executions, 3 accesses"
    assert re.match(
        r"1\. debit  tr-1/debit  writes  started \S+ \S+ UTC  [\d.]+ ms  "
        r"in transaction tr-1/debit\+credit$",
        lines[1],
    )
    assert lines[2].split() == ["op", "table", "row"]
    assert lines[3].split() == ["read", "customers", "id=3"]
    assert lines[4].split() == [
        "update",
        "customers",
        "id=3,",
        "name=cy,",
        "city=rome,",
        "balance=400",
    ]
    assert lines[5].startswith("2. credit  tr-1/credit  writes")

    done = trace("workflow", "on-1", *store, "--json")
    assert done.returncode == 0, done.stderr
    functions = json.loads(done.stdout)
    assert [f["function"] for f in functions] == ["add_customer", "place_order", "order_total"]
    assert functions[1]["accesses"][0]["row"] == {
        "customer_id": 1,
        "order_no": 1,
        "amount": 30,
        "status": "new",
    }
    assert functions[2]["accesses"][0]["statement"] == traced.ORDER_TOTAL.text

    done = trace("workflow", "tr-2", *store)  # rolled back: no trace
    assert done.returncode == 1
    assert "no trace of workflow 'tr-2'" in done.stderr


def test_cli_row_and_sql(spooled_by_cli: tuple[Model, list[str]]) -> None:
    model, store = spooled_by_cli
    done = trace("row", "orders", "customer_id=2", "order_no=1", *store)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "orders customer_id=2 order_no=1: 3 accesses, oldest first"
    assert lines[1].split() == [
        "ts",
        "(UTC)",
        "op",
        "function",
        "workflow_id",
        "invocation_id",
        "row",
    ]
    assert [line.split()[2:4] for line in lines[2:]] == [
        ["insert", "place_order"],
        ["update", "ship"],
        ["delete", "archive_and_purge"],
    ]
    assert lines[-1].endswith("customer_id=2, order_no=1, amount=20, status=shipped")

    done = trace("row", "customers", "id=1", *store, "--json")
    history = json.loads(done.stdout)
    assert len(history) == sum(
        n for r, n in model.rows.items() if r[0] == "customers" and ("id", 1) in r[6]
    )
    assert history[0]["op"] == "insert"
    assert history[0]["row"] == {"id": 1, "name": "ann", "city": "oslo", "balance": 100}

    done = trace("row", "customers", "id=42", *store)
    assert (done.returncode, done.stdout) == (1, "customers id=42: no accesses\n")

    query = "SELECT op, count(*) AS n FROM orders_events GROUP BY op ORDER BY op"
    done = trace("sql", query, *store)
    assert done.returncode == 0, done.stderr
    expected = Counter(r[4] for r in model.rows.elements() if r[0] == "orders")
    assert done.stdout.splitlines() == [
        "op      n",
        *(f"{op:<6}  {expected[op]}" for op in sorted(expected)),
        f"({len(expected)} rows)",
    ]
    done = trace("sql", query, *store, "--json")
    assert json.loads(done.stdout) == [{"op": op, "n": expected[op]} for op in sorted(expected)]


def test_cli_export_parquet(spooled_by_cli: tuple[Model, list[str]], tmp_path: Path) -> None:
    model, store = spooled_by_cli
    out = tmp_path / "parquet"
    done = trace("export", "--parquet", str(out), *store)
    assert done.returncode == 0, done.stderr
    files = sorted(Path(p).name for p in done.stdout.split())
    assert files == sorted(
        [f"{t}_events.parquet" for t in TABLES]
        + [
            f"{t}.parquet"
            for t in ("function_invocations", "statement_events", "spooled", "rejected_payloads")
        ]
    )
    with duckdb.connect() as con:
        for table in TABLES:
            (count,) = con.execute(
                f"SELECT count(*) FROM read_parquet('{out / table}_events.parquet')"
            ).fetchone() or (0,)
            assert count == sum(n for r, n in model.rows.items() if r[0] == table)
        deleted = con.execute(
            "SELECT customer_id, order_no, amount, status "
            f"FROM read_parquet('{out}/orders_events.parquet') "
            "WHERE op = 'delete' ORDER BY customer_id"
        ).fetchall()
        assert deleted == [(1, 1, 30, "shipped"), (2, 1, 20, "shipped")]
        (functions,) = con.execute(
            f"SELECT count(*) FROM read_parquet('{out}/function_invocations.parquet')"
        ).fetchone() or (0,)
        assert functions == sum(model.functions.values())


def test_cli_default_store_and_errors(tmp_path: Path) -> None:
    """SQLite: the store beside the database; and what each mistake is told."""
    db = f"sqlite:///{tmp_path / 'shop.db'}"
    done = trace("row", "customers", "id=1", "--db", db)
    assert done.returncode == 2
    assert f"no trace store at {tmp_path / 'shop-trace.duckdb'}" in done.stderr

    with apiary.Runtime(traced.app, db, trace_store=None) as rt:
        rt.install()
        model = run_workload(rt)
    done = trace("spool", APP, "--db", db)
    assert done.returncode == 0, done.stderr
    assert done.stdout.endswith(f"into {tmp_path / 'shop-trace.duckdb'}\n")
    assert_traced(tmp_path / "shop-trace.duckdb", model)
    done = trace("row", "tags", "tag=vip", "--db", db)
    assert done.returncode == 0, done.stderr
    assert [line.split()[2] for line in done.stdout.splitlines()[2:]] == ["insert", "insert"]

    for args, message in [
        (["row", "nope", "id=1"], "no table 'nope' (known: archive, customers, orders, tags)"),
        (["row", "customers", "nope=1"], "table 'customers' has no column 'nope'"),
        (["row", "customers", "id"], "expected COLUMN=VALUE, got 'id'"),
        (["sql", "SELECT * FROM nope"], "the query failed: Catalog Error"),
    ]:
        done = trace(*args, "--db", db)
        assert done.returncode == 2, (args, done.stdout)
        assert message in done.stderr, (args, done.stderr)
        assert "Traceback" not in done.stderr
        assert done.stderr.startswith("apiary trace: ")

    done = trace("sql", "SELECT 1", "--db", "postgresql://u:secret@db.example/x")
    assert done.returncode == 2
    assert "give the trace store with --store PATH" in done.stderr
    assert "secret" not in done.stderr
    done = trace("spool", "tests/apps/nope.py:app", "--db", db)
    assert done.returncode == 2
    assert "NotFoundError" in done.stderr


def test_cli_waits_for_a_writer_then_says_who(tmp_path: Path) -> None:
    path = tmp_path / "held.duckdb"
    with TraceStore(str(path), TABLES) as held:
        held.open()  # this process has the file for writing
        started = time.monotonic()
        done = trace("sql", "SELECT 1", "--store", str(path))
        waited = time.monotonic() - started
    assert done.returncode == 2
    assert "open for writing" in done.stderr
    assert waited >= 2  # LOCK_WAIT
    done = trace("sql", "SELECT count(*) AS n FROM spooled", "--store", str(path), "--json")
    assert json.loads(done.stdout) == [{"n": 0}]
