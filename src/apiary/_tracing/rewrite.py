"""Capture plans: rewriting a statement so that it also returns the rows it touched.

:func:`plan_capture` decides, at registration, how a statement is traced
(:class:`~apiary._capture.CapturePlan`) and builds the variant that runs in its place.

Row level (mode ``rows``):

* ``INSERT``, ``UPDATE``, ``DELETE`` of a table the app declared: the variant appends
  ``RETURNING`` and all the table's columns as ``__apiary_<n>`` (after the statement's own
  ``RETURNING`` columns, if any): the row as written for an insert or update, the row
  before deletion for a delete. ``INSERT ... SELECT`` and ``WITH ... INSERT/UPDATE/DELETE``
  included; an upsert (``ON CONFLICT DO UPDATE``) is recorded as ``insert``, as written.
  A conflicting row skipped by ``ON CONFLICT DO NOTHING`` is not returned, so not recorded.
* A plain ``SELECT`` (no aggregate, window function, ``DISTINCT``, ``GROUP BY``,
  ``HAVING``, set operation or ``WITH``) whose ``FROM``/``JOIN`` name only declared base
  tables: the variant appends the primary key of each table occurrence, in ``FROM``/``JOIN``
  order, as ``__apiary_<n>`` columns. ``WHERE``, ``ORDER BY``, ``LIMIT``/``OFFSET``,
  ``FOR UPDATE`` and subqueries keep working; a table read only by a subquery (in
  ``WHERE`` or in the select list) is listed in the plan's tables but its rows are not
  recorded. An outer join's missing side gives all-NULL keys, which the core skips.

Statement level (mode ``statement``: the statement and the tables it names, no rows):

* reads with aggregates (in the select list or ``ORDER BY``), ``DISTINCT``, ``GROUP BY``,
  ``HAVING``, window functions, ``UNION``/``INTERSECT``/``EXCEPT`` or ``WITH``; reads whose
  ``FROM``/``JOIN`` hold a subquery, a table function, an undeclared or schema-qualified
  table, ``ONLY`` or ``INDEXED BY``, or a column-renaming alias (``t AS x(a, b)``); a
  ``SELECT`` without ``FROM``;
* writes to an undeclared table; a write holding another write (PostgreSQL's
  data-modifying ``WITH``: one plan records one write); ``MERGE`` (op ``insert``, the
  upsert convention); ``UPDATE ... FROM`` or ``DELETE ... USING`` whose target has an
  alias (SQLite cannot qualify ``RETURNING`` by an alias, PostgreSQL not by the table's
  name, and a bare column may be ambiguous);
* statements the parser dialects read differently (see
  :func:`_same_shape_in_every_dialect`), and any variant that does not parse back as
  intended.

A function sqlglot does not know counts as scalar unless its name is one of PostgreSQL's or
SQLite's aggregates (``_AGGREGATES``). A read calling an aggregate the app defined itself
would get key columns it cannot have (PostgreSQL refuses them, SQLite returns one arbitrary
key): give such a query a ``GROUP BY``, which makes it statement level.

The variant is the statement's own text with the new columns inserted: a ``, ...`` after
the last select item, or a ``RETURNING ...`` at the end. The columns are built as sqlglot
nodes, but the statement is not regenerated from its tree, because sqlglot's generators
change statements in ways that break one engine or the other (measured on sqlglot 30:
the SQLite and generic generators drop ``FOR UPDATE``, SQLite's turns ``ILIKE`` into
``LOWER() LIKE LOWER()`` and ``STRING_AGG`` into ``GROUP_CONCAT``, and any generator writes
PostgreSQL's ``OFFSET ? LIMIT ?`` as ``LIMIT ? OFFSET ?``, swapping two parameters bound by
position). Inserting text keeps every ``?`` where it was, so parameters bind unchanged,
and the variant runs wherever the original does. The variant is parsed again and must
give the original tree with the columns added; if it does not, the statement is traced at
statement level.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import sqlglot
from sqlglot import TokenType, exp
from sqlglot.dialects.dialect import Dialect
from sqlglot.errors import ParseError, TokenError

from apiary._capture import ROWS, STATEMENT, CapturePlan
from apiary._errors import RegistrationError
from apiary._sql import analyze, sql
from apiary._tracing.tables import TableInfo

# The order in which apiary._sql parses a statement: the variant is checked in the
# dialect that accepted the original.
_DIALECTS: tuple[str | None, ...] = (None, "sqlite", "postgres")
_WRITES = (exp.Insert, exp.Update, exp.Delete, exp.Merge)
_OPS: dict[type[exp.Expr], str] = {
    exp.Insert: "insert",
    exp.Update: "update",
    exp.Delete: "delete",
    exp.Merge: "insert",  # an upsert, recorded like INSERT ... ON CONFLICT
}

# Arguments a read may have and still name its rows; any other (DISTINCT, GROUP BY,
# HAVING, WITH, INTO, WINDOW, ...) makes it a statement-level read.
_SELECT_ARGS = frozenset(
    {"expressions", "from_", "joins", "where", "order", "limit", "offset", "locks"}
)
_JOIN_ARGS = frozenset({"this", "on", "using", "side", "kind", "method"})
_TABLE_ARGS = frozenset({"this", "alias", "db", "catalog"})

# Aggregates of PostgreSQL 15 and SQLite 3.40 that sqlglot parses as unknown functions
# (exp.Anonymous); the ones it knows are exp.AggFunc.
_AGGREGATES = frozenset(
    {
        "array_agg",
        "avg",
        "bit_and",
        "bit_or",
        "bit_xor",
        "bool_and",
        "bool_or",
        "corr",
        "count",
        "covar_pop",
        "covar_samp",
        "cume_dist",
        "dense_rank",
        "every",
        "group_concat",
        "grouping",
        "json_agg",
        "json_group_array",
        "json_group_object",
        "json_object_agg",
        "jsonb_agg",
        "jsonb_object_agg",
        "max",
        "min",
        "mode",
        "percent_rank",
        "percentile_cont",
        "percentile_disc",
        "range_agg",
        "range_intersect_agg",
        "rank",
        "regr_avgx",
        "regr_avgy",
        "regr_count",
        "regr_intercept",
        "regr_r2",
        "regr_slope",
        "regr_sxx",
        "regr_sxy",
        "regr_syy",
        "stddev",
        "stddev_pop",
        "stddev_samp",
        "string_agg",
        "sum",
        "total",
        "var_pop",
        "var_samp",
        "variance",
        "xmlagg",
    }
)


def plan_capture(text: str, tables: Mapping[str, TableInfo]) -> CapturePlan:
    """How to trace the statement ``text`` (see the module docstring).

    ``tables`` are the app's declared tables by lower-case name
    (:func:`apiary._tracing.tables.tables_of`). Raises :class:`RegistrationError` only for
    a statement that :func:`apiary.sql` refuses; any statement it accepts gets a plan.
    """
    # (A table function such as json_each(?) is named '' by the analysis: not a table.)
    touched = [name for name in analyze(text).tables if name]
    parsed = _parse(text)
    if parsed is None:
        return CapturePlan(STATEMENT, "read", touched)
    tree, dialect = parsed
    plan = None
    if _same_shape_in_every_dialect(text, tree, dialect):
        if isinstance(tree, (exp.Insert, exp.Update, exp.Delete)):
            plan = _write_plan(text, tree, dialect, tables, touched)
        elif isinstance(tree, exp.Select):
            plan = _read_plan(text, tree, dialect, tables, touched)
    return plan or CapturePlan(STATEMENT, _op_of(tree), touched)


def _parse(text: str) -> tuple[exp.Expr, str | None] | None:
    for dialect in _DIALECTS:
        try:
            parsed = [e for e in sqlglot.parse(text, read=dialect) if e is not None]
        except (ParseError, TokenError):
            continue
        return (parsed[0], dialect) if len(parsed) == 1 else None
    return None


def _shape(tree: exp.Expr) -> Any:
    """What the added columns are built from: the tables read, or the table written."""
    if isinstance(tree, exp.Select):
        sources = _sources(tree)
        return None if sources is None else [(_table_key(t), t.alias) for t in sources]
    if isinstance(tree, (exp.Insert, exp.Update, exp.Delete)):
        target = tree.this.this if isinstance(tree.this, exp.Schema) else tree.this
        table = _plain_table(target)
        return None if table is None else (_table_key(table), table.alias)
    return None


def _same_shape_in_every_dialect(text: str, tree: exp.Expr, dialect: str | None) -> bool:
    """Whether each dialect that reads ``text`` as the same kind of statement agrees on it.

    The statement was parsed by the first dialect that accepts it, which may misread
    another engine's syntax: the generic dialect reads PostgreSQL's ``FROM ONLY t`` as a
    table named ``only`` aliased ``t``. Columns qualified after such a misreading would
    break the statement, so it is traced per statement instead.
    """
    mine = _shape(tree)
    for other in _DIALECTS:
        if other == dialect:
            continue
        try:
            parsed = [e for e in sqlglot.parse(text, read=other) if e is not None]
        except (ParseError, TokenError):
            continue  # that engine's syntax only: nothing to disagree with
        if len(parsed) == 1 and type(parsed[0]) is type(tree) and _shape(parsed[0]) != mine:
            return False
    return True


def _op_of(tree: exp.Expr) -> str:
    write = tree if isinstance(tree, _WRITES) else tree.find(*_WRITES)
    return "read" if write is None else _OPS[type(write)]


def _table_key(table: exp.Table) -> str:
    # The same spelling as apiary._sql's table names and tables_of's keys.
    return ".".join(p for p in (table.catalog, table.db, table.name) if p).lower()


def _plain_table(node: exp.Expr) -> exp.Table | None:
    """``node`` if it is a base table reference (optionally aliased), else ``None``."""
    if not isinstance(node, exp.Table) or not isinstance(node.this, exp.Identifier):
        return None
    if any(value for key, value in node.args.items() if key not in _TABLE_ARGS):
        return None
    alias = node.args.get("alias")
    if alias is not None and alias.args.get("columns"):
        return None  # t AS x(a, b) renames the columns the key would be read from
    return node


def _qualifier(table: exp.Table) -> dict[str, Any]:
    """How columns of ``table`` are qualified: its alias, else its (possibly dotted) name."""
    alias = table.args.get("alias")
    if alias is not None and alias.this is not None:
        return {"table": alias.this.copy()}
    parts = {"table": table.this, "db": table.args.get("db"), "catalog": table.args.get("catalog")}
    return {key: part.copy() for key, part in parts.items() if part is not None}


def _column(name: str, qualifier: Mapping[str, Any]) -> exp.Column:
    # Quoted: a column may be named like a keyword ("order", or "user", which PostgreSQL
    # would read as CURRENT_USER); the DDL's names are lower case, as PostgreSQL folds them.
    return exp.Column(this=exp.to_identifier(name, quoted=True), **qualifier)


def _tokens(text: str, dialect: str | None) -> list[Any]:
    tokens: list[Any] = Dialect.get_or_raise(dialect).tokenize(text)
    return tokens


def _splice(
    text: str,
    dialect: str | None,
    position: int,
    fragment: str,
    expected: exp.Expr,
) -> str | None:
    """``text`` with ``fragment`` inserted at ``position``, if it parses as ``expected``."""
    variant = text[:position] + fragment + text[position:]
    try:
        again = [e for e in sqlglot.parse(variant, read=dialect) if e is not None]
    except (ParseError, TokenError):
        return None
    return variant if len(again) == 1 and again[0] == expected else None


def _rows_plan(
    variant_text: str | None,
    op: str,
    touched: list[str],
    groups: list[tuple[str, list[str]]],
) -> CapturePlan | None:
    if variant_text is None:
        return None
    try:
        variant = sql(variant_text)
    except RegistrationError:
        return None
    return CapturePlan(ROWS, op, touched, variant, groups)


# -- writes -------------------------------------------------------------------------------


def _write_plan(
    text: str,
    tree: exp.Insert | exp.Update | exp.Delete,
    dialect: str | None,
    tables: Mapping[str, TableInfo],
    touched: list[str],
) -> CapturePlan | None:
    if any(node is not tree for node in tree.find_all(*_WRITES)):
        return None  # a data-modifying WITH: one plan cannot record two writes
    target = tree.this.this if isinstance(tree.this, exp.Schema) else tree.this
    table = _plain_table(target)
    if table is None or (info := tables.get(_table_key(table))) is None:
        return None
    qualifier: dict[str, Any] = {}
    others = tree.args.get("from_") or tree.args.get("using") or tree.args.get("tables")
    if not isinstance(tree, exp.Insert) and others:
        # Other tables are in scope, so a bare column may be ambiguous in PostgreSQL. SQLite
        # accepts RETURNING qualified by the table's name but not by an alias, and
        # PostgreSQL the other way round: with an alias there is no form both accept.
        if table.args.get("alias") is not None:
            return None
        qualifier = _qualifier(table)
    # Named apart, as a read's keys are: PL/Python returns rows as dicts by column name, so
    # the engine refuses a write whose RETURNING repeats a name (RETURNING id, "id").
    added = [
        exp.alias_(_column(name, qualifier), f"__apiary_{i}") for i, name in enumerate(info.columns)
    ]

    expected = tree.copy()
    returning = expected.args.get("returning")
    if returning is not None:
        returning.set("expressions", [*returning.expressions, *added])
        prefix = ", "
    else:
        expected.set("returning", exp.Returning(expressions=added))
        prefix = " RETURNING "
    # RETURNING ends the statement in both engines: insert after the last token, before
    # any trailing semicolon or comment.
    tokens = [t for t in _tokens(text, dialect) if t.token_type != TokenType.SEMICOLON]
    if not tokens:
        return None
    fragment = prefix + ", ".join(node.sql(dialect="sqlite") for node in added)
    variant = _splice(text, dialect, tokens[-1].end + 1, fragment, expected)
    return _rows_plan(variant, _OPS[type(tree)], touched, [(info.name, list(info.columns))])


# -- reads --------------------------------------------------------------------------------


def _sources(tree: exp.Select) -> list[exp.Table] | None:
    """The tables in ``FROM`` and ``JOIN`` order, if all are plain base tables."""
    from_ = tree.args.get("from_")
    if from_ is None:
        return None
    nodes = [from_.this]
    for join in tree.args.get("joins") or []:
        if any(value for key, value in join.args.items() if key not in _JOIN_ARGS):
            return None
        nodes.append(join.this)
    found = [_plain_table(node) for node in nodes]
    return None if any(t is None for t in found) else [t for t in found if t is not None]


def _own_scope(nodes: Iterable[exp.Expr]) -> Iterable[exp.Expr]:
    """Every node of ``nodes``, not descending into subqueries (they have their own scope)."""
    nested = (exp.Query, exp.Subquery)
    for root in nodes:
        for node in root.walk(prune=lambda n: isinstance(n, nested)):
            if not isinstance(node, nested):
                yield node


def _names_its_rows(tree: exp.Select) -> bool:
    """No aggregate or window function in the select list or ORDER BY."""
    order = tree.args.get("order")
    scope = [*tree.expressions, *([order] if order is not None else [])]
    for node in _own_scope(scope):
        if isinstance(node, (exp.AggFunc, exp.Window, exp.WithinGroup, exp.Filter)):
            return False
        if isinstance(node, exp.Anonymous) and node.name.lower() in _AGGREGATES:
            return False
    return True


def _read_plan(
    text: str,
    tree: exp.Select,
    dialect: str | None,
    tables: Mapping[str, TableInfo],
    touched: list[str],
) -> CapturePlan | None:
    if any(value for key, value in tree.args.items() if key not in _SELECT_ARGS):
        return None
    sources = _sources(tree)
    if sources is None or not _names_its_rows(tree):
        return None
    infos = [tables.get(_table_key(table)) for table in sources]
    groups: list[tuple[str, list[str]]] = []
    added: list[exp.Expr] = []
    for table, info in zip(sources, infos, strict=True):
        if info is None:
            return None
        qualifier = _qualifier(table)
        for name in info.primary_key:
            added.append(exp.alias_(_column(name, qualifier), f"__apiary_{len(added)}"))
        groups.append((info.name, list(info.primary_key)))

    position = _select_list_end(_tokens(text, dialect))
    if position is None:
        return None
    expected = tree.copy()
    expected.set("expressions", [*expected.expressions, *added])
    fragment = ", " + ", ".join(node.sql(dialect="sqlite") for node in added)
    variant = _splice(text, dialect, position, fragment, expected)
    return _rows_plan(variant, "read", touched, groups)


def _select_list_end(tokens: list[Any]) -> int | None:
    """Where the top-level select list ends: after the last token before its ``FROM``."""
    if not tokens or tokens[0].token_type != TokenType.SELECT:
        return None
    depth = 0
    for i, token in enumerate(tokens[1:], start=1):
        kind = token.token_type
        if kind == TokenType.L_PAREN:
            depth += 1
        elif kind == TokenType.R_PAREN:
            depth -= 1
        elif kind == TokenType.FROM and depth == 0:
            if tokens[i - 1].token_type == TokenType.DISTINCT:
                continue  # a IS [NOT] DISTINCT FROM b
            return int(tokens[i - 1].end) + 1
    return None
