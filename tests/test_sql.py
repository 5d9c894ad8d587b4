"""Statement analysis: what ``apiary.sql`` learns from a statement's text, and what it refuses."""

from __future__ import annotations

import pytest

import apiary
from apiary._sql import StatementInfo, analyze

# -- read or write ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "SELECT available FROM rooms WHERE hotel_id = ? AND day = ?",
        "select available from rooms",
        "WITH free AS (SELECT hotel_id FROM rooms WHERE available > 0) SELECT hotel_id FROM free",
        "SELECT hotel_id FROM rooms UNION SELECT hotel_id FROM bookings",
        "SELECT hotel_id FROM rooms EXCEPT SELECT hotel_id FROM bookings",
        "SELECT day FROM rooms WHERE hotel_id IN (SELECT hotel_id FROM bookings WHERE day = ?)",
        "SELECT r.day FROM rooms r JOIN bookings b ON r.hotel_id = b.hotel_id WHERE b.day = ?",
        "SELECT CAST(? AS INTEGER) + ?",
    ],
)
def test_queries_read(text: str) -> None:
    info = analyze(text)
    assert info.writes is False
    assert info.kind == "read"
    assert info.tables_written == ()
    assert info.returns_rows is True


@pytest.mark.parametrize(
    ("text", "returns_rows"),
    [
        ("INSERT INTO bookings (hotel_id, day, customer) VALUES (?, ?, ?)", False),
        (
            "INSERT INTO rooms (hotel_id, day, available) VALUES (?, ?, ?) "
            "ON CONFLICT (hotel_id, day) DO UPDATE SET available = excluded.available",
            False,
        ),
        ("INSERT INTO rooms (hotel_id, day) VALUES (?, ?) ON CONFLICT DO NOTHING", False),
        ("INSERT INTO bookings (hotel_id, day, customer) VALUES (?, ?, ?) RETURNING day", True),
        ("UPDATE rooms SET available = available - 1 WHERE hotel_id = ? AND day = ?", False),
        ("UPDATE rooms SET available = available - 1 RETURNING available", True),
        ("DELETE FROM bookings WHERE customer = ?", False),
        ("DELETE FROM bookings WHERE customer = ? RETURNING day", True),
    ],
)
def test_data_changes_write(text: str, returns_rows: bool) -> None:
    info = analyze(text)
    assert info.writes is True
    assert info.kind == "write"
    assert info.returns_rows is returns_rows


def test_a_write_inside_with_makes_the_statement_a_write() -> None:
    info = analyze(
        "WITH gone AS (DELETE FROM bookings WHERE customer = ? RETURNING day) SELECT day FROM gone"
    )
    assert info.writes is True
    assert info.tables == ("bookings",)
    assert info.tables_written == ("bookings",)
    assert info.returns_rows is True


def test_with_then_delete_returning() -> None:
    info = analyze(
        "WITH old AS (SELECT customer FROM bookings WHERE day < ?) "
        "DELETE FROM bookings WHERE customer IN (SELECT customer FROM old) RETURNING day"
    )
    assert info.writes is True
    assert info.tables == ("bookings",)
    assert info.tables_written == ("bookings",)
    assert info.param_count == 1
    assert info.returns_rows is True


# -- tables ----------------------------------------------------------------------------


def test_tables_exclude_cte_names() -> None:
    info = analyze(
        "WITH free AS (SELECT hotel_id, day FROM rooms WHERE available > 0), "
        "busy AS (SELECT hotel_id, day FROM bookings) "
        "SELECT f.day FROM free f JOIN busy b ON f.day = b.day"
    )
    assert info.tables == ("bookings", "rooms")


def test_a_cte_named_like_a_table_hides_nothing_it_reads() -> None:
    info = analyze("WITH rooms AS (SELECT hotel_id FROM hotels) SELECT hotel_id FROM rooms")
    assert info.tables == ("hotels",)


def test_tables_of_union_and_subqueries_are_all_listed_sorted() -> None:
    assert analyze("SELECT a FROM zeta UNION SELECT a FROM alpha").tables == ("alpha", "zeta")
    assert analyze("SELECT a FROM t WHERE a IN (SELECT a FROM s WHERE b = ?)").tables == (
        "s",
        "t",
    )


def test_tables_written_are_only_the_targets() -> None:
    info = analyze("INSERT INTO archive (a) SELECT a FROM live WHERE b = ?")
    assert info.tables == ("archive", "live")
    assert info.tables_written == ("archive",)

    info = analyze("UPDATE rooms SET available = 0 WHERE hotel_id IN (SELECT hotel_id FROM closed)")
    assert info.tables == ("closed", "rooms")
    assert info.tables_written == ("rooms",)

    info = analyze("DELETE FROM bookings WHERE hotel_id IN (SELECT hotel_id FROM closed)")
    assert info.tables_written == ("bookings",)


def test_table_names_are_lowercased_and_keep_their_schema() -> None:
    assert analyze("SELECT * FROM Rooms").tables == ("rooms",)
    assert analyze("SELECT a FROM main.t").tables == ("main.t",)


def test_a_query_without_tables() -> None:
    info = analyze("SELECT 1")
    assert info.tables == ()
    assert info.writes is False


# -- parameters and the PostgreSQL text --------------------------------------------------


@pytest.mark.parametrize(
    ("text", "count"),
    [
        ("SELECT 1", 0),
        ("SELECT a FROM t WHERE b = ?", 1),
        ("INSERT INTO t (a, b, c) VALUES (?, ?, ?)", 3),
        ("SELECT a FROM t WHERE a IN (SELECT a FROM s WHERE b = ?) AND c = ?", 2),
    ],
)
def test_param_count(text: str, count: int) -> None:
    assert analyze(text).param_count == count


def test_postgres_text_numbers_placeholders_in_order() -> None:
    info = analyze("INSERT INTO t (a, b, c) VALUES (?, ?, ?)")
    assert info.postgres_text == "INSERT INTO t (a, b, c) VALUES ($1, $2, $3)"


def test_postgres_text_leaves_question_marks_in_string_literals() -> None:
    info = analyze("SELECT '?' FROM t WHERE a = ? AND b = 'why?' AND c = 'it''s ?' AND d = ?")
    assert info.postgres_text == (
        "SELECT '?' FROM t WHERE a = $1 AND b = 'why?' AND c = 'it''s ?' AND d = $2"
    )
    assert info.param_count == 2


def test_postgres_text_leaves_question_marks_in_comments_and_identifiers() -> None:
    info = analyze('SELECT "?" FROM t /* is it ? */ WHERE a = ? -- really?\nAND b = ?')
    assert (
        info.postgres_text == 'SELECT "?" FROM t /* is it ? */ WHERE a = $1 -- really?\nAND b = $2'
    )
    assert info.param_count == 2


def test_postgres_text_keeps_the_rest_of_the_text_verbatim() -> None:
    text = "SELECT   a,b\n  FROM t\tWHERE x = ?  ORDER BY a"
    assert analyze(text).postgres_text == "SELECT   a,b\n  FROM t\tWHERE x = $1  ORDER BY a"


# -- the Statement object --------------------------------------------------------------


def test_sql_attaches_the_analysis() -> None:
    stmt = apiary.sql("UPDATE rooms SET available = ? WHERE hotel_id = ?")
    assert isinstance(stmt, apiary.Statement)
    assert stmt.text == "UPDATE rooms SET available = ? WHERE hotel_id = ?"
    assert isinstance(stmt.info, StatementInfo)
    assert stmt.info == analyze(stmt.text)
    assert stmt.info.writes is True
    assert stmt.info.param_count == 2
    assert stmt.info.tables_written == ("rooms",)


@pytest.mark.parametrize("text", [b"SELECT 1", 42, None, ["SELECT 1"]])
def test_sql_takes_only_str(text: object) -> None:
    with pytest.raises(TypeError, match="str"):
        apiary.sql(text)  # type: ignore[arg-type]


# -- refusals --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "SELECT 1; SELECT 2",
        "UPDATE t SET a = 1; DELETE FROM t",
        "SELECT a FROM t; DROP TABLE t",
    ],
)
def test_several_statements_are_refused(text: str) -> None:
    with pytest.raises(apiary.RegistrationError, match="one statement"):
        apiary.sql(text)


@pytest.mark.parametrize("text", ["", "   ", "-- nothing here"])
def test_no_statement_is_refused(text: str) -> None:
    with pytest.raises(apiary.RegistrationError):
        apiary.sql(text)


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ("CREATE TABLE x (a INTEGER)", "CREATE"),
        ("CREATE INDEX i ON t (a)", "CREATE"),
        ("DROP TABLE t", "DROP"),
        ("ALTER TABLE t ADD COLUMN b INTEGER", "ALTER"),
        ("PRAGMA journal_mode = WAL", "PRAGMA"),
    ],
)
def test_schema_changes_and_pragmas_are_refused(text: str, kind: str) -> None:
    with pytest.raises(apiary.RegistrationError) as info:
        apiary.sql(text)
    message = str(info.value)
    assert text in message
    assert kind in message
    assert "app.schema()" in message


@pytest.mark.parametrize("text", ["SELECT a FROM t WHERE", "SELECT (", "INSERT INTO t VALUES ("])
def test_unparsable_text_is_refused(text: str) -> None:
    with pytest.raises(apiary.RegistrationError, match="cannot parse"):
        apiary.sql(text)


def test_gibberish_is_refused() -> None:
    with pytest.raises(apiary.RegistrationError):
        apiary.sql("SELEKT * FORM t")


@pytest.mark.parametrize(
    "text",
    [
        "SELECT a FROM t WHERE a = $1",
        "SELECT a FROM t WHERE a = :name",
        "SELECT a FROM t WHERE a = %s",
        "SELECT a FROM t WHERE a = @name",
        "SELECT a FROM t WHERE a = ? AND b = $2",
        "UPDATE t SET a = :a WHERE b = ?",
    ],
)
def test_placeholders_other_than_question_mark_are_refused(text: str) -> None:
    with pytest.raises(apiary.RegistrationError, match=r"'\?' placeholders"):
        apiary.sql(text)
