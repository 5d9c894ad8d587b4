"""What the PostgreSQL engine sends and gets back over psycopg.

The execution core's :class:`~apiary._database.Database` adapter over a connection
(``placement=client``), the names of the units' stored procedures (``placement=db``), and
the decoding of their answers and errors.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

import psycopg
import psycopg.errors

from apiary import _codec
from apiary._bookkeeping import StatusRowExists, VersionMismatch, decode_record
from apiary._database import Statement, TransactionConflict
from apiary._engines.pgpool import PoolTimeout
from apiary._errors import (
    ApiaryError,
    DatabaseUnavailableError,
    FunctionError,
    NotInstalledError,
    WorkflowConflictError,
)
from apiary._indb import (
    FUNCTION_ERROR_STATE,
    NOT_INSTALLED_STATE,
    STATUS_ROW_EXISTS_STATE,
    UNAVAILABLE_CLASSES,
    VERSION_MISMATCH_STATE,
    WORKFLOW_CONFLICT_STATE,
)
from apiary._sql import info_of, placeholder_forms
from apiary._units import UnitOutcome, UnitSpec

SYSTEM_SCHEMA = "apiary"
# PL/Python hands every type it has no Python mapping for to the function as its text
# form (dates, timestamps, json, uuid, ...). Client placement reads those types as text
# too, so that a function returns the same values in both placements.
TEXT_TYPES = (
    "date",
    "time",
    "timetz",
    "timestamp",
    "timestamptz",
    "interval",
    "json",
    "jsonb",
    "uuid",
    "inet",
    "cidr",
    "macaddr",
    "int4range",
    "int8range",
    "numrange",
    "daterange",
    "tsrange",
    "tstzrange",
)

_system_texts: dict[str, str] = {}


def _psycopg_text(stmt: Statement) -> str:
    if stmt.system:
        text = _system_texts.get(stmt.text)
        if text is None:
            text = placeholder_forms(stmt.text.replace("{sys}", f"{SYSTEM_SCHEMA}."))[1]
            _system_texts[stmt.text] = text
        return text
    return str(info_of(stmt).psycopg_text)


def is_conflict(exc: BaseException) -> bool:
    return isinstance(exc, psycopg.errors.SerializationFailure | psycopg.errors.DeadlockDetected)


def is_connection_lost(exc: BaseException) -> bool:
    """Whether an error is the server's trouble, not the application's: it could not be
    reached, the connection broke, or it ran out of a resource (classes 08, 53, 57, 58)."""
    if isinstance(exc, PoolTimeout):
        return True
    if not isinstance(exc, psycopg.Error) or is_conflict(exc):
        return False
    state = getattr(exc, "sqlstate", None)
    if state is None:
        return isinstance(exc, psycopg.OperationalError)
    return bool(state.startswith(UNAVAILABLE_CLASSES))


class PsycopgDatabase:
    """The execution core's adapter over a psycopg connection (one round trip a query)."""

    __slots__ = ("conn",)

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.conn = conn

    def _cursor(self, stmt: Statement, params: Sequence[Any]) -> psycopg.Cursor[Any]:
        try:
            return self.conn.execute(_psycopg_text(stmt), params, prepare=True)
        except psycopg.Error as exc:
            if is_conflict(exc):
                raise TransactionConflict(str(exc)) from exc
            if is_connection_lost(exc):
                raise DatabaseUnavailableError(f"PostgreSQL: {exc}") from exc
            raise

    def query(self, stmt: Statement, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        """Run a statement and return its rows."""
        cursor = self._cursor(stmt, params)
        return cursor.fetchall() if cursor.description is not None else []

    def execute(self, stmt: Statement, params: Sequence[Any]) -> int:
        """Run a statement and return the number of rows it changed."""
        cursor = self._cursor(stmt, params)
        return cursor.rowcount


def stub_name(app: str, unit: UnitSpec) -> str:
    """The stored procedure of a unit: readable, unique per compiled unit, <= 63 bytes.

    PostgreSQL truncates identifiers longer than 63 bytes, so the digest of the unit's
    compiled form goes first and the readable part is cut to fit.
    """
    digest = hashlib.sha256(json.dumps([app, unit.to_json()], sort_keys=True).encode()).hexdigest()[
        :12
    ]
    readable = "".join(c if c.isalnum() else "_" for c in f"{app}_{unit.id}")
    return f"u{digest}_{readable}"[:63]


def system_stub_name(app: str) -> str:
    """The stored procedure that runs workflow bookkeeping for an app."""
    return f"system_{app}"[:63].replace("-", "_")


def decode_answer(text: str) -> Any:
    """A stored procedure's answer: JSON text, followed, for a unit that hands back a
    read-only trace, by a newline and the trace's document (see ``_indb``), which goes
    in as the document of the answer's ``"t"``."""
    head, newline, document = text.partition("\n")
    data = _codec.loads(head)
    if newline:
        data["t"][2] = document
    return data


def unit_outcome(data: Mapping[str, Any]) -> UnitOutcome:
    """A unit's outcome, from its stored procedure's answer."""
    return UnitOutcome(data["o"], decode_record(data["f"]), data["n"], data.get("t"))


def call_error(exc: psycopg.Error) -> Exception:
    state = exc.sqlstate
    diag = exc.diag
    # Through PL/Proxy (a cluster's proxy routing) the partition's error arrives with its
    # SQLSTATE, its message prefixed "<function>: [<db>] REMOTE ERROR: " and its detail
    # prefixed "Remote detail: ".
    detail = (diag.message_detail or "").removeprefix("Remote detail: ")
    if state == FUNCTION_ERROR_STATE:
        return FunctionError.from_json(json.loads(detail or "{}"))
    if state == VERSION_MISMATCH_STATE:
        return VersionMismatch(detail)
    if state == STATUS_ROW_EXISTS_STATE:
        return StatusRowExists(diag.message_primary or str(exc))
    message = diag.message_primary or str(exc)
    message = message.partition(" REMOTE ERROR: ")[2] or message
    message = message.removeprefix("plpy.Error: ")
    if state == WORKFLOW_CONFLICT_STATE:
        return WorkflowConflictError(message)
    if state == NOT_INSTALLED_STATE or isinstance(exc, psycopg.errors.UndefinedFunction):
        return NotInstalledError(
            f"the app is not installed in this database (or is older than this code): "
            f"run Runtime.install(): {message}"
        )
    if isinstance(exc, psycopg.errors.UndefinedTable) and "apiary." in message:
        return NotInstalledError(f"Apiary's tables are missing: run Runtime.install(): {message}")
    return ApiaryError(f"PostgreSQL: {message}")
