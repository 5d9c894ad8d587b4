"""``direct``: the conventional code called in the benchmark's own process.

The in-process counterpart of ``rpc-baseline``, as ``apiary-pg`` is of ``apiary-http``: the
same handlers (:class:`apiary._bench.rpc_service.Service`: interactive ``SERIALIZABLE``
transactions, a round trip per statement, conflicts retried, the workflow orchestrated
in the handler, the workloads' own SQL), called directly by the client threads over a
synchronous psycopg pool that they share, as they share ``apiary-pg``'s ``Runtime``. No
HTTP, no event loop, no exactly-once, no tracing.

The handlers are coroutines. Over synchronous connections none of their ``await`` ever
suspends, so one ``send`` runs a call to its end (:func:`run_now`): one implementation
of every operation serves both baselines.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Coroutine
from typing import Any

from apiary._bench.peers import install_schema
from apiary._bench.rpc_service import Service
from apiary._bench.systems import Database, Runner, System
from apiary._bench.workloads import Workload


def run_now(call: Coroutine[Any, Any, Any]) -> Any:
    """Run a coroutine that never suspends to its end, without an event loop."""
    try:
        call.send(None)
    except StopIteration as done:
        return done.value
    call.close()
    name = getattr(call, "__qualname__", repr(call))
    raise RuntimeError(f"{name} waited on an event loop; it cannot run directly")


async def _sleep(seconds: float) -> None:
    time.sleep(seconds)


class _Cursor:
    """A synchronous cursor with the awaitable fetches the handlers use."""

    __slots__ = ("_cursor",)

    def __init__(self, cursor: Any) -> None:
        self._cursor = cursor

    @property
    def rowcount(self) -> int:
        return int(self._cursor.rowcount)

    async def fetchone(self) -> Any:
        return self._cursor.fetchone()

    async def fetchall(self) -> list[Any]:
        rows: list[Any] = self._cursor.fetchall()
        return rows


class _Connection:
    """A synchronous connection with the awaitable calls the handlers use."""

    __slots__ = ("_conn",)

    def __init__(self, conn: Any) -> None:
        self._conn = conn

    async def execute(self, sql: str, params: Any = None) -> _Cursor:
        return _Cursor(self._conn.execute(sql, params))

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[None]:
        with self._conn.transaction():
            yield


class _Pool:
    """A synchronous ``psycopg_pool.ConnectionPool`` lending :class:`_Connection`."""

    __slots__ = ("_pool",)

    def __init__(self, pool: Any) -> None:
        self._pool = pool

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[_Connection]:
        with self._pool.connection() as conn:
            yield _Connection(conn)


class DirectCalls(System):
    """The RPC baseline's handlers in this process, over a pool shared by the clients."""

    def __init__(self, name: str, database: Database, workload: Workload) -> None:
        super().__init__(name, database)
        self.workload = workload
        self.pool: Any = None

    def install(self) -> None:
        install_schema(self.workload, self.database)

    def open(self, clients: int) -> None:
        from psycopg import IsolationLevel
        from psycopg_pool import ConnectionPool

        def configure(conn: Any) -> None:
            conn.autocommit = True  # conn.transaction() sends BEGIN and COMMIT
            conn.isolation_level = IsolationLevel.SERIALIZABLE

        self.pool = ConnectionPool(
            self.database.url,
            min_size=clients,
            max_size=max(clients, 16),
            configure=configure,
            open=False,
        )
        self.pool.open(wait=True)

    def runner(self) -> Runner:
        service = Service(_Pool(self.pool), sleep=_sleep)

        def run(workflow: str, args: dict[str, Any]) -> Any:
            return run_now(getattr(service, workflow)(**args))

        return run

    def close(self) -> None:
        pool, self.pool = self.pool, None
        if pool is not None:
            pool.close()
