"""Partitioned apps: which partition owns a key, and where each transaction unit runs.

An app declares each table *partitioned* by a column (``app.partition``) or *replicated*
(``app.replicate``), and each function the argument that locates its data
(``@app.function(partition="arg")``). On a cluster (:mod:`apiary._engines.cluster`) a
unit then runs entirely on one partition database, like a VoltDB single-partition
procedure. The checks here run at registration (when a ``Runtime`` compiles the app, on
any engine), so a unit that could write to two partitions is refused before it ever
runs; ``docs/SCALING.md`` states the rules.

The partition of a key is ``hash & (N - 1)`` for ``N`` partitions (a power of two), where
``hash`` is the first four bytes of the MD5 digest of the key's text, as a signed 32-bit
integer: the same function the proxy database's PL/Proxy routing
(``apiary.partition_hash``) and the partitions' ``CHECK`` constraints compute in SQL, so
that a frontend that routes directly, the proxy and the data always agree.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from apiary._app import App
from apiary._errors import InvalidArgumentsError, RegistrationError
from apiary._sql import info_of
from apiary._units import UnitSpec, template_nodes

#: The SQL twin of :func:`partition_hash` (installed on the proxy and every partition).
HASH_SQL = (
    "CREATE OR REPLACE FUNCTION apiary.partition_hash(key text) RETURNS integer "
    "LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE "
    "AS $$ SELECT ('x' || substr(md5(key), 1, 8))::bit(32)::integer $$"
)


def key_text(value: Any) -> str:
    """The text a partition key hashes: an integer's decimal digits, or the string itself.

    These are also the values' text in PostgreSQL (``column::text``), which the
    partitions' ``CHECK`` constraints hash. Other JSON values are refused.
    """
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    raise InvalidArgumentsError(
        f"a partition key must be an integer or a string, not {type(value).__name__} {value!r}"
    )


def partition_hash(text: str) -> int:
    """The signed 32-bit hash of a key's text (``apiary.partition_hash`` in SQL)."""
    return int.from_bytes(hashlib.md5(text.encode()).digest()[:4], "big", signed=True)


def partition_of(value: Any, count: int) -> int:
    """The partition (0 .. count-1) that owns a key; ``count`` is a power of two."""
    return partition_hash(key_text(value)) & (count - 1)


# --------------------------------------------------------------------------------------
# Routes
# --------------------------------------------------------------------------------------


class Route:
    """Where a unit runs on a cluster.

    ``kind`` is ``"key"`` (the partition owning the value of ``template``, a value
    template of the unit's inputs), ``"any"`` (it reads replicated tables only: any
    partition will do) or ``"all"`` (a read-only function run on every partition, its
    results merged by ``combine``).
    """

    __slots__ = ("combine", "kind", "template")

    def __init__(
        self,
        kind: str,
        template: Sequence[Any] | None = None,
        combine: str | Callable[[list[Any]], Any] | None = None,
    ) -> None:
        self.kind = kind
        self.template = template
        self.combine = combine

    def __repr__(self) -> str:
        return f"Route({self.kind!r}, {self.template!r})"


def _describe(template: Sequence[Any]) -> str:
    tag = template[0]
    if tag == "p":
        return f"workflow argument {template[1]!r}"
    if tag == "n":
        return f"the output of {template[1]!r}"
    if tag == "c":
        return f"the constant {template[1]!r}"
    return "a value built from several inputs"


def check_tables(app: App) -> None:
    """Refuse a partitioning that does not match the schema."""
    from apiary._tracing.tables import tables_of

    tables = tables_of(app.schemas)
    for table, column in app.partitioning.items():
        info = tables.get(table.lower())
        if info is None:
            raise RegistrationError(
                f"app {app.name!r}: table {table!r} is declared "
                f"{'partitioned' if column else 'replicated'} but its schema does not create it"
            )
        if column is not None and column.lower() not in info.columns:
            raise RegistrationError(
                f"app {app.name!r}: table {table!r} is partitioned by {column!r}, which is not "
                f"one of its columns ({', '.join(info.columns)})"
            )
    undeclared = sorted(set(tables) - {t.lower() for t in app.partitioning})
    if undeclared:
        raise RegistrationError(
            f"app {app.name!r} declares partitioning, but table(s) "
            f"{', '.join(map(repr, undeclared))} "
            "are neither partitioned (app.partition(table, by=column)) nor replicated "
            "(app.replicate(table))"
        )


def route_unit(app: App, unit: UnitSpec) -> Route:
    """The route of a unit of a partitioned app; raises :class:`RegistrationError` if the
    unit could touch more than one partition's data in one transaction."""
    kinds = {t.lower(): c for t, c in app.partitioning.items()}
    inside = {m.node for m in unit.members}
    key: Sequence[Any] | None = None
    keyed_by = ""
    unkeyed_reads: list[tuple[str, str]] = []
    for member in unit.members:
        defn = app.functions[member.function]
        where = f"function {defn.name!r}"
        for stmt in defn.statements:
            info = info_of(stmt)
            for table in info.tables:
                if table.lower() not in kinds:
                    raise RegistrationError(
                        f"{where} uses table {table!r}, which is neither partitioned "
                        "(app.partition) nor replicated (app.replicate)"
                    )
            for table in info.tables_written:
                if kinds[table.lower()] is None:
                    raise RegistrationError(
                        f"{where} writes replicated table {table!r}: every partition holds a "
                        "copy, so a write would span partitions; functions may only read "
                        "replicated tables (load them with each partition's own tools)"
                    )
        partitioned = sorted(
            {t for s in defn.statements for t in info_of(s).tables if kinds[t.lower()]}
        )
        if defn.partition is None:
            if partitioned and not defn.read_only:
                raise RegistrationError(
                    f"{where} writes partitioned table(s) {', '.join(partitioned)} but declares "
                    "no partition=: a write must name the argument whose partition it runs on"
                )
            if partitioned:
                unkeyed_reads.append((defn.name, ", ".join(partitioned)))
            continue
        template = member.args[defn.partition]
        if any(node in inside for node in template_nodes(template)):
            raise RegistrationError(
                f"{where}: its partition key {defn.partition!r} comes from a function of the "
                "same transaction, so the partition is not known before the transaction starts"
            )
        if key is None:
            key, keyed_by = template, defn.name
        elif list(template) != list(key):
            raise RegistrationError(
                f"transaction {unit.id!r} would span partitions: {keyed_by!r} runs on the "
                f"partition of {_describe(key)} and {defn.name!r} on that of "
                f"{_describe(template)}; one transaction runs on one partition"
            )
    if key is not None:
        if unkeyed_reads:
            name, tables = unkeyed_reads[0]
            raise RegistrationError(
                f"function {name!r} reads partitioned table(s) {tables} without partition= in "
                f"transaction {unit.id!r}, which runs on one partition: declare partition="
            )
        return Route("key", key)
    if not unkeyed_reads:
        return Route("any")  # replicated tables (or none) only
    name, tables = unkeyed_reads[0]
    defn = app.functions[name]
    if len(unit.members) > 1 or defn.combine is None:
        raise RegistrationError(
            f"function {name!r} reads partitioned table(s) {tables} but declares neither "
            "partition= (run on the partition of a key) nor combine= (run on every partition "
            "and merge the results)"
            + (
                f"; in transaction {unit.id!r} it cannot run on every partition"
                if len(unit.members) > 1
                else ""
            )
        )
    return Route("all", combine=defn.combine)


def assign_routes(app: App, units: Sequence[UnitSpec]) -> None:
    """Check and set the route of every unit of a partitioned app (no-op otherwise)."""
    if not app.partitioned:
        return
    for unit in units:
        if unit.route is None:
            unit.route = route_unit(app, unit)


# --------------------------------------------------------------------------------------
# Merging the results of a unit run on every partition
# --------------------------------------------------------------------------------------


def _concat(results: list[Any]) -> Any:
    merged: list[Any] = []
    for part in results:
        if part is None:
            continue
        if not isinstance(part, list):
            raise TypeError(f"combine='concat' needs lists, got {type(part).__name__}")
        merged.extend(part)
    return merged


def _present(results: list[Any]) -> list[Any]:
    return [r for r in results if r is not None]


_COMBINE: Mapping[str, Callable[[list[Any]], Any]] = {
    "concat": _concat,
    "sum": lambda results: sum(_present(results)),
    "min": lambda results: min(_present(results), default=None),
    "max": lambda results: max(_present(results), default=None),
    "any": any,
    "all": all,
}


def combine(how: str | Callable[[list[Any]], Any], results: list[Any]) -> Any:
    """Merge one function's results from every partition (in partition order)."""
    merge = how if callable(how) else _COMBINE[how]
    return merge(results)
