"""Declaring statements: ``apiary.sql(text)`` and its analysis with sqlglot.

Each statement is parsed once, when it is declared. The analysis says whether it reads or
writes, which tables it reads and writes, how many ``?`` parameters it takes, and gives the
PostgreSQL form of its text (``$1``, ``$2``, ...). A statement that cannot be parsed, holds
several statements, or changes the schema is refused with a :class:`RegistrationError`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import sqlglot
from sqlglot import TokenType, exp
from sqlglot.errors import ParseError, TokenError

from apiary._database import Statement
from apiary._errors import RegistrationError

_WRITES = (exp.Insert, exp.Update, exp.Delete, exp.Merge)


@dataclass(frozen=True)
class StatementInfo:
    """What the registrar knows about a statement.

    Attributes:
        writes: the statement changes data (INSERT, UPDATE, DELETE, MERGE, also inside WITH).
        tables: every table it names (CTE names excluded), sorted.
        tables_written: the tables it writes, sorted.
        param_count: number of ``?`` placeholders.
        returns_rows: it yields rows (a query, or a write with RETURNING).
        postgres_text: the text with ``$n`` placeholders, for PostgreSQL.
        psycopg_text: the text with ``%s`` placeholders (and ``%`` doubled), for psycopg.
    """

    writes: bool
    tables: tuple[str, ...]
    tables_written: tuple[str, ...]
    param_count: int
    returns_rows: bool
    postgres_text: str
    psycopg_text: str

    @property
    def kind(self) -> str:
        """``"write"`` or ``"read"``."""
        return "write" if self.writes else "read"


def _parse(text: str) -> Any:
    errors: list[str] = []
    # Portable SQL: the generic dialect first, then the two engines' own.
    for dialect in (None, "sqlite", "postgres"):
        try:
            parsed = [e for e in sqlglot.parse(text, read=dialect) if e is not None]
        except (ParseError, TokenError) as exc:
            errors.append(str(exc).splitlines()[0])
            continue
        if len(parsed) != 1:
            raise RegistrationError(
                f"apiary.sql() takes exactly one statement, got {len(parsed)}: {text!r}"
            )
        return parsed[0]
    raise RegistrationError(f"cannot parse statement {text!r}: {errors[0]}")


def _table_name(table: exp.Table) -> str:
    parts = [table.catalog, table.db, table.name]
    return ".".join(p for p in parts if p).lower()


def placeholder_forms(text: str) -> tuple[str, str, int]:
    """The text for PostgreSQL (``$n``) and for psycopg (``%s``, with ``%`` doubled).

    Only ``?`` tokens are replaced (found by sqlglot's tokenizer, so a ``?`` inside a
    string literal or comment stays); the rest of the text is kept as written.
    Returns ``(postgres_text, psycopg_text, placeholder_count)``.
    """
    tokens = sqlglot.Tokenizer().tokenize(text)
    dollar: list[str] = []
    percent: list[str] = []
    position = 0
    count = 0
    for token in tokens:
        if token.token_type == TokenType.PLACEHOLDER and token.text == "?":
            count += 1
            between = text[position : token.start]
            dollar += [between, f"${count}"]
            percent += [between.replace("%", "%%"), "%s"]
            position = token.end + 1
    dollar.append(text[position:])
    percent.append(text[position:].replace("%", "%%"))
    return "".join(dollar), "".join(percent), count


def analyze(text: str) -> StatementInfo:
    """Parse and classify one statement; raise :class:`RegistrationError` if it is refused."""
    tree = _parse(text)
    if not isinstance(tree, (exp.Query, *_WRITES)):
        raise RegistrationError(
            f"statement {text!r} is not a SELECT, INSERT, UPDATE, DELETE or MERGE (it parses "
            f"as {type(tree).__name__.upper()}); schema changes belong in app.schema()"
        )
    cte_names = {cte.alias_or_name.lower() for cte in tree.find_all(exp.CTE)}
    written: set[str] = set()
    for node in tree.find_all(*_WRITES):
        target = node.this
        if isinstance(target, exp.Schema):  # INSERT INTO t (a, b)
            target = target.this
        if isinstance(target, exp.Table):
            written.add(_table_name(target))
    tables = {_table_name(t) for t in tree.find_all(exp.Table)} - cte_names
    postgres_text, psycopg_text, count = placeholder_forms(text)
    placeholders = len(list(tree.find_all(exp.Placeholder, exp.Parameter)))
    # The generic dialect reads PostgreSQL's $1 as a column name.
    placeholders += sum(
        1
        for ident in tree.find_all(exp.Identifier)
        if not ident.quoted and ident.name.startswith("$")
    )
    if placeholders != count:
        raise RegistrationError(
            f"statement {text!r}: use only '?' placeholders (found {placeholders} placeholders, "
            f"{count} of them '?')"
        )
    returns_rows = isinstance(tree, exp.Query) or tree.args.get("returning") is not None
    return StatementInfo(
        writes=bool(written) or any(True for _ in tree.find_all(*_WRITES)),
        tables=tuple(sorted(tables)),
        tables_written=tuple(sorted(written)),
        param_count=count,
        returns_rows=returns_rows,
        postgres_text=postgres_text,
        psycopg_text=psycopg_text,
    )


def sql(text: str) -> Statement:
    """Declare a parameterized prepared statement (portable SQL, ``?`` placeholders).

    Declare statements at module level and reference them by name from functions: the
    registrar finds them in the function's code and classifies the function read-only or
    writing from them. Raises :class:`RegistrationError` if the text is not one
    SELECT/INSERT/UPDATE/DELETE/MERGE statement.

    >>> AVAILABLE = sql("SELECT available FROM rooms WHERE hotel_id = ? AND day = ?")
    """
    stmt = Statement(text)
    stmt.info = analyze(text)
    return stmt


def info_of(stmt: Statement) -> StatementInfo:
    """The analysis of a statement, computed now if it was built without :func:`sql`."""
    if stmt.info is None:
        stmt.info = analyze(stmt.text)
    info: StatementInfo = stmt.info
    return info
