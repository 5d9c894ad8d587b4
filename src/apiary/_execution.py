"""The execution core: runs one transaction unit against a tiny database adapter.

A *transaction unit* is one function, or the functions of one ``apiary.transaction()``
group, run as a single ACID transaction. Every engine and placement runs units through
:func:`run_unit` here, inside a transaction the engine opened:

* SQLite: in-process, between ``BEGIN [IMMEDIATE]`` and ``COMMIT``;
* PostgreSQL, ``placement=db``: inside a PL/Python stored procedure;
* PostgreSQL, ``placement=client``: in the application process, over a connection.

The core is this module with :mod:`apiary._units` (what a compiled unit and a call of it
are), :mod:`apiary._database` (statements, the adapter protocol, retries),
:mod:`apiary._bookkeeping` (status rows and recorded outputs), :mod:`apiary._capture`
(tracing), ``_codec`` and ``_errors``. It imports only the standard library, because
the PostgreSQL engine ships this very source into the database, where only the
server's own Python exists.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from apiary import _codec
from apiary._bookkeeping import (
    begin_workflow,
    check_workflow,
    end_workflow,
    finish_new_workflow,
    lookup_local,
    lookup_output,
    record_output,
)
from apiary._capture import ROWS, CapturePlan, UnitTrace
from apiary._database import Database, Statement, TransactionConflict
from apiary._errors import DatabaseUnavailableError, FunctionError, RegistrationError
from apiary._units import UnitOutcome, UnitRequest, UnitSpec, resolve

__all__ = ["StepContext", "TxContext", "run_unit"]


# --------------------------------------------------------------------------------------
# Contexts handed to application code
# --------------------------------------------------------------------------------------


class TxContext:
    """The context of a transactional function: its only way to reach the database.

    ``query``/``query_one``/``execute`` accept only the :class:`Statement` objects the
    function declared (referenced from its code); anything else is refused, because the
    registrar classified the function read-only or writing from exactly those.

    A statement that fails fails the whole function, even if its code catches the error:
    PostgreSQL aborts the transaction at the first failed statement, PL/Python rolls back
    just that statement, SQLite keeps the transaction going; failing the function in every
    case makes all engines behave alike and never commits a transaction missing a write.
    """

    __slots__ = (
        "_allowed",
        "_db",
        "_function",
        "_number",
        "_plans",
        "_trace",
        "failed",
        "invocation_id",
        "poisoned",
        "workflow_id",
    )

    def __init__(
        self,
        db: Database,
        workflow_id: str | None,
        invocation_id: str | None,
        allowed: frozenset[str] | None = None,
        function: str = "",
        trace: UnitTrace | None = None,
        plans: Mapping[str, CapturePlan] | None = None,
        number: int = 0,
    ) -> None:
        self._db = db
        self._allowed = allowed
        self._function = function
        self._trace = trace
        self._plans = plans
        self._number = number
        self.workflow_id = workflow_id
        self.invocation_id = invocation_id
        #: A serialization conflict happened: the unit must be retried.
        self.poisoned = False
        #: The first statement error, which fails the function even if it was caught.
        self.failed: BaseException | None = None

    def _check(self, stmt: Any) -> Statement:
        if type(stmt) is not Statement:
            if isinstance(stmt, str):
                raise TypeError(
                    f"{self._function}: raw SQL strings are refused; declare the statement "
                    f"at module level with apiary.sql(...) and pass that: {stmt[:80]!r}"
                )
            raise TypeError(
                f"{self._function}: expected an apiary.Statement, got {type(stmt).__name__}"
            )
        if self._allowed is not None and stmt.text not in self._allowed:
            raise RegistrationError(
                f"function {self._function!r} ran statement {stmt.text!r}, which the registrar "
                "did not find in its code; reference each statement by name from the function "
                "(or a module-level helper it calls) so it can be classified"
            )
        return stmt

    def _run(self, stmt: Statement, params: Sequence[Any], want_rows: bool) -> Any:
        db = self._db
        try:
            trace = self._trace
            plan = None if trace is None or self._plans is None else self._plans.get(stmt.text)
            if plan is None or trace is None:
                return db.query(stmt, params) if want_rows else db.execute(stmt, params)
            if plan.mode == ROWS and plan.variant is not None:
                found = db.query(plan.variant, params)  # one row per row read or written
                rows = trace.rows(self._number, stmt.text, plan, found)
                return rows if want_rows else len(found)
            result = db.query(stmt, params) if want_rows else db.execute(stmt, params)
            trace.statement(self._number, stmt.text, plan)
            return result
        except TransactionConflict:
            self.poisoned = True
            raise
        except Exception as exc:
            if self.failed is None:
                self.failed = exc
            raise

    def query(self, stmt: Statement, *params: Any) -> list[tuple[Any, ...]]:
        """Run a declared statement and return all its rows as tuples."""
        self._check(stmt)
        rows: list[tuple[Any, ...]] = self._run(stmt, params, True)
        return rows

    def query_one(self, stmt: Statement, *params: Any) -> tuple[Any, ...] | None:
        """Run a declared statement and return its first row, or ``None``."""
        rows = self.query(stmt, *params)
        return rows[0] if rows else None

    def execute(self, stmt: Statement, *params: Any) -> int:
        """Run a declared statement for its effect; return the number of rows affected."""
        self._check(stmt)
        count: int = self._run(stmt, params, False)
        return count

    def __repr__(self) -> str:
        return f"TxContext(invocation_id={self.invocation_id!r})"


class StepContext:
    """The context of a step (a non-transactional call, run by the scheduler).

    ``idempotency_key`` is stable across retries of the workflow: pass it to the external
    service so that a step re-run after a crash does not act twice.
    """

    __slots__ = ("invocation_id", "workflow_id")

    def __init__(self, workflow_id: str | None, invocation_id: str | None) -> None:
        self.workflow_id = workflow_id
        self.invocation_id = invocation_id

    @property
    def idempotency_key(self) -> str | None:
        """A key that names this step call across retries (its invocation ID)."""
        return self.invocation_id

    def __repr__(self) -> str:
        return f"StepContext(invocation_id={self.invocation_id!r})"


# --------------------------------------------------------------------------------------
# Running a unit
# --------------------------------------------------------------------------------------


def _application_error(exc: BaseException, function: str, workflow_id: str | None) -> FunctionError:
    return FunctionError(type(exc).__name__, str(exc), function=function, workflow_id=workflow_id)


def run_unit(
    db: Database,
    unit: UnitSpec,
    functions: Mapping[str, Callable[..., Any]],
    request: UnitRequest,
    plans: Mapping[str, CapturePlan] | None = None,
) -> UnitOutcome:
    """Run one transaction unit inside the caller's open transaction.

    With ``request.trace`` and capture ``plans``, what the functions touched is staged,
    in this transaction, as the unit's trace; a unit whose transaction writes nothing
    hands it back in :attr:`UnitOutcome.trace` instead (:mod:`apiary._capture`).

    Order: create or check the workflow's status row (``starts``); look up the recorded
    output by invocation ID (``recorded``) and return it without running if found; run the
    members in order, passing outputs; record the outputs; finish the workflow
    (``finishes``); a workflow of one unit inserts its status row at the end instead,
    unless ``request.look_first``. The caller commits on return and rolls back on any
    exception:

    * :class:`FunctionError` - application code raised (or returned a non-JSON value);
    * :class:`TransactionConflict` - a serialization conflict; retry the whole unit;
    * :class:`WorkflowConflictError` - the workflow ID names another run;
    * :class:`~apiary._bookkeeping.StatusRowExists` - run it again with ``look_first``.
    """
    workflow_id = request.workflow_id
    invocation_id = request.call_id if workflow_id is None else f"{workflow_id}/{unit.id}"
    fresh = False
    # A unit that both starts and finishes its workflow (a workflow of one unit) inserts
    # the status row once, finished, unless a row exists (a retry, or a run that an
    # earlier version of the app began with more units). It looks for one first only
    # when asked to (see UnitRequest.look_first).
    insert_finished = False
    if unit.starts and workflow_id is not None:
        assert request.start is not None, "a starting unit needs the status row to create"
        if unit.finishes and not request.look_first:
            insert_finished = fresh = True
        elif unit.finishes:
            existing = check_workflow(db, workflow_id, request.start)
            if existing is not None and existing.finished:
                return UnitOutcome(None, existing)
            insert_finished = fresh = existing is None
        else:
            fresh, finished = begin_workflow(db, workflow_id, request.start)
            if finished is not None:
                return UnitOutcome(None, finished)
    if unit.recorded and not fresh and workflow_id is not None:
        if request.home:
            finished, recorded = lookup_output(db, workflow_id, invocation_id or "")
            if finished is not None:
                return UnitOutcome(None, finished)
        else:
            recorded = lookup_local(db, workflow_id, invocation_id or "")
        if recorded is not None:
            return UnitOutcome(_codec.loads(recorded))

    params = request.params
    trace = UnitTrace() if request.trace and plans is not None else None
    # Members of a group read each other's outputs, so they join the known values.
    several = len(unit.members) > 1
    known: Mapping[str, Any] = dict(request.inputs) if several else request.inputs
    result: dict[str, Any] = {}
    for member in unit.members:
        args = {name: resolve(tpl, params, known) for name, tpl in member.args.items()}
        member_id = request.call_id if workflow_id is None else f"{workflow_id}/{member.node}"
        number = 0 if trace is None else trace.begin(member_id, member.function, member.read_only)
        ctx = TxContext(
            db, workflow_id, member_id, member.statements, member.function, trace, plans, number
        )
        try:
            value = functions[member.function](ctx, **args)
        except (TransactionConflict, DatabaseUnavailableError):
            raise  # not the application's fault: retry the unit, or report an outage
        except Exception as exc:
            if ctx.poisoned:
                # The application swallowed a conflict signal and raised something else;
                # the transaction is doomed either way, so retry it.
                raise TransactionConflict(str(exc)) from exc
            raise _application_error(exc, member.function, workflow_id) from exc
        if ctx.poisoned:
            raise TransactionConflict(f"{member.function} swallowed a serialization conflict")
        if ctx.failed is not None:
            # The code caught a failed statement and went on: fail it with that error.
            if isinstance(ctx.failed, DatabaseUnavailableError):
                raise ctx.failed
            raise _application_error(ctx.failed, member.function, workflow_id) from ctx.failed
        try:
            value = _codec.normalize(value)
        except TypeError as exc:
            raise FunctionError(
                "TypeError",
                f"returned a value that is not JSON: {exc}",
                function=member.function,
                workflow_id=workflow_id,
            ) from exc
        result[member.node] = value
        if several:
            known[member.node] = value  # type: ignore[index]
        if trace is not None:
            trace.end(number)

    if trace is not None and not unit.writes:
        return UnitOutcome(result, None, fresh, trace.staged_row(workflow_id, invocation_id))
    if trace is not None:
        trace.stage(db, workflow_id, invocation_id)

    if workflow_id is not None:
        if unit.recorded and not unit.finishes:
            # A finishing unit's answer goes into the status row, and finishing deletes
            # recorded outputs: recording it too would be written and deleted at once.
            record_output(db, workflow_id, invocation_id or "", _codec.dumps(result))
        if unit.finishes:
            final = resolve(unit.output or ("c", None), params, {**request.inputs, **result})
            if insert_finished:
                assert request.start is not None
                record = finish_new_workflow(
                    db,
                    workflow_id,
                    request.start,
                    _codec.dumps(final),
                    looked=request.look_first,
                )
            else:
                record = end_workflow(
                    db, workflow_id, output=_codec.dumps(final), start=request.start
                )
            return UnitOutcome(result, record, fresh)
    return UnitOutcome(result, None, fresh)
