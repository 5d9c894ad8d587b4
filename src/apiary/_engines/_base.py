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
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from apiary._app import AppInfo
from apiary._capture import CapturePlan
from apiary._database import Database, Statement
from apiary._execution import UnitOutcome, UnitRequest, UnitSpec, run_unit

T = TypeVar("T")


@dataclass(frozen=True)
class DeclaredStatement:
    """A statement and the function that declares it (for install-time validation)."""

    function: str
    statement: Statement


class Engine(ABC):
    """A database engine: transactions, units and bookkeeping, sync and async."""

    #: Short engine name, e.g. ``"sqlite"``.
    name = ""

    def __init__(self, executor: concurrent.futures.Executor) -> None:
        self.executor = executor
        self.functions: Mapping[str, Callable[..., Any]] = {}
        self.plans: Mapping[str, CapturePlan] | None = None

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
        """Run a transaction unit as one transaction."""
        functions, plans = self.functions, self.plans
        return self.transact(
            lambda db: run_unit(db, unit, functions, request, plans), write=unit.writes
        )

    def system(self, op: Callable[..., T], *args: Any, write: bool, **kwargs: Any) -> T:
        """Run a bookkeeping function of the execution core in one transaction."""
        return self.transact(lambda db: op(db, *args, **kwargs), write=write)

    async def run_unit_async(self, unit: UnitSpec, request: UnitRequest) -> UnitOutcome:
        """:meth:`run_unit` for an event loop (on the executor unless overridden)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, self.run_unit, unit, request)

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
