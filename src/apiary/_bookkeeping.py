"""Workflow bookkeeping for exactly-once execution, run inside the engine's transactions.

The status row of a workflow (``{sys}workflows``) and the recorded outputs of its units
and steps (``{sys}outputs``). ``{sys}`` is the engine's prefix for system tables
(``apiary_`` on SQLite, the ``apiary.`` schema on PostgreSQL). Each engine's system
schema must delete a workflow's recorded outputs when its status leaves ``PENDING`` (a
trigger). Every function here runs inside a transaction the engine opened, through the
:class:`~apiary._database.Database` adapter; statements are portable between engines.

Part of the execution core: standard library only (it also runs inside PostgreSQL).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

from apiary import _codec
from apiary._database import Database, Statement, TransactionConflict
from apiary._errors import FunctionError, WorkflowConflictError


class VersionMismatch(Exception):
    """Signal: a ``PENDING`` workflow started on another version of the app.

    Raised only for runtimes that pin versions (the frontend's): it then finishes the
    workflow on the runtime of ``version``, the code the workflow started with.
    """

    def __init__(self, version: str) -> None:
        super().__init__(f"the workflow started on app version {version}")
        self.version = version


class StatusRowExists(Exception):
    """Signal: a workflow of one unit ran without looking for its status row first, and
    found one when it inserted its own.

    Such a unit runs straight away: a new workflow ID has no status row, and looking
    would read the primary key's index page, which under ``SERIALIZABLE`` conflicts with
    every other workflow inserting its row there. The unit's transaction rolls back, and
    the engine runs it again, looking first (:attr:`UnitRequest.look_first`): that run
    returns the finished workflow's answer, or refuses a reused ID.
    """


class WorkflowRecord:
    """A workflow's status row: ``PENDING``, ``SUCCESS`` (with output) or ``ERROR``."""

    __slots__ = ("error", "inputs", "name", "output", "owner", "status", "version", "workflow_id")

    def __init__(
        self,
        workflow_id: str,
        name: str,
        inputs: str,
        status: str,
        output: str | None,
        error: str | None,
        owner: str | None,
        version: str | None,
    ) -> None:
        self.workflow_id = workflow_id
        self.name = name
        self.inputs = inputs
        self.status = status
        self.output = output
        self.error = error
        self.owner = owner
        self.version = version

    @property
    def finished(self) -> bool:
        """Whether the workflow ended (``SUCCESS`` or ``ERROR``)."""
        return self.status != PENDING

    def result(self) -> Any:
        """The workflow's output; raises the recorded :class:`FunctionError` if it failed."""
        if self.status == SUCCESS:
            return None if self.output is None else _codec.loads(self.output)
        if self.status == ERROR:
            raise FunctionError.from_json(_codec.loads(self.error or "{}"), self.workflow_id)
        raise RuntimeError(f"workflow {self.workflow_id!r} has not finished")

    def __repr__(self) -> str:
        return f"WorkflowRecord({self.workflow_id!r}, {self.name!r}, {self.status})"


def encode_record(record: WorkflowRecord | None) -> list[Any] | None:
    """A status row as JSON data (to cross the database boundary)."""
    if record is None:
        return None
    return [
        record.workflow_id,
        record.name,
        record.inputs,
        record.status,
        record.output,
        record.error,
        record.owner,
        record.version,
    ]


def decode_record(data: Sequence[Any] | None) -> WorkflowRecord | None:
    """The inverse of :func:`encode_record`."""
    return None if data is None else WorkflowRecord(*data)


def encode_result(value: Any) -> Any:
    """The result of a bookkeeping function as JSON data (records and tuples included)."""
    if isinstance(value, WorkflowRecord):
        return {"$record": encode_record(value)}
    if isinstance(value, tuple | list):
        return [encode_result(item) for item in value]
    return value


def decode_result(value: Any) -> Any:
    """The inverse of :func:`encode_result` (sequences come back as tuples)."""
    if isinstance(value, dict) and len(value) == 1 and "$record" in value:
        return decode_record(value["$record"])
    if isinstance(value, list):
        return tuple(decode_result(item) for item in value)
    return value


# --------------------------------------------------------------------------------------
# System statements (portable between SQLite and PostgreSQL)
# --------------------------------------------------------------------------------------

PENDING, SUCCESS, ERROR = "PENDING", "SUCCESS", "ERROR"

_WORKFLOW_COLUMNS = "workflow_id, name, inputs, status, output, error, owner, version"

BEGIN_WORKFLOW = Statement(
    "INSERT INTO {sys}workflows (workflow_id, name, inputs, status, owner, version, "
    "created_at, updated_at) VALUES (?, ?, ?, 'PENDING', ?, ?, ?, ?) "
    "ON CONFLICT (workflow_id) DO NOTHING",
    system=True,
)
INSERT_FAILED_WORKFLOW = Statement(
    "INSERT INTO {sys}workflows (workflow_id, name, inputs, status, error, owner, version, "
    "created_at, updated_at) VALUES (?, ?, ?, 'ERROR', ?, ?, ?, ?, ?) "
    "ON CONFLICT (workflow_id) DO NOTHING",
    system=True,
)
INSERT_FINISHED_WORKFLOW = Statement(
    "INSERT INTO {sys}workflows (workflow_id, name, inputs, status, output, owner, version, "
    "created_at, updated_at) VALUES (?, ?, ?, 'SUCCESS', ?, ?, ?, ?, ?) "
    "ON CONFLICT (workflow_id) DO NOTHING",
    system=True,
)
GET_WORKFLOW = Statement(
    f"SELECT {_WORKFLOW_COLUMNS} FROM {{sys}}workflows WHERE workflow_id = ?", system=True
)
# "NOT IN ('SUCCESS', 'ERROR')" means PENDING (the only other status), but unlike
# "status = 'PENDING'" it does not let the planner pick the partial index of PENDING
# workflows over the primary key. Scanning that index would read every pending
# workflow's entry, and under SERIALIZABLE it would lock its pages, so that every
# workflow's end conflicted with every other workflow's start.
END_WORKFLOW = Statement(
    "UPDATE {sys}workflows SET status = ?, output = ?, error = ?, updated_at = ? "
    "WHERE workflow_id = ? AND status NOT IN ('SUCCESS', 'ERROR')",
    system=True,
)
# One statement gives both the workflow's status and the unit's recorded output: a unit
# must not re-run once its workflow finished (its recorded output is gone by then).
LOOKUP_OUTPUT = Statement(
    "SELECT w.status, o.output FROM {sys}workflows w LEFT JOIN {sys}outputs o "
    "ON o.workflow_id = w.workflow_id AND o.invocation_id = ? WHERE w.workflow_id = ?",
    system=True,
)
LOOKUP_LOCAL = Statement(
    "SELECT output FROM {sys}outputs WHERE workflow_id = ? AND invocation_id = ?", system=True
)
OUTPUT_WORKFLOWS = Statement("SELECT DISTINCT workflow_id FROM {sys}outputs", system=True)
DELETE_OUTPUTS = Statement("DELETE FROM {sys}outputs WHERE workflow_id = ?", system=True)
FINISHED_AT = Statement(
    "SELECT updated_at FROM {sys}workflows WHERE workflow_id = ? AND status <> 'PENDING'",
    system=True,
)
RECORD_OUTPUT = Statement(
    "INSERT INTO {sys}outputs (invocation_id, workflow_id, output) VALUES (?, ?, ?)",
    system=True,
)
LIST_PENDING = Statement(
    "SELECT workflow_id FROM {sys}workflows WHERE status = 'PENDING' ORDER BY created_at",
    system=True,
)
NEW_CLIENT = Statement(
    "INSERT INTO {sys}clients (created_at) VALUES (?) RETURNING client_id", system=True
)

SYSTEM_STATEMENTS = (
    BEGIN_WORKFLOW,
    INSERT_FAILED_WORKFLOW,
    INSERT_FINISHED_WORKFLOW,
    GET_WORKFLOW,
    END_WORKFLOW,
    LOOKUP_OUTPUT,
    LOOKUP_LOCAL,
    OUTPUT_WORKFLOWS,
    DELETE_OUTPUTS,
    FINISHED_AT,
    RECORD_OUTPUT,
    LIST_PENDING,
    NEW_CLIENT,
)


# --------------------------------------------------------------------------------------
# Workflow bookkeeping (each runs inside a transaction the engine opened)
# --------------------------------------------------------------------------------------


def _status_row(
    workflow_id: str, start: Mapping[str, Any], now: float, *outcome: str
) -> tuple[Any, ...]:
    """The values of a status row's INSERT: the ID, the start's name and inputs, the
    ``outcome`` (an output or an error, if any), owner, version, and both timestamps."""
    return (
        workflow_id,
        start["name"],
        start["inputs"],
        *outcome,
        start.get("owner"),
        start.get("version"),
        now,
        now,
    )


def get_workflow(db: Database, workflow_id: str) -> WorkflowRecord | None:
    """Read a workflow's status row."""
    rows = db.query(GET_WORKFLOW, (workflow_id,))
    return WorkflowRecord(*rows[0]) if rows else None


def begin_workflow(
    db: Database, workflow_id: str, start: Mapping[str, Any]
) -> tuple[bool, WorkflowRecord | None]:
    """Create the workflow's ``PENDING`` status row, or find the existing one.

    Returns ``(created, finished_record)``: ``created`` is true when this call made the
    row (nothing can be recorded yet); ``finished_record`` is set when the workflow
    already ended, so its answer is returned without running anything.
    Raises :class:`WorkflowConflictError` if the ID names another workflow or inputs.
    """
    now = time.time()
    created = db.execute(
        BEGIN_WORKFLOW,
        _status_row(workflow_id, start, now),
    )
    if created:
        return True, None
    record = check_workflow(db, workflow_id, start)
    if record is None:  # pragma: no cover - the insert saw a conflicting row
        raise RuntimeError(f"workflow {workflow_id!r} vanished while starting")
    return False, (record if record.finished else None)


def check_workflow(
    db: Database, workflow_id: str, start: Mapping[str, Any]
) -> WorkflowRecord | None:
    """The existing status row of a workflow, if there is one, checked against the run
    about to start: raises :class:`WorkflowConflictError` if the ID names another
    workflow or other inputs, and :class:`VersionMismatch` for a pinned run of a
    ``PENDING`` workflow that began on another version.

    A workflow of one unit, which starts and finishes it in one transaction, calls it
    first; if there is none, the unit runs and :func:`finish_new_workflow` inserts the
    row in its final state: one insert, instead of an insert of a ``PENDING`` row and an
    update.
    """
    record = get_workflow(db, workflow_id)
    if record is None:
        return None
    if record.name != start["name"] or record.inputs != start["inputs"]:
        raise WorkflowConflictError(
            f"workflow ID {workflow_id!r} already names a run of {record.name!r} with inputs "
            f"{record.inputs}; it cannot be reused for {start['name']!r} with inputs "
            f"{start['inputs']}"
        )
    if (
        start.get("pinned")
        and not record.finished
        and record.version
        and record.version != start.get("version")
    ):
        raise VersionMismatch(record.version)
    return record


def finish_new_workflow(
    db: Database, workflow_id: str, start: Mapping[str, Any], output: str, *, looked: bool = True
) -> WorkflowRecord:
    """Insert the status row of a workflow of one unit that just succeeded, finished.

    If a row is there already, this transaction must roll back. When the unit ``looked``
    for the row first, a concurrent run inserted it since: a conflict, retried, after which
    that run's answer is found. When it did not look, :class:`StatusRowExists` makes the
    engine run the unit again, looking first.
    """
    now = time.time()
    inserted = db.execute(
        INSERT_FINISHED_WORKFLOW,
        _status_row(workflow_id, start, now, output),
    )
    if not inserted:
        if not looked:
            raise StatusRowExists(f"workflow {workflow_id!r} has a status row")
        raise TransactionConflict(f"workflow {workflow_id!r} was finished by a concurrent run")
    return WorkflowRecord(
        workflow_id, start["name"], start["inputs"], SUCCESS, output, None, None, None
    )


def end_workflow(
    db: Database,
    workflow_id: str,
    *,
    output: str | None = None,
    error: str | None = None,
    start: Mapping[str, Any] | None = None,
) -> WorkflowRecord:
    """Finish a workflow with an output (``SUCCESS``) or an error (``ERROR``).

    Its recorded outputs are deleted by the status change itself: the engines' system
    schema has a trigger on the status row, which saves a statement (a round trip in
    client placement, a subtransaction in PL/Python). If the workflow already finished
    (a concurrent run of the same ID got there first), nothing changes and the existing
    record is returned: every caller of one workflow ID sees the same answer. For an
    error, ``start`` lets the status row be created when the unit that would have
    created it rolled back.
    """
    if error is not None and start is not None:
        # A workflow of one unit runs without looking for its status row first (see
        # StatusRowExists), so the row may be that of an earlier run of the ID, or of
        # another workflow: answer as the unit would have had it looked.
        existing = check_workflow(db, workflow_id, start)
        if existing is not None and existing.finished:
            return existing
    status = ERROR if error is not None else SUCCESS
    now = time.time()
    changed = db.execute(END_WORKFLOW, (status, output, error, now, workflow_id))
    if not changed and error is not None and start is not None:
        changed = db.execute(
            INSERT_FAILED_WORKFLOW,
            _status_row(workflow_id, start, now, error),
        )
    if changed:
        return WorkflowRecord(
            workflow_id,
            start["name"] if start else "",
            start["inputs"] if start else "",
            status,
            output,
            error,
            None,
            None,
        )
    record = get_workflow(db, workflow_id)
    if record is None:
        raise RuntimeError(f"workflow {workflow_id!r} has no status row to finish")
    return record


def lookup_output(
    db: Database, workflow_id: str, invocation_id: str
) -> tuple[WorkflowRecord | None, str | None]:
    """Find a recorded output; returns ``(finished_record, output_json)``.

    ``finished_record`` is set when the workflow already ended (the unit must not run).
    """
    rows = db.query(LOOKUP_OUTPUT, (invocation_id, workflow_id))
    if not rows:
        raise RuntimeError(
            f"workflow {workflow_id!r} has no status row; a recorded unit cannot run without it"
        )
    status, output = rows[0]
    if status != PENDING:
        return get_workflow(db, workflow_id), None
    return None, output


def lookup_local(db: Database, workflow_id: str, invocation_id: str) -> str | None:
    """Find a recorded output in a database that does not hold the workflow's status row.

    On a cluster a unit running on another partition than its workflow ID's records its
    output there; those outputs outlive the workflow's end (the status change cannot
    delete them on another partition) until :func:`forget_outputs` removes them, so a
    late concurrent run of the workflow still finds them instead of running again.
    """
    rows = db.query(LOOKUP_LOCAL, (workflow_id, invocation_id))
    return str(rows[0][0]) if rows else None


def output_workflows(db: Database) -> list[str]:
    """IDs of the workflows with recorded outputs in this database."""
    return [row[0] for row in db.query(OUTPUT_WORKFLOWS, ())]


def finished_before(db: Database, workflow_ids: Sequence[str], cutoff: float) -> list[str]:
    """Those of ``workflow_ids`` whose status rows here ended before ``cutoff``."""
    done = []
    for workflow_id in workflow_ids:
        rows = db.query(FINISHED_AT, (workflow_id,))
        if rows and rows[0][0] < cutoff:
            done.append(workflow_id)
    return done


def forget_outputs(db: Database, workflow_ids: Sequence[str]) -> int:
    """Delete the recorded outputs of finished workflows; return how many rows went."""
    return sum(db.execute(DELETE_OUTPUTS, (workflow_id,)) for workflow_id in workflow_ids)


def record_output(db: Database, workflow_id: str, invocation_id: str, output: str) -> None:
    """Record a unit's or step's output under its invocation ID."""
    db.execute(RECORD_OUTPUT, (invocation_id, workflow_id, output))


def record_once(
    db: Database, workflow_id: str, invocation_id: str, output: str
) -> tuple[WorkflowRecord | None, str | None]:
    """Record a step's output unless one is recorded already; returns the one that counts.

    Returns ``(finished_record, output_json)`` like :func:`lookup_output`: a concurrent
    run of the same workflow may have recorded first, and then its output wins.
    """
    finished, existing = lookup_output(db, workflow_id, invocation_id)
    if finished is not None:
        return finished, None
    if existing is not None:
        return None, existing
    record_output(db, workflow_id, invocation_id, output)
    return None, output


def list_pending(db: Database) -> list[str]:
    """IDs of workflows still ``PENDING``, oldest first."""
    return [row[0] for row in db.query(LIST_PENDING, ())]


def new_client_id(db: Database) -> int:
    """Issue a new client ID (the prefix of generated workflow IDs)."""
    return int(db.query(NEW_CLIENT, (time.time(),))[0][0])
