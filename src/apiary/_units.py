"""Transaction units as the registrar compiles them, and one call of a unit.

Plain data, shippable as JSON into PostgreSQL's stored procedures: :class:`UnitSpec` and
its :class:`Member` calls, a call's :class:`UnitRequest` and its :class:`UnitOutcome`,
and the value templates that build a call's arguments and a workflow's output.
:mod:`apiary._execution` runs them.

Part of the execution core: standard library only (it also runs inside PostgreSQL).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from apiary._bookkeeping import WorkflowRecord

__all__ = [
    "Member",
    "UnitOutcome",
    "UnitRequest",
    "UnitSpec",
    "resolve",
    "template_nodes",
]


# --------------------------------------------------------------------------------------
# Value templates: how a call's arguments (and a workflow's output) are built
# --------------------------------------------------------------------------------------
# A template is JSON data, so compiled units can be shipped into the database:
#   ["p", name]       a workflow parameter      ["n", node]     the output of a node
#   ["c", value]      a constant                ["l", [t, ...]] a list of templates
#   ["d", {k: t}]     a dict of templates


def resolve(template: Sequence[Any], params: Mapping[str, Any], outputs: Mapping[str, Any]) -> Any:
    """Build the value a template describes."""
    tag = template[0]
    if tag == "n":
        return outputs[template[1]]
    if tag == "p":
        return params[template[1]]
    if tag == "c":
        return template[1]
    if tag == "l":
        return [resolve(item, params, outputs) for item in template[1]]
    if tag == "d":
        return {key: resolve(item, params, outputs) for key, item in template[1].items()}
    raise ValueError(f"unknown template tag {tag!r}")


def template_nodes(template: Sequence[Any]) -> list[str]:
    """The nodes whose outputs a template reads."""
    tag = template[0]
    if tag == "n":
        return [template[1]]
    if tag == "l":
        return [node for item in template[1] for node in template_nodes(item)]
    if tag == "d":
        return [node for item in template[1].values() for node in template_nodes(item)]
    return []


# --------------------------------------------------------------------------------------
# Compiled transaction units
# --------------------------------------------------------------------------------------


class Member:
    """One function call inside a unit: its node ID, function, arguments and statements."""

    __slots__ = ("args", "function", "node", "read_only", "statements")

    def __init__(
        self,
        node: str,
        function: str,
        args: Mapping[str, Sequence[Any]],
        statements: frozenset[str] | None,
        read_only: bool = False,
    ) -> None:
        self.node = node
        self.function = function
        self.args = dict(args)
        self.statements = statements
        self.read_only = read_only


class UnitSpec:
    """A transaction unit as compiled by the registrar; plain data, shippable as JSON.

    Attributes:
        id: node part of the unit's invocation ID (``{workflow_id}/{id}``).
        members: the calls, in an order where each member's in-unit inputs come first.
        read_only: no member writes (SQLite runs it on a snapshot, without the write lock).
        recorded: the unit looks up and records its output (selective function recording).
        starts: the unit also creates the workflow's status row (it is the only root).
        finishes: the unit also finishes the workflow; ``output`` is the output template.
        route: where the unit runs on a cluster (a ``_partitioning.Route``; set in the
            application process only, never shipped).
    """

    __slots__ = ("finishes", "id", "members", "output", "read_only", "recorded", "route", "starts")

    def __init__(
        self,
        id: str,
        members: Sequence[Member],
        *,
        read_only: bool,
        recorded: bool = False,
        starts: bool = False,
        finishes: bool = False,
        output: Sequence[Any] | None = None,
    ) -> None:
        self.id = id
        self.members = list(members)
        self.read_only = read_only
        self.recorded = recorded
        self.starts = starts
        self.finishes = finishes
        self.output = output
        self.route: Any = None

    @property
    def writes(self) -> bool:
        """Whether the unit's transaction writes (application data or bookkeeping)."""
        return not self.read_only or self.recorded or self.starts or self.finishes

    def to_json(self) -> dict[str, Any]:
        """The unit as JSON data (compiled into PostgreSQL stored procedures)."""
        return {
            "id": self.id,
            "members": [
                [
                    m.node,
                    m.function,
                    m.args,
                    None if m.statements is None else sorted(m.statements),
                    m.read_only,
                ]
                for m in self.members
            ],
            "read_only": self.read_only,
            "recorded": self.recorded,
            "starts": self.starts,
            "finishes": self.finishes,
            "output": self.output,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> UnitSpec:
        """Rebuild a unit from :meth:`to_json` data."""
        members = [
            Member(node, function, args, None if stmts is None else frozenset(stmts), read_only)
            for node, function, args, stmts, read_only in data["members"]
        ]
        return cls(
            data["id"],
            members,
            read_only=data["read_only"],
            recorded=data["recorded"],
            starts=data["starts"],
            finishes=data["finishes"],
            output=data["output"],
        )


class UnitRequest:
    """One call of a unit: the workflow it belongs to and the values it needs.

    Attributes:
        workflow_id: the workflow, or ``None`` for a direct call outside any workflow.
        params: the workflow's arguments (or the function's, for a direct call).
        inputs: outputs of nodes outside the unit that its members read.
        start: for a unit that ``starts`` the workflow, the status row to create:
            ``{"name", "inputs", "owner", "version"}`` (``inputs`` is canonical JSON).
        call_id: invocation ID of a direct call (``workflow_id`` is ``None``).
        trace: stage what the unit's functions touch (tracing on).
        home: the workflow's status row is in this database. On a cluster it is not when
            the unit runs on another partition than the workflow ID's: a recorded unit
            then looks up its output alone (:func:`~apiary._bookkeeping.lookup_local`).
        look_first: a unit that starts and finishes its workflow looks for the status
            row before it runs. Without it, it runs at once and inserts the row after;
            finding one there raises :class:`~apiary._bookkeeping.StatusRowExists`, and
            the engine runs the unit again with ``look_first``.
    """

    __slots__ = (
        "call_id",
        "home",
        "inputs",
        "look_first",
        "params",
        "start",
        "trace",
        "workflow_id",
    )

    def __init__(
        self,
        workflow_id: str | None,
        params: Mapping[str, Any],
        inputs: Mapping[str, Any] | None = None,
        start: Mapping[str, Any] | None = None,
        call_id: str | None = None,
        trace: bool = False,
        home: bool = True,
        look_first: bool = False,
    ) -> None:
        self.trace = trace
        self.home = home
        self.look_first = look_first
        self.workflow_id = workflow_id
        self.params = params
        self.inputs = inputs if inputs is not None else {}
        self.start = start
        self.call_id = call_id


class UnitOutcome:
    """What running a unit produced: member outputs, or the already-finished workflow.

    ``created`` says the unit created the workflow's status row: this run is the first,
    so nothing of it can have been recorded before. ``trace`` is the trace of a read-only
    unit, for the engine to stage later (a writing unit stages its own; see
    :mod:`apiary._capture`).
    """

    __slots__ = ("created", "finished", "outputs", "trace")

    def __init__(
        self,
        outputs: dict[str, Any] | None,
        finished: WorkflowRecord | None = None,
        created: bool = False,
        trace: Sequence[Any] | None = None,
    ) -> None:
        self.outputs = outputs
        self.finished = finished
        self.created = created
        self.trace = trace
