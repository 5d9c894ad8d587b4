"""Capture plans (tracing): which statements are traced per row, and variants that run.

Each ``rows`` plan's variant is executed next to its original on real databases with the
same data: SQLite in memory, and PostgreSQL (prepared with ``$n`` placeholders, in a
scratch schema inside a transaction that is rolled back) when the PostgreSQL engines are
under test. The application's part of each row must equal what the original returns,
and the extra columns must name the rows read, or hold the rows written.
"""

from __future__ import annotations

import sqlite3
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from apiary._capture import ROWS, STATEMENT, CapturePlan
from apiary._sql import placeholder_forms
from apiary._tracing.rewrite import plan_capture
from apiary._tracing.tables import tables_of
from tests.conftest import ENGINES

# Composite key (rooms), text key and a keyword-named column (customers), no key (notes).
SCHEMA = [
    "CREATE TABLE rooms (hotel_id INTEGER, day TEXT, available INTEGER, "
    "PRIMARY KEY (hotel_id, day))",
    'CREATE TABLE customers (email TEXT PRIMARY KEY, name TEXT, "order" INTEGER)',
    "CREATE TABLE notes (hotel_id INTEGER, note TEXT)",
    "CREATE TABLE bookings (id INTEGER PRIMARY KEY, hotel_id INTEGER, day TEXT, email TEXT)",
]
SEED = [
    "INSERT INTO rooms VALUES (1, 'mon', 3), (1, 'tue', 0), (2, 'mon', 5), (3, 'wed', NULL)",
    "INSERT INTO customers VALUES ('ann@x', 'Ann', 1), ('bob@x', 'Bob', NULL), ('cy@x', NULL, 3)",
    "INSERT INTO notes VALUES (1, 'quiet'), (1, 'quiet'), (2, NULL), (NULL, 'lost')",
    "INSERT INTO bookings VALUES (10, 1, 'mon', 'ann@x'), (11, 1, 'tue', 'bob@x'), "
    "(12, 2, 'mon', 'ann@x'), (13, 9, 'fri', NULL)",
]
TABLES = tables_of(SCHEMA)
ENGINE_NAMES = ["sqlite"] + (["postgres"] if any(e.startswith("postgres") for e in ENGINES) else [])

Row = tuple[Any, ...]


# -- the engines -----------------------------------------------------------------------------


class Runner:
    """Runs statements with ``?`` placeholders on one engine's database."""

    def __init__(self, run: Callable[[str, Sequence[Any]], list[Row]]) -> None:
        self.run = run

    def table(self, name: str) -> list[Row]:
        """All rows of a table, in a stable order."""
        return sorted(self.run(f"SELECT * FROM {name}", ()), key=repr)


@contextmanager
def sqlite_db() -> Iterator[Runner]:
    conn = sqlite3.connect(":memory:")
    try:
        for ddl in SCHEMA + SEED:
            conn.execute(ddl)
        yield Runner(lambda text, params: conn.execute(text, tuple(params)).fetchall())
    finally:
        conn.close()


@contextmanager
def postgres_db(conn: Any) -> Iterator[Runner]:
    """A scratch schema with the data, in a transaction rolled back at the end."""
    import psycopg

    schema = f"apiary_rewrite_{uuid.uuid4().hex[:8]}"
    with conn.transaction(force_rollback=True):
        conn.execute(f"CREATE SCHEMA {schema}")
        conn.execute(f"SET LOCAL search_path TO {schema}")
        for ddl in SCHEMA + SEED:
            conn.execute(ddl)
        cursor = psycopg.ClientCursor(conn)

        def run(text: str, params: Sequence[Any]) -> list[Row]:
            # Prepared with $n placeholders, as the engines prepare statements; EXECUTE
            # takes the parameters as literals (ClientCursor), coerced to the inferred types.
            dollar, _, count = placeholder_forms(text)
            assert count == len(params)
            cursor.execute(f"PREPARE apiary_rewrite AS {dollar}")
            try:
                args = f"({', '.join(['%s'] * count)})" if count else ""
                cursor.execute(f"EXECUTE apiary_rewrite{args}", tuple(params))
                return [tuple(r) for r in cursor.fetchall()] if cursor.description else []
            finally:
                cursor.execute("DEALLOCATE apiary_rewrite")

        yield Runner(run)


@pytest.fixture(scope="module")
def postgres_conn(request: pytest.FixtureRequest) -> Iterator[Any]:
    import psycopg

    url = request.getfixturevalue("postgres_admin")
    with psycopg.connect(url, autocommit=True) as conn:
        yield conn


@pytest.fixture(params=ENGINE_NAMES)
def fresh(request: pytest.FixtureRequest) -> Callable[[], Any]:
    """Makes a new database with the schema and the data (a context manager)."""
    if request.param == "sqlite":
        return sqlite_db
    conn = request.getfixturevalue("postgres_conn")
    return lambda: postgres_db(conn)


# -- helpers ---------------------------------------------------------------------------------


def split(plan: CapturePlan, rows: list[Row]) -> tuple[list[Row], list[Row]]:
    """The application's part and the captured part of each row."""
    cut = len(rows[0]) - plan.extra if rows else 0
    return [r[:cut] for r in rows], [r[cut:] for r in rows]


def assert_only_inserted(original: str, variant: str) -> None:
    """``variant`` is ``original`` with one run of text inserted, holding no placeholder.

    So every ``?`` of the original keeps its place and its order: parameters bind by
    position.
    """
    added = len(variant) - len(original)
    assert added > 0
    for i in range(len(original) + 1):
        if variant[:i] == original[:i] and variant[i + added :] == original[i:]:
            inserted = variant[i : i + added]
            assert placeholder_forms(inserted)[2] == 0, inserted
            assert "?" not in inserted
            break
    else:
        pytest.fail(f"{variant!r} is not {original!r} with text inserted")
    assert placeholder_forms(variant)[2] == placeholder_forms(original)[2]


def by_repr(rows: Sequence[Row]) -> list[Row]:
    return sorted(rows, key=repr)


# -- the plans -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    text: str
    mode: str
    op: str
    tables: list[str]
    groups: list[tuple[str, list[str]]] = field(default_factory=list)
    params: tuple[Any, ...] = ()
    #: The captured columns expected (reads: the keys, in row order if the query orders).
    captured: list[Row] | None = None
    #: Engines that run the statement at all (FOR UPDATE, OFFSET before LIMIT, ...).
    engines: tuple[str, ...] = ("sqlite", "postgres")

    def __str__(self) -> str:
        return self.text


ROOMS = ("rooms", ["hotel_id", "day"])
CUSTOMERS = ("customers", ["email"])
NOTES = ("notes", ["hotel_id", "note"])
BOOKINGS = ("bookings", ["id"])
ALL_ROOMS = ("rooms", ["hotel_id", "day", "available"])
ALL_CUSTOMERS = ("customers", ["email", "name", "order"])
ALL_NOTES = ("notes", ["hotel_id", "note"])
ALL_BOOKINGS = ("bookings", ["id", "hotel_id", "day", "email"])

# The case tables are laid out one case per entry, not one argument per line.
# fmt: off
READS = [
    Case(
        "SELECT available FROM rooms WHERE hotel_id = ? AND day = ?",
        ROWS, "read", ["rooms"], [ROOMS], (1, "mon"), [(1, "mon")],
    ),
    Case(
        "SELECT * FROM customers WHERE email = ?",
        ROWS, "read", ["customers"], [CUSTOMERS], ("bob@x",), [("bob@x",)],
    ),
    Case(
        "SELECT note FROM notes WHERE hotel_id = ?",
        ROWS, "read", ["notes"], [NOTES], (1,), [(1, "quiet"), (1, "quiet")],
    ),
    Case(
        "SELECT r.day, b.email FROM rooms r JOIN bookings b "
        "ON b.hotel_id = r.hotel_id AND b.day = r.day WHERE r.hotel_id = ? ORDER BY b.id",
        ROWS, "read", ["bookings", "rooms"], [ROOMS, BOOKINGS], (1,),
        [(1, "mon", 10), (1, "tue", 11)],
    ),
    Case(  # the outer join's missing side: NULL keys
        "SELECT c.name, b.id FROM customers AS c LEFT JOIN bookings AS b ON b.email = c.email "
        "ORDER BY c.email, b.id",
        ROWS, "read", ["bookings", "customers"], [CUSTOMERS, BOOKINGS], (),
        [("ann@x", 10), ("ann@x", 12), ("bob@x", 11), ("cy@x", None)],
    ),
    Case(  # a self-join: two groups for one table
        "SELECT a.day, b.day FROM rooms a JOIN rooms b "
        "ON a.hotel_id = b.hotel_id AND a.day < b.day",
        ROWS, "read", ["rooms"], [ROOMS, ROOMS], (), [(1, "mon", 1, "tue")],
    ),
    Case(  # quoted alias and a keyword-named column
        'SELECT "C"."order" FROM customers AS "C" WHERE "C".email = ?',
        ROWS, "read", ["customers"], [CUSTOMERS], ("ann@x",), [("ann@x",)],
    ),
    Case(  # subqueries: their tables are listed, not captured per row
        "SELECT name, (SELECT COUNT(*) FROM bookings b WHERE b.email = c.email) FROM customers c "
        "WHERE c.email IN (SELECT email FROM bookings WHERE hotel_id = ?) "
        "ORDER BY c.email LIMIT ? OFFSET ?",
        ROWS, "read", ["bookings", "customers"], [CUSTOMERS], (1, 1, 1), [("bob@x",)],
    ),
    Case(  # SELECT * stays valid; comma join
        "SELECT * FROM rooms, notes WHERE rooms.hotel_id = notes.hotel_id AND rooms.day = ?",
        ROWS, "read", ["notes", "rooms"], [ROOMS, NOTES], ("tue",),
        [(1, "tue", 1, "quiet"), (1, "tue", 1, "quiet")],
    ),
    Case(  # IS DISTINCT FROM: a FROM keyword inside the select list
        "SELECT a.available IS DISTINCT FROM ?, a.day FROM rooms a WHERE a.hotel_id = ?",
        ROWS, "read", ["rooms"], [ROOMS], (3, 1), [(1, "mon"), (1, "tue")],
    ),
    Case(  # a comment right after the select list, lower case, a trailing semicolon
        "select Name -- who\nfrom Customers where EMAIL = ?;",
        ROWS, "read", ["customers"], [CUSTOMERS], ("cy@x",), [("cy@x",)],
    ),
    Case(
        "SELECT r.*, b.id FROM rooms r NATURAL JOIN bookings b ORDER BY b.id",
        ROWS, "read", ["bookings", "rooms"], [ROOMS, BOOKINGS], (),
        [(1, "mon", 10), (1, "tue", 11), (2, "mon", 12)],
    ),
    Case(
        "SELECT available FROM rooms WHERE hotel_id = ? ORDER BY day FOR UPDATE",
        ROWS, "read", ["rooms"], [ROOMS], (1,), [(1, "mon"), (1, "tue")],
        engines=("postgres",),
    ),
    Case(  # PostgreSQL takes OFFSET before LIMIT; both parameters stay in place
        "SELECT hotel_id, day FROM rooms ORDER BY hotel_id, day OFFSET ? LIMIT ?",
        ROWS, "read", ["rooms"], [ROOMS], (1, 2), [(1, "tue"), (2, "mon")],
        engines=("postgres",),
    ),
    Case(
        "SELECT email FROM customers WHERE name ILIKE ? FOR SHARE",
        ROWS, "read", ["customers"], [CUSTOMERS], ("a%",), [("ann@x",)],
        engines=("postgres",),
    ),
    # Statement level.
    Case("SELECT COUNT(*) FROM rooms WHERE hotel_id = ?", STATEMENT, "read", ["rooms"]),
    Case("SELECT DISTINCT hotel_id FROM rooms", STATEMENT, "read", ["rooms"]),
    Case(
        "SELECT hotel_id, SUM(available) FROM rooms GROUP BY hotel_id HAVING SUM(available) > ?",
        STATEMENT, "read", ["rooms"],
    ),
    Case("SELECT hotel_id FROM rooms GROUP BY hotel_id", STATEMENT, "read", ["rooms"]),
    Case(
        "SELECT day FROM rooms UNION SELECT day FROM bookings",
        STATEMENT, "read", ["bookings", "rooms"],
    ),
    Case(
        "SELECT email FROM customers EXCEPT SELECT email FROM bookings",
        STATEMENT, "read", ["bookings", "customers"],
    ),
    Case(
        "WITH busy AS (SELECT hotel_id FROM bookings) SELECT hotel_id FROM busy",
        STATEMENT, "read", ["bookings"],
    ),
    Case(
        "WITH busy AS (SELECT hotel_id FROM bookings) "
        "SELECT r.day FROM rooms r JOIN busy ON busy.hotel_id = r.hotel_id",
        STATEMENT, "read", ["bookings", "rooms"],
    ),
    Case("SELECT s.n FROM (SELECT hotel_id AS n FROM rooms) AS s", STATEMENT, "read", ["rooms"]),
    Case(
        "SELECT id, ROW_NUMBER() OVER (ORDER BY id) FROM bookings", STATEMENT, "read", ["bookings"]
    ),
    Case("SELECT total(available) FROM rooms", STATEMENT, "read", ["rooms"]),
    Case("SELECT hotel_id, json_agg(day) FROM rooms", STATEMENT, "read", ["rooms"]),
    Case("SELECT COUNT(*) FILTER (WHERE available > 0) FROM rooms", STATEMENT, "read", ["rooms"]),
    Case("SELECT name FROM legacy WHERE id = ?", STATEMENT, "read", ["legacy"]),
    Case(
        "SELECT c.name FROM customers c JOIN legacy l ON l.email = c.email",
        STATEMENT, "read", ["customers", "legacy"],
    ),
    Case("SELECT CAST(? AS INTEGER) + 1", STATEMENT, "read", []),
    Case("SELECT x.a FROM rooms AS x(a, b, c)", STATEMENT, "read", ["rooms"]),
    Case("SELECT value FROM json_each(?)", STATEMENT, "read", []),
    Case("SELECT main.rooms.day FROM main.rooms", STATEMENT, "read", ["main.rooms"]),
    Case(  # the generic dialect reads a table named "only": no agreement, no rows
        "SELECT email FROM ONLY customers WHERE name = ?", STATEMENT, "read", ["only"],
    ),
    Case(
        "WITH gone AS (DELETE FROM bookings WHERE email = ? RETURNING id) SELECT id FROM gone",
        STATEMENT, "delete", ["bookings"],
    ),
]

WRITES = [
    Case(
        "INSERT INTO bookings (id, hotel_id, day, email) VALUES (?, ?, ?, ?)",
        ROWS, "insert", ["bookings"], [ALL_BOOKINGS], (20, 2, "tue", "cy@x"),
        [(20, 2, "tue", "cy@x")],
    ),
    Case(  # an upsert is an insert, captured as written
        "INSERT INTO rooms (hotel_id, day, available) VALUES (?, ?, ?) "
        "ON CONFLICT (hotel_id, day) "
        "DO UPDATE SET available = rooms.available + excluded.available",
        ROWS, "insert", ["rooms"], [ALL_ROOMS], (1, "mon", 2), [(1, "mon", 5)],
    ),
    Case(
        "INSERT INTO rooms (hotel_id, day) VALUES (?, ?) ON CONFLICT DO NOTHING",
        ROWS, "insert", ["rooms"], [ALL_ROOMS], (1, "mon"), [],
    ),
    Case(  # INSERT ... SELECT, with the statement's own RETURNING first
        "INSERT INTO notes (hotel_id, note) SELECT hotel_id, email FROM bookings "
        "WHERE email = ? RETURNING note",
        ROWS, "insert", ["bookings", "notes"], [ALL_NOTES], ("ann@x",),
        [(1, "ann@x"), (2, "ann@x")],
    ),
    Case(
        'INSERT INTO customers (email, name, "order") VALUES (?, ?, ?)',
        ROWS, "insert", ["customers"], [ALL_CUSTOMERS], ("dee@x", "Dee", 4),
        [("dee@x", "Dee", 4)],
    ),
    Case(
        "WITH src AS (SELECT CAST(? AS INTEGER) AS id) "
        "INSERT INTO bookings (id, hotel_id, day, email) SELECT id, 3, 'wed', NULL FROM src",
        ROWS, "insert", ["bookings"], [ALL_BOOKINGS], (30,), [(30, 3, "wed", None)],
    ),
    Case(
        "INSERT OR REPLACE INTO customers (email, name) VALUES (?, ?)",
        ROWS, "insert", ["customers"], [ALL_CUSTOMERS], ("bob@x", "Robert"),
        [("bob@x", "Robert", None)], engines=("sqlite",),
    ),
    Case(
        "UPDATE rooms SET available = available - 1 WHERE hotel_id = ? AND available > ?",
        ROWS, "update", ["rooms"], [ALL_ROOMS], (1, 0), [(1, "mon", 2)],
    ),
    Case(  # other tables in scope: RETURNING qualified by the table's name
        "UPDATE rooms SET available = b.id FROM bookings b "
        "WHERE b.hotel_id = rooms.hotel_id AND b.day = rooms.day AND b.email = ?",
        ROWS, "update", ["bookings", "rooms"], [ALL_ROOMS], ("ann@x",),
        [(1, "mon", 10), (2, "mon", 12)],
    ),
    Case(
        'UPDATE customers AS c SET "order" = ? WHERE c.email = ? RETURNING name',
        ROWS, "update", ["customers"], [ALL_CUSTOMERS], (7, "cy@x"), [("cy@x", None, 7)],
    ),
    Case(
        "update Rooms set available = 0 where hotel_id = ?",
        ROWS, "update", ["rooms"], [ALL_ROOMS], (2,), [(2, "mon", 0)],
    ),
    Case(
        "WITH c AS (SELECT CAST(? AS TEXT) AS v) "
        "UPDATE customers SET name = (SELECT v FROM c) WHERE email = ?",
        ROWS, "update", ["customers"], [ALL_CUSTOMERS], ("Cy", "cy@x"), [("cy@x", "Cy", 3)],
    ),
    Case(  # the rows before deletion
        "DELETE FROM bookings WHERE email = ? RETURNING id",
        ROWS, "delete", ["bookings"], [ALL_BOOKINGS], ("ann@x",),
        [(10, 1, "mon", "ann@x"), (12, 2, "mon", "ann@x")],
    ),
    Case(
        "DELETE FROM notes WHERE note IS NULL OR note = ?",
        ROWS, "delete", ["notes"], [ALL_NOTES], ("quiet",),
        [(1, "quiet"), (1, "quiet"), (2, None)],
    ),
    Case(
        "WITH gone AS (SELECT id FROM bookings WHERE hotel_id = ?) "
        "DELETE FROM bookings WHERE id IN (SELECT id FROM gone)",
        ROWS, "delete", ["bookings"], [ALL_BOOKINGS], (1,),
        [(10, 1, "mon", "ann@x"), (11, 1, "tue", "bob@x")],
    ),
    Case(
        "DELETE FROM bookings USING customers "
        "WHERE bookings.email = customers.email AND customers.name = ?",
        ROWS, "delete", ["bookings", "customers"], [ALL_BOOKINGS], ("Bob",),
        [(11, 1, "tue", "bob@x")], engines=("postgres",),
    ),
    # Statement level.
    Case(
        "UPDATE rooms AS r SET available = b.id FROM bookings AS b WHERE b.hotel_id = r.hotel_id",
        STATEMENT, "update", ["bookings", "rooms"],
    ),
    Case(
        "DELETE FROM bookings AS b USING customers AS c WHERE b.email = c.email AND c.name = ?",
        STATEMENT, "delete", ["bookings", "customers"],
    ),
    Case("INSERT INTO legacy (a) VALUES (?)", STATEMENT, "insert", ["legacy"]),
    Case("UPDATE legacy SET a = ?", STATEMENT, "update", ["legacy"]),
    Case(
        "WITH gone AS (DELETE FROM bookings RETURNING *) "
        "INSERT INTO notes (hotel_id, note) SELECT hotel_id, email FROM gone",
        STATEMENT, "insert", ["bookings", "notes"],
    ),
    Case(
        "MERGE INTO rooms USING notes ON rooms.hotel_id = notes.hotel_id "
        "WHEN MATCHED THEN DELETE",
        STATEMENT, "insert", ["notes", "rooms"],
    ),
]

# fmt: on

CASES = READS + WRITES
ROW_CASES = [c for c in CASES if c.mode == ROWS]


@pytest.mark.parametrize("case", CASES, ids=str)
def test_plan(case: Case) -> None:
    plan = plan_capture(case.text, TABLES)
    assert (plan.mode, plan.op, plan.tables) == (case.mode, case.op, case.tables)
    assert plan.groups == case.groups
    assert plan.extra == sum(len(columns) for _, columns in case.groups)
    if case.mode == STATEMENT:
        assert plan.variant is None
        return
    assert plan.variant is not None
    assert plan.variant.info is not None  # analysed like any declared statement
    assert_only_inserted(case.text, plan.variant.text)
    # Every added column is named apart: PL/Python returns rows as dicts by column name.
    for n in range(plan.extra):
        assert plan.variant.text.count(f" AS __apiary_{n}") == 1


def test_plans_survive_json() -> None:
    for case in CASES:
        plan = plan_capture(case.text, TABLES)
        again = CapturePlan.from_json(plan.to_json())
        assert again.to_json() == plan.to_json()


def test_the_added_columns_are_named_apart() -> None:
    text = "SELECT hotel_id, day FROM rooms r JOIN bookings b USING (hotel_id)"
    plan = plan_capture(text, TABLES)
    assert plan.variant is not None
    assert plan.variant.text == (
        'SELECT hotel_id, day, r."hotel_id" AS __apiary_0, r."day" AS __apiary_1, '
        'b."id" AS __apiary_2 FROM rooms r JOIN bookings b USING (hotel_id)'
    )


def test_a_write_appends_returning_at_the_end() -> None:
    plan = plan_capture("DELETE FROM customers WHERE email = ? RETURNING name -- gone\n", TABLES)
    assert plan.variant is not None
    assert plan.variant.text == (
        'DELETE FROM customers WHERE email = ? RETURNING name, "email" AS __apiary_0, '
        '"name" AS __apiary_1, "order" AS __apiary_2 -- gone\n'
    )


def test_a_schema_without_the_table_gives_statement_plans() -> None:
    for case in ROW_CASES:
        plan = plan_capture(case.text, {})
        assert (plan.mode, plan.op, plan.tables, plan.variant) == (
            STATEMENT,
            case.op,
            case.tables,
            None,
        )


# -- the variants, run -----------------------------------------------------------------------


def run_case(fresh: Callable[[], Any], case: Case) -> None:
    plan = plan_capture(case.text, TABLES)
    assert plan.variant is not None
    with fresh() as db:
        expected = db.run(case.text, case.params)
        expected_tables = {name: db.table(name) for name in TABLES}
    with fresh() as db:
        before = {name: db.table(name) for name in TABLES}
        rows = db.run(plan.variant.text, case.params)
        after = {name: db.table(name) for name in TABLES}
    seen, captured = split(plan, rows)
    assert all(len(r) == plan.extra for r in captured)
    assert after == expected_tables  # the variant did what the original does

    if plan.op == "read":
        ordered = "ORDER BY" in case.text.upper()
        assert seen == expected if ordered else by_repr(seen) == by_repr(expected)
        assert (captured if ordered else by_repr(captured)) == case.captured
        # Each captured key names a row of its table (or is NULL: an outer join's miss).
        offset = 0
        for table, columns in plan.groups:
            info = TABLES[table]
            keys = {tuple(r[info.columns.index(c)] for c in columns) for r in before[table]}
            for row in captured:
                key = row[offset : offset + len(columns)]
                assert key in keys or all(v is None for v in key)
            offset += len(columns)
        return

    ((table, _),) = plan.groups
    if "RETURNING" in case.text.upper():
        assert by_repr(seen) == by_repr(expected)
    else:
        # Without RETURNING of its own the application sees empty rows, one per row written
        # (the core returns their count from execute()).
        assert expected == []
        assert all(r == () for r in seen)
    assert by_repr(captured) == by_repr(case.captured or [])
    new, old, got = Counter(after[table]), Counter(before[table]), Counter(captured)
    if plan.op == "delete":
        assert got == old - new  # the rows as they were before deletion
    else:
        assert not new - old - got  # every row written is captured ...
        assert not got - new  # ... as it is now


@pytest.mark.parametrize(
    ("fresh", "case"),
    # Each case on the engines whose dialect has its statement (not every one has both).
    [(engine, case) for case in ROW_CASES for engine in ENGINE_NAMES if engine in case.engines],
    ids=str,
    indirect=["fresh"],
)
def test_variant_runs_like_the_original(fresh: Callable[[], Any], case: Case) -> None:
    run_case(fresh, case)


# -- random reads ----------------------------------------------------------------------------

VALUES: dict[str, list[Any]] = {
    "hotel_id": [1, 2, 3, 9],
    "day": ["mon", "tue", "wed", "fri"],
    "available": [0, 3, 5],
    "email": ["ann@x", "bob@x", "cy@x"],
    "name": ["Ann", "Bob"],
    "order": [1, 3],
    "note": ["quiet", "lost"],
    "id": [10, 11, 12, 13],
}

# (tables with aliases, join condition) pairs a random read may use.
SHAPES: list[tuple[list[tuple[str, str]], str | None]] = [
    ([("rooms", "r")], None),
    ([("customers", "c")], None),
    ([("notes", "n")], None),
    ([("bookings", "b")], None),
    ([("rooms", "r"), ("bookings", "b")], "JOIN bookings b ON b.hotel_id = r.hotel_id"),
    ([("customers", "c"), ("bookings", "b")], "LEFT JOIN bookings b ON b.email = c.email"),
    ([("notes", "n"), ("rooms", "r")], "JOIN rooms r ON r.hotel_id = n.hotel_id"),
    ([("rooms", "a"), ("rooms", "z")], "JOIN rooms z ON z.hotel_id = a.hotel_id"),
]


def quoted(column: str) -> str:
    return f'"{column}"' if column == "order" else column


@st.composite
def random_reads(draw: st.DrawFn) -> tuple[str, list[Any], bool]:
    """A plain SELECT with placeholders, its parameters, and whether it is ordered."""
    sources, join = draw(st.sampled_from(SHAPES))
    columns = [
        f"{alias}.{quoted(column)}" for table, alias in sources for column in TABLES[table].columns
    ]
    if draw(st.booleans()):
        projection = draw(st.lists(st.sampled_from(columns), min_size=1, max_size=4))
    else:
        projection = ["*"]
    params: list[Any] = []
    conditions = []
    for column in draw(st.lists(st.sampled_from(columns), max_size=3)):
        values = VALUES[column.split(".")[1].strip('"')]
        shape = draw(st.sampled_from(["=", ">", "<>", "in", "not null"]))
        if shape == "in":
            conditions.append(f"{column} IN (?, ?)")
            params += [draw(st.sampled_from(values)), draw(st.sampled_from(values))]
        elif shape == "not null":
            conditions.append(f"{column} IS NOT NULL")
        else:
            conditions.append(f"{column} {shape} ?")
            params.append(draw(st.sampled_from(values)))
    (first, alias), *_ = sources
    text = f"SELECT {', '.join(projection)} FROM {first} {alias}"
    if join:
        text += f" {join}"
    if conditions:
        text += " WHERE " + draw(st.sampled_from([" AND ", " OR "])).join(conditions)
    ordered = draw(st.booleans())
    if ordered:
        # Every row's order is fixed (all key columns), so LIMIT picks the same rows.
        keys = [f"{a}.{quoted(c)}" for t, a in sources for c in TABLES[t].primary_key]
        text += f" ORDER BY {', '.join(keys)} LIMIT ? OFFSET ?"
        params += [draw(st.integers(0, 5)), draw(st.integers(0, 3))]
    return text, params, ordered


@pytest.fixture(scope="module", params=ENGINE_NAMES)
def reader(request: pytest.FixtureRequest) -> Iterator[Runner]:
    """One database per engine for the read-only random tests."""
    if request.param == "sqlite":
        with sqlite_db() as db:
            yield db
    else:
        with postgres_db(request.getfixturevalue("postgres_conn")) as db:
            yield db


@settings(deadline=None, max_examples=150)  # shared CI machines: no per-example time limit
@given(read=random_reads())
def test_random_reads_keep_their_parameters_and_rows(
    reader: Runner, read: tuple[str, list[Any], bool]
) -> None:
    text, params, ordered = read
    plan = plan_capture(text, TABLES)
    assert plan.mode == ROWS
    assert plan.variant is not None
    assert_only_inserted(text, plan.variant.text)
    assert plan.variant.info.param_count == len(params)
    expected = reader.run(text, params)
    seen, captured = split(plan, reader.run(plan.variant.text, params))
    assert seen == expected if ordered else by_repr(seen) == by_repr(expected)
    assert len(captured) == len(expected)
