"""Compiling a traced workflow into an executable plan of tasks.

A *task* is a transaction unit (one function, or one ``apiary.transaction()`` group) or a
step. Tasks are listed in a topological order with their dependencies; selective
function recording (``record="sfr"``) decides which record their outputs, or every task
records (``"all"``), or none does (``"none"``: no exactly-once guarantee, for
benchmarks). The workflow's status row is created by the only root unit when there is
one, and finished by the only sink unit when there is one, each in that unit's own
transaction, saving two round trips; otherwise by transactions of their own.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from apiary import _sfr
from apiary._app import App, FunctionDef, WorkflowDef
from apiary._errors import RegistrationError
from apiary._graph import Node
from apiary._units import Member, UnitSpec, template_nodes

RecordMode = Literal["sfr", "all", "none"]
RECORD_MODES: tuple[RecordMode, ...] = ("sfr", "all", "none")


@dataclass
class Task:
    """A unit or a step of a plan."""

    id: str
    nodes: list[Node]
    deps: list[int]
    recorded: bool
    inputs: list[str]
    unit: UnitSpec | None = None
    #: A step that is the workflow's only sink: the transaction that finishes the
    #: workflow right after it stands in for recording its output.
    sink_step: bool = False

    @property
    def step(self) -> bool:
        """Whether the task is a step (run by the scheduler, outside any transaction)."""
        return self.unit is None


@dataclass
class WorkflowPlan:
    """How to run one workflow under one record mode."""

    name: str
    params: list[str]
    tasks: list[Task]
    output: list[Any]
    record: RecordMode
    status_row: bool
    starts_fused: bool
    finishes_fused: bool
    sequential: bool
    read_only: dict[str, bool] = field(default_factory=dict)


def _function(app: App, workflow: str, node: Node) -> FunctionDef:
    defn = app.functions.get(node.function)
    if defn is None:  # pragma: no cover - tracing only records registered callables
        raise RegistrationError(f"workflow {workflow!r}: unknown function {node.function!r}")
    return defn


def compile_plan(
    app: App, workflow: WorkflowDef, record: RecordMode = "sfr", *, fuse: bool = True
) -> WorkflowPlan:
    """Build the plan of ``workflow`` for a record mode.

    ``fuse=False`` keeps the status row out of the units' transactions (a cluster, where
    the status row lives on the partition of the workflow ID, not of a unit's key).
    """
    if record not in RECORD_MODES:
        raise ValueError(f"record must be one of {RECORD_MODES}, not {record!r}")
    graph = workflow.graph
    read_only = {
        node.id: (False if node.step else _function(app, graph.name, node).read_only)
        for node in graph.nodes
    }

    # Group nodes into tasks, in call order (a topological order: groups are contiguous).
    task_of: dict[str, int] = {}
    members: list[list[Node]] = []
    group_task: dict[int, int] = {}
    for node in graph.nodes:
        if node.group is not None and node.group in group_task:
            index = group_task[node.group]
            members[index].append(node)
        else:
            index = len(members)
            members.append([node])
            if node.group is not None:
                group_task[node.group] = index
        task_of[node.id] = index

    ids = ["+".join(n.id for n in group) for group in members]
    deps: list[list[int]] = []
    children: dict[str, list[str]] = {task_id: [] for task_id in ids}
    for index, group in enumerate(members):
        found: list[int] = []
        for node in group:
            for parent in node.parents:
                parent_task = task_of[parent]
                if parent_task != index and parent_task not in found:
                    found.append(parent_task)
                    children[ids[parent_task]].append(ids[index])
        deps.append(found)

    output_nodes = template_nodes(graph.output)
    feeds_output = {ids[task_of[n]] for n in output_nodes}
    writes = {
        ids[i]
        for i, group in enumerate(members)
        if any(n.step or not read_only[n.id] for n in group)
    }
    if record == "sfr":
        recorded = _sfr.recorded_nodes(ids, children, writes, feeds_output)
    elif record == "all":
        recorded = set(ids)
    else:
        recorded = set()
    status_row = bool(recorded) or (record == "all")

    starter = _starter(ids, members, children, recorded) if status_row and fuse else None
    starts_fused = starter is not None
    sinks = [i for i in range(len(ids)) if not children[ids[i]]]
    finishes_fused = fuse and status_row and len(sinks) == 1 and not members[sinks[0]][0].step

    tasks: list[Task] = []
    for index, group in enumerate(members):
        inside = {n.id for n in group}
        needed = [p for n in group for p in n.parents if p not in inside]
        finishes = finishes_fused and index == sinks[0]
        if finishes:
            needed += [n for n in output_nodes if n not in inside]
        inputs = list(dict.fromkeys(needed))
        is_recorded = ids[index] in recorded
        unit = None
        if not group[0].step:
            unit = UnitSpec(
                ids[index],
                [
                    Member(
                        n.id,
                        n.function,
                        n.args,
                        _function(app, graph.name, n).statement_texts,
                        read_only[n.id],
                    )
                    for n in group
                ],
                read_only=all(read_only[n.id] for n in group),
                recorded=is_recorded,
                starts=index == starter,
                finishes=finishes,
                output=graph.output if finishes else None,
            )
        sink_step = status_row and unit is None and sinks == [index]
        tasks.append(Task(ids[index], group, deps[index], is_recorded, inputs, unit, sink_step))

    sequential = all(len(d) <= 1 for d in deps) and all(len(c) <= 1 for c in children.values())
    return WorkflowPlan(
        name=graph.name,
        params=graph.params,
        tasks=tasks,
        output=graph.output,
        record=record,
        status_row=status_row,
        starts_fused=starts_fused,
        finishes_fused=finishes_fused,
        sequential=sequential,
        read_only=read_only,
    )


def _starter(
    ids: list[str],
    members: list[list[Node]],
    children: dict[str, list[str]],
    recorded: set[str],
) -> int | None:
    """The unit that can create the status row in its own transaction, if one can.

    That is the first recorded task, if it is a unit and every other recorded task
    descends from it: everything before it is a read-only unit that records nothing, so
    it may run before the status row exists. Otherwise a transaction of its own does it.
    """
    first = next((i for i, task_id in enumerate(ids) if task_id in recorded), None)
    if first is None or members[first][0].step:
        return None
    reached = {ids[first]}
    pending = [ids[first]]
    while pending:
        for child in children[pending.pop()]:
            if child not in reached:
                reached.add(child)
                pending.append(child)
    return first if recorded <= reached else None


def call_unit(defn: FunctionDef) -> UnitSpec:
    """The unit that runs one function directly (``Runtime.call``), outside any workflow."""
    return UnitSpec(
        defn.name,
        [
            Member(
                defn.name,
                defn.name,
                {p: ["p", p] for p in defn.params},
                defn.statement_texts,
                defn.read_only,
            )
        ],
        read_only=defn.read_only,
    )


def explain(plan: WorkflowPlan) -> dict[str, Any]:
    """The plan as JSON data: nodes with parents, groups, classification and recording."""
    nodes = []
    for task in plan.tasks:
        for node in task.nodes:
            nodes.append(
                {
                    "id": node.id,
                    "function": node.function,
                    "parents": list(node.parents),
                    "group": node.group,
                    "read_only": plan.read_only[node.id],
                    "step": node.step,
                    "recorded": task.recorded,
                    "unit": task.id,
                }
            )
    return {
        "workflow": plan.name,
        "params": plan.params,
        "record": plan.record,
        "status_row": plan.status_row,
        "output": plan.output,
        "nodes": nodes,
    }
