"""The PostgreSQL engine: ``postgresql://user:password@host:port/db[?placement=db|client]``.

``placement=db`` (the default) runs each transaction unit inside the database: the
registrar compiled it into its own PL/Python stored procedure (see
:mod:`apiary._engines.plpython`), and one ``SELECT`` runs it, so a function with ten
queries costs one round trip. ``placement=client`` runs the same execution core in this
process over a connection, one round trip per query: the conventional architecture, for
comparison and for functions that need libraries the server's Python lacks.

Every transaction runs under ``SERIALIZABLE``, except the end of a workflow in a
transaction of its own (:data:`READ_COMMITTED_OPS`). Serialization failures and deadlocks
(SQLSTATE 40001, 40P01) are retried outside the transaction with jittered backoff.

With ``placement=db``, calls made on an event loop (``Runtime.run_async``, and so the
HTTP frontend) are awaited there, over asyncio connections of that loop's own pool,
instead of being handed to a thread and back: about 30 us less per call, and no context
switches. Steps, and ``placement=client`` units, still run on the runtime's threads.

URL options (removed before connecting; others go to libpq):
``placement`` (``db`` | ``client``), ``pool_min`` (1), ``pool_max`` (16; the threads'
pool and each event loop's pool open up to this many connections, an event loop's no more
than the runtime's ``max_workers``), ``pool_timeout`` (seconds to wait for a connection, 10).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import psycopg
import psycopg.errors
from psycopg.pq import TransactionStatus
from psycopg.types.string import TextLoader

from apiary import _codec
from apiary._app import AppInfo
from apiary._bookkeeping import decode_result
from apiary._capture import CapturePlan
from apiary._database import (
    RETRY_SECONDS,
    Database,
    TransactionConflict,
    backoff_delay,
    retry_attempts,
)
from apiary._engines._base import DeclaredStatement, Engine
from apiary._engines.pgpool import AsyncConnectionPool, ConnectionPool, PoolTimeout
from apiary._engines.pgwire import (
    SYSTEM_SCHEMA,
    TEXT_TYPES,
    PsycopgDatabase,
    call_error,
    decode_answer,
    is_conflict,
    is_connection_lost,
    stub_name,
    system_stub_name,
    unit_outcome,
)
from apiary._errors import (
    DatabaseUnavailableError,
    TransactionConflictError,
)
from apiary._units import UnitOutcome, UnitRequest, UnitSpec

T = TypeVar("T")

#: Every connection's transactions are serializable.
SERIALIZABLE_SQL = "SET default_transaction_isolation TO 'serializable'"
#: Bookkeeping transactions that run under ``READ COMMITTED``: the end of a workflow, in a
#: transaction of its own after its last step. It reads and writes only that workflow's
#: status row and recorded outputs, which row locks and the status check already
#: serialize (a second end waits for the first, then finds the workflow finished and
#: returns its answer); no application data. Under ``SERIALIZABLE`` its primary key
#: lookup took a predicate lock on the index page where every new workflow's row goes
#: (generated IDs are consecutive), and with 4 clients on hotel about 370 ends a second
#: failed and were retried (docs/BENCHMARKS.md, "The end of a workflow under READ
#: COMMITTED").
READ_COMMITTED_OPS = frozenset({"end_workflow"})
_BEGIN_READ_COMMITTED = "BEGIN ISOLATION LEVEL READ COMMITTED"

PLACEMENTS = ("db", "client")

#: Attempts for a unit whose connection broke; only units safe to repeat are retried.
CONNECTION_ATTEMPTS = 3


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
        # placement=db calls made from an event loop await a connection of its own pool.
        self._async_pools: dict[int, tuple[asyncio.AbstractEventLoop, AsyncConnectionPool]] = {}

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
        conn.execute(SERIALIZABLE_SQL)
        if self.placement == "client":
            for name in TEXT_TYPES:
                conn.adapters.register_loader(name, TextLoader)
        elif self.app is not None:
            # The first PL/Python call of a backend loads the runtime (tens of ms):
            # pay it when the pool opens the connection, not in a request.
            with contextlib.suppress(psycopg.Error):  # not installed yet: calls will say so
                conn.execute(*self._warm_call())

    async def _configure_async(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """:meth:`_configure` for a connection of an event loop's pool (placement=db)."""
        await conn.execute(SERIALIZABLE_SQL)
        if self.app is not None:
            with contextlib.suppress(psycopg.Error):
                await conn.execute(*self._warm_call())

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

    def _async_pool(self) -> AsyncConnectionPool:
        """The connection pool of the running event loop (made on first use there; the
        pools of loops that have closed since are closed)."""
        loop = asyncio.get_running_loop()
        found = self._async_pools.get(id(loop))
        if found is not None and found[0] is loop:
            return found[1]
        if self._closed:
            raise RuntimeError("this runtime is closed")
        for key, (other, pool) in list(self._async_pools.items()):
            if other.is_closed():
                del self._async_pools[key]
                pool.close_now()
        # As many calls at once as the runtime's threads would have made (max_workers):
        # more would only add conflicts on hot rows, and starve some of them.
        workers = getattr(self.executor, "_max_workers", self.pool_max)
        pool = AsyncConnectionPool(
            self.conninfo,
            max_size=min(self.pool_max, workers),
            timeout=self.pool_timeout,
            configure=self._configure_async,
        )
        self._async_pools[id(loop)] = (loop, pool)
        return pool

    def connect(self) -> psycopg.Connection[Any]:
        """A new connection outside the pool (for install), in autocommit mode."""
        try:
            return psycopg.connect(self.conninfo, autocommit=True, connect_timeout=10)
        except psycopg.OperationalError as exc:
            raise DatabaseUnavailableError(f"cannot connect to PostgreSQL: {exc}") from exc

    # -- transactions in this process (placement=client, and bookkeeping there) --------

    def transact(
        self, work: Callable[[Database], T], *, write: bool, read_committed: bool = False
    ) -> T:
        """Run ``work`` over a pooled connection in one transaction; retry conflicts.
        With ``read_committed``, the transaction is ``READ COMMITTED`` (see
        :data:`READ_COMMITTED_OPS`) instead of the connection's ``SERIALIZABLE``."""
        last: BaseException | None = None
        for attempt in retry_attempts():
            try:
                with self.pool().connection() as conn:
                    if read_committed:  # psycopg's BEGIN then names the level
                        conn.isolation_level = psycopg.IsolationLevel.READ_COMMITTED
                    try:
                        with conn.transaction():
                            return work(PsycopgDatabase(conn))
                    finally:
                        if (
                            read_committed
                            and conn.info.transaction_status == TransactionStatus.IDLE
                        ):
                            conn.isolation_level = None
            except TransactionConflict as exc:
                last = exc
            except psycopg.Error as exc:
                if is_conflict(exc):
                    last = exc
                elif is_connection_lost(exc):
                    raise DatabaseUnavailableError(f"PostgreSQL: {exc}") from exc
                else:
                    raise call_error(exc) from exc
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
        self,
        sql: str,
        params: tuple[Any, ...],
        *,
        repeatable: bool,
        rows: bool = False,
        read_committed: bool = False,
    ) -> Any:
        """Run a stored procedure's ``SELECT`` and decode its answer (with ``rows``, the
        answers of a set-returning one, as a list), retrying what is safe to retry.
        With ``read_committed``, the call is a ``READ COMMITTED`` transaction (see
        :data:`READ_COMMITTED_OPS`), sent with its ``BEGIN`` and ``COMMIT`` in one trip."""
        lost = 0
        for attempt in retry_attempts():
            try:
                pool = self._pool or self.pool()
                conn = pool.take()
                try:
                    if read_committed:
                        try:
                            with conn.pipeline():
                                conn.execute(_BEGIN_READ_COMMITTED)
                                cursor = conn.execute(sql, params, prepare=True)
                                conn.execute("COMMIT")
                        finally:
                            if conn.info.transaction_status != TransactionStatus.IDLE:
                                with contextlib.suppress(psycopg.Error):
                                    conn.rollback()
                    else:
                        cursor = conn.execute(sql, params, prepare=True)
                    if rows:
                        return [decode_answer(row[0]) for row in cursor.fetchall()]
                    row = cursor.fetchone()
                finally:
                    pool.give(conn)
                return decode_answer(row[0]) if row is not None else None
            except (psycopg.Error, PoolTimeout) as exc:
                lost = self._retry_after(exc, repeatable, lost)
            time.sleep(backoff_delay(attempt))
        raise TransactionConflictError(f"a call kept conflicting for {RETRY_SECONDS:.0f} s")

    async def _call_async(
        self,
        sql: str,
        params: tuple[Any, ...],
        *,
        repeatable: bool,
        read_committed: bool = False,
    ) -> Any:
        """:meth:`_call` on the running event loop's pool, awaiting the answer there."""
        lost = 0
        for attempt in retry_attempts():
            try:
                pool = self._async_pool()
                conn = await pool.take()
                try:
                    if read_committed:
                        try:
                            async with conn.pipeline():
                                await conn.execute(_BEGIN_READ_COMMITTED)
                                cursor = await conn.execute(sql, params, prepare=True)
                                await conn.execute("COMMIT")
                        finally:
                            if conn.info.transaction_status != TransactionStatus.IDLE:
                                with contextlib.suppress(psycopg.Error):
                                    await conn.rollback()
                    else:
                        cursor = await conn.execute(sql, params, prepare=True)
                    row = await cursor.fetchone()
                finally:
                    await pool.give(conn)
                return decode_answer(row[0]) if row is not None else None
            except (psycopg.Error, PoolTimeout) as exc:
                lost = self._retry_after(exc, repeatable, lost)
            await asyncio.sleep(backoff_delay(attempt))
        raise TransactionConflictError(f"a call kept conflicting for {RETRY_SECONDS:.0f} s")

    def _retry_after(self, exc: BaseException, repeatable: bool, lost: int) -> int:
        """Raise what a failed call must raise, or return the count of lost connections
        for its retry."""
        failure = self._call_failure(exc, repeatable, lost)
        if failure is not None:
            raise failure from exc
        return lost + int(not is_conflict(exc))

    def _call_failure(self, exc: BaseException, repeatable: bool, lost: int) -> Exception | None:
        """What to raise for a failed call, or ``None`` to retry it."""
        if is_conflict(exc):
            return None
        if is_connection_lost(exc):
            # A call whose connection broke may or may not have committed: repeat it only
            # if that is harmless (a recorded unit finds its output; a read changes nothing).
            if repeatable and lost + 1 < CONNECTION_ATTEMPTS:
                return None
            return DatabaseUnavailableError(f"PostgreSQL: {exc}")
        assert isinstance(exc, psycopg.Error)
        return call_error(exc)

    def _run_unit(self, unit: UnitSpec, request: UnitRequest) -> UnitOutcome:
        """Run a unit: in its stored procedure (``db``) or here over a connection."""
        if self.placement == "client":
            return super()._run_unit(unit, request)
        sql, params = self._unit_call(unit, request)
        return unit_outcome(self._call(sql, params, repeatable=unit.read_only or unit.recorded))

    def _awaitable_unit(self) -> Callable[[UnitSpec, UnitRequest], Awaitable[UnitOutcome]] | None:
        return self._run_unit_async if self.placement == "db" else None

    async def _run_unit_async(self, unit: UnitSpec, request: UnitRequest) -> UnitOutcome:
        sql, params = self._unit_call(unit, request)
        repeatable = unit.read_only or unit.recorded
        return unit_outcome(await self._call_async(sql, params, repeatable=repeatable))

    def system(self, op: Callable[..., T], *args: Any, write: bool, **kwargs: Any) -> T:
        """Run a bookkeeping function: in the system procedure (``db``) or here."""
        committed = op.__name__ in READ_COMMITTED_OPS
        if self.placement == "client":
            return self.transact(
                lambda db: op(db, *args, **kwargs), write=write, read_committed=committed
            )
        sql, params = self._system_call(op, args, kwargs)
        return decode_result(self._call(sql, params, repeatable=True, read_committed=committed))  # type: ignore[no-any-return]

    async def system_async(self, op: Callable[..., T], *args: Any, write: bool, **kwargs: Any) -> T:
        """:meth:`system`, awaited on the event loop (placement=db)."""
        if self.placement == "client":
            return await super().system_async(op, *args, write=write, **kwargs)
        sql, params = self._system_call(op, args, kwargs)
        committed = op.__name__ in READ_COMMITTED_OPS
        return decode_result(  # type: ignore[no-any-return]
            await self._call_async(sql, params, repeatable=True, read_committed=committed)
        )

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
        """Close the connection pools."""
        with self._pool_lock:
            self._closed = True
            pool, self._pool = self._pool, None
            loops, self._async_pools = list(self._async_pools.values()), {}
        if pool is not None:
            pool.close()
        for _, async_pool in loops:
            async_pool.close_now()

    async def aclose(self) -> None:
        """:meth:`close`, closing the running loop's connections on the loop."""
        found = self._async_pools.pop(id(asyncio.get_running_loop()), None)
        if found is not None:
            await found[1].close()
        self.close()
