"""The PostgreSQL engine: ``postgresql://user:password@host:port/db[?placement=db|client]``.

``placement=db`` (the default) runs each transaction unit inside the database: the
registrar compiled it into its own PL/Python stored procedure (see
:mod:`apiary._engines.plpython`), and one ``SELECT`` runs it, so a function with ten
queries costs one round trip. ``placement=client`` runs the same execution core in this
process over a connection, one round trip per query: the conventional architecture, for
comparison and for functions that need libraries the server's Python lacks.

Every transaction runs under ``SERIALIZABLE``. Serialization failures and deadlocks
(SQLSTATE 40001, 40P01) are retried outside the transaction with jittered backoff.

URL options (removed before connecting; others go to libpq):
``placement`` (``db`` | ``client``), ``pool_min`` (1), ``pool_max`` (16), ``pool_timeout``
(seconds to wait for a connection, 10).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import hashlib
import json
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import psycopg
import psycopg.errors
from psycopg.types.string import TextLoader

from apiary import _codec
from apiary._app import AppInfo
from apiary._bookkeeping import StatusRowExists, VersionMismatch, decode_record, decode_result
from apiary._capture import CapturePlan
from apiary._database import (
    RETRY_SECONDS,
    Database,
    Statement,
    TransactionConflict,
    backoff_delay,
    retry_attempts,
)
from apiary._engines._base import DeclaredStatement, Engine
from apiary._engines.pgpool import ConnectionPool, PoolTimeout
from apiary._errors import (
    ApiaryError,
    DatabaseUnavailableError,
    FunctionError,
    NotInstalledError,
    TransactionConflictError,
    WorkflowConflictError,
)
from apiary._execution import UnitOutcome, UnitRequest, UnitSpec
from apiary._indb import (
    FUNCTION_ERROR_STATE,
    NOT_INSTALLED_STATE,
    STATUS_ROW_EXISTS_STATE,
    UNAVAILABLE_CLASSES,
    VERSION_MISMATCH_STATE,
    WORKFLOW_CONFLICT_STATE,
)
from apiary._sql import info_of, placeholder_forms

T = TypeVar("T")

SYSTEM_SCHEMA = "apiary"
PLACEMENTS = ("db", "client")

#: Attempts for a unit whose connection broke; only units safe to repeat are retried.
CONNECTION_ATTEMPTS = 3

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


def _conflict(exc: BaseException) -> bool:
    return isinstance(exc, psycopg.errors.SerializationFailure | psycopg.errors.DeadlockDetected)


def _connection_lost(exc: BaseException) -> bool:
    """Whether an error is the server's trouble, not the application's: it could not be
    reached, the connection broke, or it ran out of a resource (classes 08, 53, 57, 58)."""
    if isinstance(exc, PoolTimeout):
        return True
    if not isinstance(exc, psycopg.Error) or _conflict(exc):
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
            if _conflict(exc):
                raise TransactionConflict(str(exc)) from exc
            if _connection_lost(exc):
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


def _translate_call_error(exc: psycopg.Error) -> Exception:
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


class PostgresEngine(Engine):
    """PostgreSQL, with units placed in the database (``db``) or in this process."""

    name = "postgres"

    def __init__(
        self,
        conninfo: str,
        executor: concurrent.futures.Executor,
        *,
        placement: str = "db",
        pool_min: int = 1,
        pool_max: int = 16,
        pool_timeout: float = 10.0,
    ) -> None:
        super().__init__(executor)
        if placement not in PLACEMENTS:
            raise ValueError(f"placement must be one of {PLACEMENTS}, not {placement!r}")
        self.conninfo = conninfo
        self.placement = placement
        self.pool_min = pool_min
        self.pool_max = pool_max
        self.pool_timeout = pool_timeout
        self.app: AppInfo | None = None
        self._pool: ConnectionPool | None = None
        self._pool_lock = threading.Lock()
        self._stubs: dict[int, tuple[UnitSpec, str]] = {}
        self._closed = False

    @classmethod
    def from_url(cls, url: str, executor: concurrent.futures.Executor) -> PostgresEngine:
        """Open ``postgresql://...``; see the module docstring for the options."""
        parts = urlsplit(url)
        options: dict[str, Any] = {}
        passthrough = []
        for key, value in parse_qsl(parts.query, keep_blank_values=True):
            if key == "placement":
                options["placement"] = value
            elif key in ("pool_min", "pool_max"):
                if not value.isdigit() or int(value) < 1:
                    raise ValueError(f"{key} must be a positive integer, not {value!r}")
                options[key] = int(value)
            elif key == "pool_timeout":
                try:
                    options[key] = float(value)
                except ValueError:
                    raise ValueError(f"pool_timeout must be seconds, not {value!r}") from None
            else:
                passthrough.append((key, value))
        conninfo = urlunsplit(parts._replace(query=urlencode(passthrough)))
        return cls(conninfo, executor, **options)

    def bind(
        self,
        app: AppInfo,
        functions: Mapping[str, Callable[..., Any]],
        plans: Mapping[str, CapturePlan] | None = None,
    ) -> None:
        """Set the app (its name and version name the stored procedures), its functions
        and capture plans."""
        super().bind(app, functions, plans)
        self.app = app

    # -- connections -----------------------------------------------------------------

    def _configure(self, conn: psycopg.Connection[Any]) -> None:
        conn.execute("SET default_transaction_isolation TO 'serializable'")
        if self.placement == "client":
            for name in TEXT_TYPES:
                conn.adapters.register_loader(name, TextLoader)
        elif self.app is not None:
            # The first PL/Python call of a backend loads the runtime (tens of ms):
            # pay it when the pool opens the connection, not in a request.
            with contextlib.suppress(psycopg.Error):  # not installed yet: calls will say so
                conn.execute(*self._warm_call())

    def _warm_call(self) -> tuple[str, tuple[Any, ...]]:
        assert self.app is not None
        sql = f'SELECT {SYSTEM_SCHEMA}."{system_stub_name(self.app.name)}"(%s, %s, %s)'
        return sql, (self.app.version, "ping", "[[], {}]")

    def pool(self) -> ConnectionPool:
        """The connection pool, opened on first use (by exactly one of racing threads)."""
        pool = self._pool
        if pool is None:
            with self._pool_lock:
                if self._closed:
                    raise RuntimeError("this runtime is closed")
                if self._pool is None:
                    self._pool = ConnectionPool(
                        self.conninfo,
                        min_size=self.pool_min,
                        max_size=self.pool_max,
                        configure=self._configure,
                        timeout=self.pool_timeout,
                    )
                pool = self._pool
        return pool

    def connect(self) -> psycopg.Connection[Any]:
        """A new connection outside the pool (for install), in autocommit mode."""
        try:
            return psycopg.connect(self.conninfo, autocommit=True, connect_timeout=10)
        except psycopg.OperationalError as exc:
            raise DatabaseUnavailableError(f"cannot connect to PostgreSQL: {exc}") from exc

    # -- transactions in this process (placement=client, and bookkeeping there) --------

    def transact(self, work: Callable[[Database], T], *, write: bool) -> T:
        """Run ``work`` over a pooled connection in one transaction; retry conflicts."""
        last: BaseException | None = None
        for attempt in retry_attempts():
            try:
                with self.pool().connection() as conn, conn.transaction():
                    return work(PsycopgDatabase(conn))
            except TransactionConflict as exc:
                last = exc
            except psycopg.Error as exc:
                if _conflict(exc):
                    last = exc
                elif _connection_lost(exc):
                    raise DatabaseUnavailableError(f"PostgreSQL: {exc}") from exc
                else:
                    raise _translate_call_error(exc) from exc
            except PoolTimeout as exc:
                raise DatabaseUnavailableError(f"no PostgreSQL connection: {exc}") from exc
            time.sleep(backoff_delay(attempt))
        raise TransactionConflictError(
            f"a transaction kept conflicting for {RETRY_SECONDS:.0f} s: {last}"
        )

    # -- stored procedure calls (placement=db) ---------------------------------------

    def _stub_call(self, unit: UnitSpec) -> str:
        """The ``SELECT`` that calls a unit's stored procedure (made once per unit)."""
        found = self._stubs.get(id(unit))
        if found is None:
            assert self.app is not None, "bind() the app first"
            sql = f'SELECT {SYSTEM_SCHEMA}."{stub_name(self.app.name, unit)}"(%s, %s)'
            found = self._stubs[id(unit)] = (unit, sql)  # the unit is kept alive with its id
        return found[1]

    def _unit_call(self, unit: UnitSpec, request: UnitRequest) -> tuple[str, tuple[Any, ...]]:
        assert self.app is not None, "bind() the app first"
        data = {
            "w": request.workflow_id,
            "p": request.params,
            "i": request.inputs,
            "s": request.start,
            "c": request.call_id,
            "t": request.trace,
        }
        if not request.home:
            data["h"] = False
        if request.look_first:
            data["x"] = True
        payload = _codec.dumps(data)
        return self._stub_call(unit), (self.app.version, payload)

    def _system_call(
        self, op: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[str, tuple[Any, ...]]:
        assert self.app is not None, "bind() the app first"
        sql = f'SELECT {SYSTEM_SCHEMA}."{system_stub_name(self.app.name)}"(%s, %s, %s)'
        return sql, (self.app.version, op.__name__, _codec.dumps([list(args), kwargs]))

    def _call(
        self, sql: str, params: tuple[Any, ...], *, repeatable: bool, rows: bool = False
    ) -> Any:
        """Run a stored procedure's ``SELECT`` and decode its answer (with ``rows``, the
        answers of a set-returning one, as a list), retrying what is safe to retry."""
        lost = 0
        for attempt in retry_attempts():
            try:
                pool = self._pool or self.pool()
                conn = pool.take()
                try:
                    cursor = conn.execute(sql, params, prepare=True)
                    if rows:
                        return [_codec.loads(row[0]) for row in cursor.fetchall()]
                    row = cursor.fetchone()
                finally:
                    pool.give(conn)
                return _codec.loads(row[0]) if row is not None else None
            except (psycopg.Error, PoolTimeout) as exc:
                failure = self._call_failure(exc, repeatable, lost)
                if failure is not None:
                    raise failure from exc
                lost += int(not _conflict(exc))
            time.sleep(backoff_delay(attempt))
        raise TransactionConflictError(f"a call kept conflicting for {RETRY_SECONDS:.0f} s")

    def _call_failure(self, exc: BaseException, repeatable: bool, lost: int) -> Exception | None:
        """What to raise for a failed call, or ``None`` to retry it."""
        if _conflict(exc):
            return None
        if _connection_lost(exc):
            # A call whose connection broke may or may not have committed: repeat it only
            # if that is harmless (a recorded unit finds its output; a read changes nothing).
            if repeatable and lost + 1 < CONNECTION_ATTEMPTS:
                return None
            return DatabaseUnavailableError(f"PostgreSQL: {exc}")
        assert isinstance(exc, psycopg.Error)
        return _translate_call_error(exc)

    def _run_unit(self, unit: UnitSpec, request: UnitRequest) -> UnitOutcome:
        """Run a unit: in its stored procedure (``db``) or here over a connection."""
        if self.placement == "client":
            return super()._run_unit(unit, request)
        sql, params = self._unit_call(unit, request)
        data = self._call(sql, params, repeatable=unit.read_only or unit.recorded)
        return UnitOutcome(data["o"], decode_record(data["f"]), data["n"], data.get("t"))

    def system(self, op: Callable[..., T], *args: Any, write: bool, **kwargs: Any) -> T:
        """Run a bookkeeping function: in the system procedure (``db``) or here."""
        if self.placement == "client":
            return super().system(op, *args, write=write, **kwargs)
        sql, params = self._system_call(op, args, kwargs)
        return decode_result(self._call(sql, params, repeatable=True))  # type: ignore[no-any-return]

    # -- install ---------------------------------------------------------------------

    def install(
        self,
        app: AppInfo,
        statements: Sequence[DeclaredStatement],
        units: Sequence[UnitSpec] = (),
        plans: Mapping[str, CapturePlan] | None = None,
    ) -> None:
        """Create system tables and the schema; compile units into stored procedures."""
        from apiary._engines.plpython import install

        with self.connect() as conn:
            install(conn, app, statements, units, plans, in_database=self.placement == "db")

    def close(self) -> None:
        """Close the connection pool."""
        with self._pool_lock:
            self._closed = True
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()
