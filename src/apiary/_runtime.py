"""``Runtime``: an app bound to a database, running workflows and functions."""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import logging
import os
import socket
import threading
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from apiary import _bookkeeping, _codec
from apiary._app import App, WorkflowDef
from apiary._binding import Binder
from apiary._capture import CapturePlan

if TYPE_CHECKING:
    from apiary._tracing.spool import Spooler
    from apiary._tracing.spool_process import SpoolerProcess
from apiary._database import Statement
from apiary._engines import DeclaredStatement, Engine, open_engine
from apiary._errors import (
    ApiaryError,
    FunctionError,
    InvalidArgumentsError,
    NotFoundError,
    RegistrationError,
)
from apiary._partitioning import assign_routes, check_tables
from apiary._plan import RECORD_MODES, RecordMode, WorkflowPlan, call_unit, compile_plan
from apiary._scheduler import WorkflowRun
from apiary._units import UnitRequest, UnitSpec

_PING = Statement("SELECT 1", system=True)

log = logging.getLogger("apiary.trace")

#: The default of ``Runtime(trace_store=...)``: a file beside a SQLite database.
DEFAULT_STORE = "<default>"
#: Seconds between the background spooler's rounds.
SPOOL_INTERVAL = 1.0


def _trace_store(url: str) -> str | None:
    """``<database>-trace.duckdb`` beside a SQLite database file; none for other engines."""
    if not url.startswith("sqlite:"):
        return None
    path = urlsplit(url).path
    path = path[1:] if path.startswith("/") else path  # as the SQLite engine reads it
    return f"{path.removesuffix('.db')}-trace.duckdb" if path else None


#: Longest accepted workflow ID, in characters.
MAX_WORKFLOW_ID = 256


@dataclass(frozen=True)
class WorkflowStatus:
    """A workflow's status row: ``PENDING``, ``SUCCESS`` or ``ERROR``.

    ``output`` is set on success; ``error`` (``{"type", "message", "function"}``) on error.
    """

    workflow_id: str
    name: str
    status: str
    output: Any
    error: dict[str, Any] | None


class Runtime:
    """An :class:`App` bound to a database: install it, run its workflows and functions.

    Args:
        app: the application.
        url: ``sqlite:///path.db`` (embedded; relative path) or ``sqlite:////abs/path.db``.
        record: ``"sfr"`` (default) records the outputs selective function recording
            selects; ``"all"`` records every unit (for comparison); ``"none"`` records
            nothing and gives up exactly-once (benchmarks only).
        max_workers: threads for independent branches and async calls.
        owner: the name this runtime writes into the status rows of workflows it starts.
        pin_version: resuming a ``PENDING`` workflow that started on another version of
            the app raises ``VersionMismatch`` instead of finishing it with this code (the
            frontend then finishes it on the runtime of that version). Off by default: an
            application restarted with changed code finishes its workflows with that code.
        trace: capture every function execution and every row it reads or writes, in
            its own transaction, into the trace staging table (``docs/TRACING.md``).
        trace_store: the DuckDB file a background spooler moves staged traces into, every
            second, from a process of its own (so that storing traces takes no time
            from this process's threads); the file is opened for each round, so
            ``apiary trace`` can read it between rounds. By
            default ``<database>-trace.duckdb`` beside a SQLite database, and none for
            PostgreSQL (a frontend, or ``apiary trace spool``, spools there). ``None``:
            this runtime does not spool.

    A runtime is safe to use from many threads at once. Close it (or use ``with``).
    """

    def __init__(
        self,
        app: App,
        url: str = "sqlite:///apiary.db",
        *,
        record: RecordMode = "sfr",
        max_workers: int = 8,
        owner: str | None = None,
        pin_version: bool = False,
        trace: bool = True,
        trace_store: str | None = DEFAULT_STORE,
    ) -> None:
        if not isinstance(app, App):
            raise TypeError(f"Runtime needs an apiary.App, not {type(app).__name__}")
        if record not in RECORD_MODES:
            raise ValueError(f"record must be one of {RECORD_MODES}, not {record!r}")
        self.app = app
        self.url = url
        self.record: RecordMode = record
        self.pin_version = pin_version
        self.trace = trace
        # Workflow and function names are unique within an app, so one table serves both.
        self._binders: dict[str, Binder] = {
            name: Binder(defn) for name, defn in app.workflows.items()
        }
        self._binders.update({name: Binder(defn) for name, defn in app.functions.items()})
        self.version = app.version()
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=max_workers, thread_name_prefix="apiary"
        )
        try:
            self._engine: Engine = open_engine(url, self._pool)
            if (
                self._engine.partitioned
                and not app.partitioned
                and len(self._engine.partitions()) > 1
                and (app.schemas or app.functions)
            ):
                raise RegistrationError(
                    f"app {app.name!r} runs on a cluster but declares no partitioning: "
                    "declare each table with app.partition(table, by=column) or "
                    "app.replicate(table) (docs/SCALING.md)"
                )
            # Compiling every plan now finds each function's statements, so a misdeclared
            # app fails here, before any database work (a partitioned app's units are
            # checked and routed too, on every engine).
            self._fuse = not self._engine.partitioned
            if app.partitioned:
                check_tables(app)
            self._plans: dict[str, WorkflowPlan] = {
                name: self._compile(wf, record) for name, wf in app.workflows.items()
            }
            self._call_units: dict[str, UnitSpec] = {
                name: call_unit(defn) for name, defn in app.functions.items()
            }
            assign_routes(app, list(self._call_units.values()))
        except BaseException:
            self._pool.shutdown(wait=False)
            if hasattr(self, "_engine"):
                self._engine.close()
            raise
        self._captures = capture_plans(app) if trace else None
        self._engine.bind(app.info(), app.callables(), self._captures)
        self.trace_store = _trace_store(url) if trace_store == DEFAULT_STORE else trace_store
        self._spooler: SpoolerProcess | None = None
        self._spooler_lock = threading.Lock()
        self._client_id: int | None = None
        self._counter = itertools.count(1)
        self._id_lock = threading.Lock()

    # -- setup -----------------------------------------------------------------------

    def install(self) -> None:
        """Create the system tables and the app's schema; check every statement compiles.

        Safe to run again: it creates only what is missing.
        """
        declared = [
            DeclaredStatement(name, stmt)
            for name, defn in self.app.functions.items()
            for stmt in defn.statements
        ]
        # Tracing runs variants of the statements: they must compile too.
        captures = self._captures or {}
        declared += [
            DeclaredStatement(d.function, capture.variant)
            for d in list(declared)
            if (capture := captures.get(d.statement.text)) is not None
            and capture.variant is not None
        ]
        # Every unit under every record mode, so runtimes of any mode share one install.
        units = list(self._call_units.values())
        for mode in RECORD_MODES:
            for workflow in self.app.workflows.values():
                plan = self._plans[workflow.name] if mode == self.record else None
                plan = plan or self._compile(workflow, mode)
                units += [task.unit for task in plan.tasks if task.unit is not None]
        self._engine.install(self.app.info(), declared, units, self._captures)
        self._start_spooling()

    def _compile(self, workflow: WorkflowDef, record: RecordMode) -> WorkflowPlan:
        plan = compile_plan(self.app, workflow, record, fuse=self._fuse)
        assign_routes(self.app, [task.unit for task in plan.tasks if task.unit is not None])
        return plan

    # -- workflows -------------------------------------------------------------------

    def _prepare(self, name: str, workflow_id: str | None, args: Mapping[str, Any]) -> WorkflowRun:
        workflow = self.app.workflows.get(name)
        if workflow is None:
            known = ", ".join(sorted(self.app.workflows)) or "none"
            raise NotFoundError(f"app {self.app.name!r} has no workflow {name!r} (known: {known})")
        params = self._binders[name](args)
        plan = self._plans[name]
        if workflow_id is None:
            workflow_id = self._next_id()
        elif not isinstance(workflow_id, str) or not workflow_id or "\x00" in workflow_id:
            raise InvalidArgumentsError(
                f"workflow_id must be a non-empty str without NUL, not {workflow_id!r}"
            )
        elif len(workflow_id) > MAX_WORKFLOW_ID:
            raise InvalidArgumentsError(
                f"workflow_id is {len(workflow_id)} characters; the limit is {MAX_WORKFLOW_ID}"
            )
        start: dict[str, Any] | None = None
        if plan.status_row:
            start = {
                "name": name,
                "inputs": _codec.canonical_dumps(params),
                "owner": self.owner,
                "version": self.version,
            }
            if self.pin_version:
                start["pinned"] = True
        return WorkflowRun(
            plan,
            self._engine,
            self._engine.functions,
            workflow_id,
            params,
            start,
            self._pool,
            trace=self.trace,
        )

    def run(self, name: str, /, *, workflow_id: str | None = None, **args: Any) -> Any:
        """Run a workflow to completion and return its output.

        ``workflow_id`` names the run: running an ID that already finished returns the
        same output (or raises the same :class:`FunctionError`) without executing
        anything; an ID that is still ``PENDING`` is resumed. Without an ID, one is made.

        Raises:
            NotFoundError: no workflow ``name``.
            InvalidArgumentsError: arguments do not match its parameters or are not JSON.
            WorkflowConflictError: ``workflow_id`` names a run with other arguments.
            FunctionError: a function or step raised; the workflow ended ``ERROR``.
        """
        self._start_spooling()
        return self._prepare(name, workflow_id, args).run()

    async def run_async(self, name: str, /, *, workflow_id: str | None = None, **args: Any) -> Any:
        """:meth:`run` for an event loop."""
        self._start_spooling()
        return await self._prepare(name, workflow_id, args).run_async()

    def call(self, name: str, /, **args: Any) -> Any:
        """Run one function as its own transaction, outside any workflow, and return its output.

        A direct call is not recorded: calling again runs it again.
        """
        self._start_spooling()
        unit, request = self._call_request(name, args)
        outcome = self._engine.run_unit(unit, request)
        return (outcome.outputs or {})[name]

    async def call_async(self, name: str, /, **args: Any) -> Any:
        """:meth:`call` for an event loop."""
        self._start_spooling()
        unit, request = self._call_request(name, args)
        outcome = await self._engine.run_unit_async(unit, request)
        return (outcome.outputs or {})[name]

    def _call_request(self, name: str, args: Mapping[str, Any]) -> tuple[UnitSpec, UnitRequest]:
        defn = self.app.functions.get(name)
        if defn is None:
            known = ", ".join(sorted(self.app.functions)) or "none"
            raise NotFoundError(f"app {self.app.name!r} has no function {name!r} (known: {known})")
        params = self._binders[name](args)
        call_id = f"{self._next_id()}/{name}"
        request = UnitRequest(None, params, call_id=call_id, trace=self.trace)
        return self._call_units[name], request

    def status(self, workflow_id: str) -> WorkflowStatus:
        """The status row of a workflow run. Raises :class:`NotFoundError` if there is none.

        Read-only workflows write no status row (nothing needs recording).
        """
        if (
            not isinstance(workflow_id, str)
            or not 0 < len(workflow_id) <= MAX_WORKFLOW_ID
            or "\x00" in workflow_id
        ):
            # run() refuses such IDs, so none names a run; and PostgreSQL cannot even
            # compare a string with NUL in it.
            raise NotFoundError(f"no workflow with ID {workflow_id!r}")
        record = self._engine.system(_bookkeeping.get_workflow, workflow_id, write=False)
        if record is None:
            raise NotFoundError(f"no workflow with ID {workflow_id!r}")
        output = _codec.loads(record.output) if record.output is not None else None
        error = _codec.loads(record.error) if record.error is not None else None
        return WorkflowStatus(record.workflow_id, record.name, record.status, output, error)

    def ping(self) -> None:
        """Check that the database answers (raises :class:`DatabaseUnavailableError`)."""
        self._engine.transact(lambda db: db.query(_PING, ()), write=False)

    def recover(self) -> list[str]:
        """Finish every ``PENDING`` workflow (left by a runtime that died); return their IDs.

        Each is replayed from the start under its ID: recorded units return their
        outputs, the rest run, so every function takes effect exactly once. Workflows
        ending in an application error count as finished.
        """
        finished: list[str] = []
        failures: list[tuple[str, BaseException]] = []
        for workflow_id in self._engine.system(_bookkeeping.list_pending, write=False):
            record = self._engine.system(_bookkeeping.get_workflow, workflow_id, write=False)
            if record is None or record.finished:
                continue  # finished meanwhile by another runtime
            if record.name not in self.app.workflows:
                failures.append(
                    (workflow_id, NotFoundError(f"workflow {record.name!r} is not in this app"))
                )
                continue
            try:
                self.run(record.name, workflow_id=workflow_id, **_codec.loads(record.inputs))
            except ApiaryError as exc:
                if not isinstance(exc, FunctionError):
                    failures.append((workflow_id, exc))
                    continue
            finished.append(workflow_id)
        if self._engine.partitioned:
            self.forget_outputs()
        if failures:
            first_id, first = failures[0]
            raise type(first)(
                f"recovered {len(finished)} workflows; {len(failures)} could not finish, "
                f"first {first_id!r}: {first}"
            ) from first
        return finished

    def forget_outputs(self, retention: float | None = None) -> int:
        """On a cluster: delete the recorded outputs that units of finished workflows
        left on partitions other than their workflow's (kept ``retention`` seconds,
        by default an hour, after the workflow ended); returns how many. Elsewhere the
        end of a workflow deletes its outputs at once, and this returns 0.

        A frontend does this every five minutes; an application running a ``Runtime``
        on a cluster should call it now and then (``recover()`` does too).
        """
        forget = getattr(self._engine, "forget_outputs", None)
        if forget is None:
            return 0
        return int(forget() if retention is None else forget(retention))

    # -- identity --------------------------------------------------------------------

    def _next_id_ready(self) -> str | None:
        """The next generated workflow ID, or ``None`` while the client ID is not issued
        yet (then :meth:`_next_id` asks the database, which blocks)."""
        if self._client_id is None:
            return None
        return f"{self._client_id}-{next(self._counter)}"

    def _next_id(self) -> str:
        if self._client_id is None:
            with self._id_lock:
                if self._client_id is None:
                    self._client_id = self._engine.system(_bookkeeping.new_client_id, write=True)
        ready = self._next_id_ready()
        assert ready is not None
        return ready

    def explain(self, name: str) -> dict[str, Any]:
        """The DAG of a workflow under this runtime's record mode (see ``apiary explain``)."""
        from apiary._plan import explain

        if name not in self._plans:
            raise NotFoundError(f"app {self.app.name!r} has no workflow {name!r}")
        return explain(self._plans[name])

    # -- lifetime --------------------------------------------------------------------

    # -- tracing ---------------------------------------------------------------------

    def _start_spooling(self) -> None:
        """Start the background spooler (once), if tracing spools somewhere."""
        if self._spooler is not None or not self.trace or not self.trace_store:
            return
        with self._spooler_lock:
            if self._spooler is None:
                from apiary._tracing.spool_process import SpoolerProcess

                spooler = SpoolerProcess(
                    self.url, self.trace_store, self.app.schemas, SPOOL_INTERVAL
                )
                spooler.start()
                self._spooler = spooler

    def _make_spooler(self, path: str) -> Spooler:
        from apiary._tracing.spool import Spooler
        from apiary._tracing.store import TraceStore
        from apiary._tracing.tables import tables_of

        return Spooler(self._engine, TraceStore(path, tables_of(self.app.schemas)))

    def flush_traces(self) -> int:
        """Stage now the traces of read-only units this runtime still holds (they are
        staged within a quarter of a second anyway); returns how many.

        Call it before spooling from another process (``apiary trace spool``) to be sure
        that those traces are included.
        """
        return self._engine.flush_traces()

    def spool(self, store: str | None = None, *, wait: float = 30.0) -> int:
        """Move every staged trace into the DuckDB ``store`` now (default: this runtime's
        ``trace_store``); returns how many units' traces moved.

        Waits up to ``wait`` seconds for the store while another process (such as the
        background spooler) has it, then raises :class:`~apiary.DatabaseUnavailableError`.
        """
        path = store or self.trace_store
        if not path:
            raise ValueError("no trace store: pass a path, or give the runtime trace_store")
        self.flush_traces()
        spooler = self._make_spooler(path)
        try:
            spooler.store.open(wait)  # waits for the background spooler's round, if any
            spooler.spool_all()
            return spooler.store.units_stored
        finally:
            spooler.store.close()

    def close(self) -> None:
        """Release the database connections and worker threads (spooling what is staged)."""
        self._flush_traces()
        spooler, self._spooler = self._spooler, None
        if spooler is not None:
            spooler.stop()  # it spools a last round
        self._pool.shutdown(wait=True)
        self._engine.close()

    def _flush_traces(self) -> None:
        try:
            self._engine.flush_traces()
        except Exception as exc:  # closing must not fail for want of a trace
            log.warning("read-only units' traces could not be staged at close: %s", exc)

    async def aclose(self) -> None:
        """:meth:`close` from an event loop: also closes the loop's async connections."""
        await asyncio.get_running_loop().run_in_executor(None, self._flush_traces)
        await self._engine.aclose()
        self._pool.shutdown(wait=False)

    def __enter__(self) -> Runtime:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> Runtime:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return f"<apiary Runtime {self.app.name} on {self.url}>"


def capture_plans(app: App) -> dict[str, CapturePlan]:
    """The capture plan of every statement of the app, by text (tracing)."""
    from apiary._tracing.rewrite import plan_capture
    from apiary._tracing.tables import tables_of

    tables = tables_of(app.schemas)
    plans: dict[str, CapturePlan] = {}
    for defn in app.functions.values():
        for stmt in defn.statements:
            if stmt.text not in plans:
                plans[stmt.text] = plan_capture(stmt.text, tables)
    return plans
