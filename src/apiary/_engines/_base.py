"""The engine interface: what a database engine provides to the runtime.

An engine opens transactions and runs work inside them, retrying serialization conflicts.
The work is always a function of the execution core (:mod:`apiary._execution`) applied to
the engine's :class:`~apiary._database.Database` adapter: running a unit, or one piece of
workflow bookkeeping. Engines differ only in where that function runs (in-process over a
connection, or inside the database server) and how transactions are opened.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from apiary._app import AppInfo
from apiary._bookkeeping import StatusRowExists
from apiary._capture import CapturePlan, stage_rows
from apiary._database import Database, Statement
from apiary._execution import run_unit
from apiary._units import UnitOutcome, UnitRequest, UnitSpec

T = TypeVar("T")

log = logging.getLogger("apiary.trace")

#: Read-only units' traces wait at most this many seconds (or :data:`FLUSH_ROWS` traces)
#: before they are staged, in one transaction for the lot.
FLUSH_DELAY = 0.25
FLUSH_ROWS = 256


@dataclass(frozen=True)
class DeclaredStatement:
    """A statement and the function that declares it (for install-time validation)."""

    function: str
    statement: Statement


class Engine(ABC):
    """A database engine: transactions, units and bookkeeping, sync and async."""

    #: Short engine name, e.g. ``"sqlite"``.
    name = ""
    #: The data is spread over partitions (:mod:`apiary._engines.cluster`).
    partitioned = False

    def __init__(self, executor: concurrent.futures.Executor) -> None:
        self.executor = executor
        self.functions: Mapping[str, Callable[..., Any]] = {}
        self.plans: Mapping[str, CapturePlan] | None = None
        self._traces = _TraceBuffer(self)

    def bind(
        self,
        app: AppInfo,
        functions: Mapping[str, Callable[..., Any]],
        plans: Mapping[str, CapturePlan] | None = None,
    ) -> None:
        """Set the app, its functions (name to Python function) that units call, and the
        capture plans of its statements (by text) when tracing."""
        self.functions = functions
        self.plans = plans

    @abstractmethod
    def install(
        self,
        app: AppInfo,
        statements: Sequence[DeclaredStatement],
        units: Sequence[UnitSpec] = (),
        plans: Mapping[str, CapturePlan] | None = None,
    ) -> None:
        """Create system tables and the app's schema; check every statement compiles.

        ``statements`` include the variants tracing runs. ``units`` are every transaction
        unit the app can run and ``plans`` the capture plans (engines that compile units
        ahead of time, like PostgreSQL's stored procedures, need them).
        """

    @abstractmethod
    def transact(self, work: Callable[[Database], T], *, write: bool) -> T:
        """Run ``work`` in one transaction (retrying conflicts) and return its result."""

    def run_unit(self, unit: UnitSpec, request: UnitRequest) -> UnitOutcome:
        """Run a transaction unit as one transaction.

        A read-only unit's trace comes back with its outcome; it is staged shortly after,
        with others (:meth:`flush_traces`), so that the unit's transaction stays read-only.
        """
        try:
            outcome = self._run_unit(unit, request)
        except StatusRowExists:
            # A workflow of one unit ran at once and found a status row: that of a run of
            # the same ID before it. Run it again the careful way, which returns that
            # run's answer (or refuses an ID that names another workflow).
            request.look_first = True
            outcome = self._run_unit(unit, request)
        if outcome.trace is not None:
            self._traces.add(outcome.trace)
        return outcome

    def _run_unit(self, unit: UnitSpec, request: UnitRequest) -> UnitOutcome:
        """Run a unit in one transaction (engines that run it elsewhere override this)."""
        functions, plans = self.functions, self.plans
        return self.transact(
            lambda db: run_unit(db, unit, functions, request, plans), write=unit.writes
        )

    def partitions(self) -> Sequence[Engine]:
        """The engines of the databases holding data: this one, or a cluster's partitions
        (the spooler and recovery visit each)."""
        return [self]

    def home(self, workflow_id: str) -> Engine:
        """The engine of the database holding a workflow's status row."""
        return self

    def flush_traces(self) -> int:
        """Stage the read-only units' traces still held here now; return how many."""
        return self._traces.flush()

    def system(self, op: Callable[..., T], *args: Any, write: bool, **kwargs: Any) -> T:
        """Run a bookkeeping function of the execution core in one transaction."""
        return self.transact(lambda db: op(db, *args, **kwargs), write=write)

    def _awaitable_unit(self) -> Callable[[UnitSpec, UnitRequest], Awaitable[UnitOutcome]] | None:
        """An engine that can await a unit on the event loop returns its ``_run_unit``
        twin here; the others run :meth:`run_unit` on the executor."""
        return None

    async def run_unit_async(self, unit: UnitSpec, request: UnitRequest) -> UnitOutcome:
        """:meth:`run_unit` for an event loop."""
        loop = asyncio.get_running_loop()
        run = self._awaitable_unit()
        if run is None:
            return await loop.run_in_executor(self.executor, self.run_unit, unit, request)
        try:
            outcome = await run(unit, request)
        except StatusRowExists:  # as in run_unit
            request.look_first = True
            outcome = await run(unit, request)
        if outcome.trace is not None and self._traces.add(outcome.trace, flush=False):
            await loop.run_in_executor(self.executor, self._traces.flush)
        return outcome

    async def system_async(self, op: Callable[..., T], *args: Any, write: bool, **kwargs: Any) -> T:
        """:meth:`system` for an event loop (on the executor unless overridden)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self.executor, lambda: self.system(op, *args, write=write, **kwargs)
        )

    async def aclose(self) -> None:
        """:meth:`close` from an event loop (engines with async connections override it)."""
        self.close()

    @abstractmethod
    def close(self) -> None:
        """Release connections. The engine cannot be used afterwards."""


class _TraceBuffer:
    """Read-only units' traces on their way to the staging table.

    The first trace added starts a timer of :data:`FLUSH_DELAY` seconds; the traces held
    when it fires, or as soon as :data:`FLUSH_ROWS` are held, are staged in one write
    transaction. Traces that cannot be staged (the database is down) are kept and tried
    again at the next flush.
    """

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._lock = threading.Lock()
        self._flushing = threading.Lock()
        self._rows: list[Sequence[Any]] = []
        self._timer: threading.Timer | None = None

    def add(self, row: Sequence[Any], *, flush: bool = True) -> bool:
        """Hold a trace; stage what is held now if that makes :data:`FLUSH_ROWS` (or,
        with ``flush=False``, return true so that the caller does, off its event loop)."""
        with self._lock:
            self._rows.append(row)
            full = len(self._rows) >= FLUSH_ROWS
            if self._timer is None and not full:
                self._timer = threading.Timer(FLUSH_DELAY, self._on_timer)
                self._timer.daemon = True
                self._timer.start()
        if full and flush:
            self.flush()
        return full

    def _on_timer(self) -> None:
        try:
            self.flush()
        except Exception as exc:  # kept; the next add or flush tries again
            log.warning("staging read-only traces failed, will retry: %s", exc)

    def flush(self) -> int:
        with self._flushing:  # one flush at a time keeps the traces in order
            with self._lock:
                rows, self._rows = self._rows, []
                timer, self._timer = self._timer, None
            if timer is not None:
                timer.cancel()
            if not rows:
                return 0
            try:
                return self._engine.transact(lambda db: stage_rows(db, rows), write=True)
            except BaseException:
                with self._lock:
                    self._rows[:0] = rows
                raise
