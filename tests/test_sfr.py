"""Selective function recording: which units record their outputs, and plan fusion.

The rule (DESIGN §4): walk the DAG (groups collapsed) in reverse topological order; the
frontier F(v) is the union over children c of {c} if c is recorded else F(c), plus the
sink if v's output is the workflow's output. Record v if it writes, is a step, or
|F(v)| >= 2.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence, Set
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import apiary
from apiary._plan import WorkflowPlan, compile_plan, explain
from apiary._sfr import SINK, recorded_nodes

# -- (a) the algorithm against the rule, on random DAGs -----------------------------------


def reference_recorded(
    order: Sequence[str],
    children: Mapping[str, Sequence[str]],
    must_record: Set[str],
    feeds_output: Set[str],
) -> set[str]:
    """The rule, by its definition: full frontier sets, computed by recursion on children.

    It does not use ``order`` at all: F and "recorded" are defined on the DAG alone.
    """
    frontier_memo: dict[str, frozenset[str]] = {}
    recorded_memo: dict[str, bool] = {}

    def frontier(v: str) -> frozenset[str]:
        if v not in frontier_memo:
            members: set[str] = {SINK} if v in feeds_output else set()
            for c in children.get(v, ()):
                members |= {c} if is_recorded(c) else frontier(c)
            frontier_memo[v] = frozenset(members)
        return frontier_memo[v]

    def is_recorded(v: str) -> bool:
        if v not in recorded_memo:
            recorded_memo[v] = v in must_record or len(frontier(v)) >= 2
        return recorded_memo[v]

    return {v for v in order if is_recorded(v)}


@st.composite
def dags(draw: st.DrawFn) -> tuple[list[str], dict[str, list[str]], set[str], set[str]]:
    """A random DAG: nodes in a topological order, edges only from earlier to later nodes."""
    size = draw(st.integers(min_value=1, max_value=14))
    # Names are a random permutation, so the topological order is not the sorted order.
    labels = draw(st.permutations(range(size)))
    order = [f"n{label}" for label in labels]
    children: dict[str, list[str]] = {}
    for index, node in enumerate(order):
        later = order[index + 1 :]
        children[node] = (
            draw(st.lists(st.sampled_from(later), unique=True, max_size=len(later)))
            if later
            else []
        )
    writes = set(draw(st.lists(st.sampled_from(order), unique=True)))
    steps = set(draw(st.lists(st.sampled_from(order), unique=True)))
    outputs = set(draw(st.lists(st.sampled_from(order), unique=True)))
    return order, children, writes | steps, outputs


@settings(deadline=None)  # shared CI machines: no per-example time limit
@given(dags())
def test_recorded_nodes_follow_the_rule_on_random_dags(
    dag: tuple[list[str], dict[str, list[str]], set[str], set[str]],
) -> None:
    order, children, must_record, feeds_output = dag
    expected = reference_recorded(order, children, must_record, feeds_output)
    assert recorded_nodes(order, children, must_record, feeds_output) == expected
    # Nodes that write or are steps are always among them.
    assert must_record <= expected


@settings(deadline=None)  # shared CI machines: no per-example time limit
@given(dags())
def test_without_writes_or_steps_nothing_is_recorded_unless_shared(
    dag: tuple[list[str], dict[str, list[str]], set[str], set[str]],
) -> None:
    order, children, _, feeds_output = dag
    recorded = recorded_nodes(order, children, set(), feeds_output)
    # With nothing recorded below, a node is recorded only when its output reaches two
    # different consumers; the only consumer left is the sink, so nothing qualifies.
    assert recorded == set()


def test_recorded_nodes_hand_cases() -> None:
    children = {"r": ["w1", "w2"], "w1": [], "w2": []}
    assert recorded_nodes(["r", "w1", "w2"], children, {"w1", "w2"}, set()) == {"r", "w1", "w2"}
    children = {"r": ["w"], "w": []}
    assert recorded_nodes(["r", "w"], children, {"w"}, set()) == {"w"}
    assert recorded_nodes(["r", "w"], children, {"w"}, {"r"}) == {"r", "w"}
    # The frontier passes through an unrecorded read-only node.
    children = {"r": ["w1", "r2"], "r2": ["w2"], "w1": [], "w2": []}
    order = ["r", "r2", "w1", "w2"]
    assert recorded_nodes(order, children, {"w1", "w2"}, set()) == {"r", "w1", "w2"}


# -- (b) the paper's cases, through real apps ---------------------------------------------

READ_KV = apiary.sql("SELECT v FROM kv WHERE k = ?")
READ_KV_TWICE = apiary.sql("SELECT v, k FROM kv WHERE k = ?")
WRITE_KV = apiary.sql("UPDATE kv SET v = ? WHERE k = ?")


def make_app(name: str) -> SimpleNamespace:
    """An app with read-only functions, a writer and a step; workflows are added per test."""
    app = apiary.App(name)

    @app.function
    def lookup(ctx: apiary.TxContext, key: Any) -> Any:
        row = ctx.query_one(READ_KV, key)
        return None if row is None else row[0]

    @app.function
    def lookup_more(ctx: apiary.TxContext, key: Any) -> Any:
        return ctx.query(READ_KV_TWICE, key)

    @app.function
    def combine(ctx: apiary.TxContext, a: Any, b: Any) -> Any:
        return [a, b]

    @app.function
    def store(ctx: apiary.TxContext, key: Any, value: Any) -> Any:
        ctx.execute(WRITE_KV, value, key)
        return value

    @app.step
    def notify(ctx: apiary.StepContext, value: Any) -> Any:
        return value

    return SimpleNamespace(
        app=app,
        lookup=lookup,
        lookup_more=lookup_more,
        combine=combine,
        store=store,
        notify=notify,
    )


def plan_of(app: apiary.App, workflow: str, record: Any = "sfr") -> WorkflowPlan:
    return compile_plan(app, app.workflows[workflow], record)


def recorded(plan: WorkflowPlan) -> dict[str, bool]:
    return {node["id"]: node["recorded"] for node in explain(plan)["nodes"]}


def test_a_read_only_workflow_records_nothing() -> None:
    a = make_app("ro")

    @a.app.workflow
    def report(key):  # type: ignore[no-untyped-def]
        first = a.lookup(key)
        second = a.lookup_more(first)
        return a.combine(first, second)

    plan = plan_of(a.app, "report")
    # lookup feeds two consumers (lookup_more and combine), but nothing here writes:
    # every consumer re-executes, so its frontier never reaches two recorded nodes.
    assert recorded(plan) == {"lookup": False, "lookup_more": False, "combine": False}
    assert plan.status_row is False
    assert explain(plan)["status_row"] is False
    assert plan.starts_fused is False
    assert plan.finishes_fused is False
    assert all(task.unit is not None and task.unit.read_only for task in plan.tasks)
    assert all(not task.unit.writes for task in plan.tasks if task.unit is not None)


def test_a_read_feeding_two_writers_is_recorded() -> None:
    a = make_app("two_writers")

    @a.app.workflow
    def wf(key):  # type: ignore[no-untyped-def]
        value = a.lookup(key)
        a.store(key, value)
        a.store("copy", value)

    assert recorded(plan_of(a.app, "wf")) == {"lookup": True, "store": True, "store#2": True}


def test_a_read_feeding_exactly_one_writer_is_not_recorded() -> None:
    a = make_app("one_writer")

    @a.app.workflow
    def wf(key):  # type: ignore[no-untyped-def]
        return a.store(key, a.lookup(key))

    plan = plan_of(a.app, "wf")
    assert recorded(plan) == {"lookup": False, "store": True}
    assert plan.status_row is True


def test_a_read_feeding_one_writer_through_two_arguments_is_not_recorded() -> None:
    a = make_app("one_writer_twice")

    @a.app.workflow
    def wf(key):  # type: ignore[no-untyped-def]
        value = a.lookup(key)
        return a.store(value, value)

    assert recorded(plan_of(a.app, "wf")) == {"lookup": False, "store": True}


def test_a_read_that_is_the_output_and_feeds_a_writer_is_recorded() -> None:
    a = make_app("output_and_writer")

    @a.app.workflow
    def wf(key):  # type: ignore[no-untyped-def]
        value = a.lookup(key)
        a.store(key, value)
        return value

    assert recorded(plan_of(a.app, "wf")) == {"lookup": True, "store": True}


def test_a_read_that_is_part_of_a_structured_output_and_feeds_a_writer_is_recorded() -> None:
    a = make_app("structured_output")

    @a.app.workflow
    def wf(key):  # type: ignore[no-untyped-def]
        value = a.lookup(key)
        stored = a.store(key, value)
        return {"read": value, "stored": [stored]}

    assert recorded(plan_of(a.app, "wf")) == {"lookup": True, "store": True}


def test_the_frontier_passes_through_unrecorded_reads() -> None:
    a = make_app("through")

    @a.app.workflow
    def wf(key):  # type: ignore[no-untyped-def]
        value = a.lookup(key)
        a.store(key, value)
        more = a.lookup_more(value)  # read-only, reaches one writer only
        a.store("more", more)

    assert recorded(plan_of(a.app, "wf")) == {
        "lookup": True,
        "store": True,
        "lookup_more": False,
        "store#2": True,
    }


def test_a_diamond_of_reads_into_one_writer_records_no_read() -> None:
    a = make_app("diamond")

    @a.app.workflow
    def wf(key):  # type: ignore[no-untyped-def]
        top = a.lookup(key)
        left = a.lookup_more(top)
        right = a.lookup(top)
        return a.store(key, a.combine(left, right))

    assert recorded(plan_of(a.app, "wf")) == {
        "lookup": False,
        "lookup_more": False,
        "lookup#2": False,
        "combine": False,
        "store": True,
    }


def test_steps_are_always_recorded() -> None:
    a = make_app("steps")

    @a.app.workflow
    def alone(key):  # type: ignore[no-untyped-def]
        return a.notify(key)

    @a.app.workflow
    def after_read(key):  # type: ignore[no-untyped-def]
        a.notify(a.lookup(key))

    plan = plan_of(a.app, "alone")
    assert recorded(plan) == {"notify": True}
    assert plan.status_row is True
    assert plan.tasks[0].step is True
    assert recorded(plan_of(a.app, "after_read")) == {"lookup": False, "notify": True}


def test_writers_are_always_recorded() -> None:
    a = make_app("writers")

    @a.app.workflow
    def wf(key):  # type: ignore[no-untyped-def]
        a.store(key, 1)  # its output is used by nobody

    plan = plan_of(a.app, "wf")
    assert recorded(plan) == {"store": True}
    assert plan.status_row is True
    assert plan.read_only == {"store": False}


def test_a_transaction_group_with_a_writer_is_one_recorded_unit() -> None:
    a = make_app("group")

    @a.app.workflow
    def wf(key):  # type: ignore[no-untyped-def]
        with apiary.transaction():
            value = a.lookup(key)
            stored = a.store(key, value)
        a.notify(stored)
        return stored

    plan = plan_of(a.app, "wf")
    nodes = {node["id"]: node for node in explain(plan)["nodes"]}
    assert nodes["lookup"]["unit"] == nodes["store"]["unit"] == "lookup+store"
    assert nodes["lookup"]["read_only"] is True  # the node is, its unit is not
    assert recorded(plan) == {"lookup": True, "store": True, "notify": True}
    assert [task.id for task in plan.tasks] == ["lookup+store", "notify"]
    unit = plan.tasks[0].unit
    assert unit is not None
    assert unit.read_only is False
    assert unit.recorded is True
    assert [member.node for member in unit.members] == ["lookup", "store"]
    assert plan.tasks[1].deps == [0]


def test_a_read_only_group_follows_the_rule_as_one_node() -> None:
    a = make_app("ro_group")

    @a.app.workflow
    def one(key):  # type: ignore[no-untyped-def]
        with apiary.transaction():
            value = a.lookup_more(a.lookup(key))
        return a.store(key, value)

    @a.app.workflow
    def two(key):  # type: ignore[no-untyped-def]
        with apiary.transaction():
            value = a.lookup_more(a.lookup(key))
        a.store(key, value)
        a.store("other", value)

    assert recorded(plan_of(a.app, "one")) == {
        "lookup": False,
        "lookup_more": False,
        "store": True,
    }
    assert recorded(plan_of(a.app, "two")) == {
        "lookup": True,
        "lookup_more": True,
        "store": True,
        "store#2": True,
    }


def test_record_all_records_every_unit_and_has_a_status_row() -> None:
    a = make_app("all")

    @a.app.workflow
    def report(key):  # type: ignore[no-untyped-def]
        return a.lookup_more(a.lookup(key))

    @a.app.workflow
    def book(key):  # type: ignore[no-untyped-def]
        return a.notify(a.store(key, a.lookup(key)))

    plan = plan_of(a.app, "report", "all")
    assert recorded(plan) == {"lookup": True, "lookup_more": True}
    assert plan.status_row is True
    assert explain(plan)["record"] == "all"
    assert all(task.recorded for task in plan_of(a.app, "book", "all").tasks)


def test_record_none_records_nothing() -> None:
    a = make_app("none")

    @a.app.workflow
    def book(key):  # type: ignore[no-untyped-def]
        value = a.lookup(key)
        a.store(key, value)
        return a.notify(a.store("x", value))

    plan = plan_of(a.app, "book", "none")
    assert set(recorded(plan).values()) == {False}
    assert plan.status_row is False
    assert plan.starts_fused is False
    assert plan.finishes_fused is False


def test_an_unknown_record_mode_is_refused() -> None:
    a = make_app("bad_mode")

    @a.app.workflow
    def wf(key):  # type: ignore[no-untyped-def]
        return a.lookup(key)

    with pytest.raises(ValueError, match="record"):
        plan_of(a.app, "wf", "some")


# -- status-row fusion -------------------------------------------------------------------


def test_a_chain_starts_and_finishes_in_its_own_units() -> None:
    a = make_app("chain")

    @a.app.workflow
    def wf(key):  # type: ignore[no-untyped-def]
        first = a.store(key, 1)
        second = a.store(key, first)
        return a.store(key, second)

    plan = plan_of(a.app, "wf")
    assert plan.starts_fused is True
    assert plan.finishes_fused is True
    assert plan.sequential is True
    units = [task.unit for task in plan.tasks]
    assert all(unit is not None for unit in units)
    assert [(u.starts, u.finishes) for u in units if u is not None] == [
        (True, False),
        (False, False),
        (False, True),
    ]
    assert units[-1] is not None
    assert units[-1].output == ["n", "store#3"]


def test_two_roots_do_not_start_fused() -> None:
    a = make_app("two_roots")

    @a.app.workflow
    def wf(key):  # type: ignore[no-untyped-def]
        left = a.store(key, 1)
        right = a.store("other", 2)
        return a.combine(left, right)

    plan = plan_of(a.app, "wf")
    assert plan.starts_fused is False
    assert plan.finishes_fused is True
    assert not any(task.unit is not None and task.unit.starts for task in plan.tasks)
    assert plan.sequential is False


def test_a_step_as_the_only_sink_does_not_finish_fused() -> None:
    a = make_app("step_sink")

    @a.app.workflow
    def wf(key):  # type: ignore[no-untyped-def]
        return a.notify(a.store(key, 1))

    plan = plan_of(a.app, "wf")
    assert plan.starts_fused is True
    assert plan.finishes_fused is False
    assert not any(task.unit is not None and task.unit.finishes for task in plan.tasks)


def test_a_step_as_the_only_root_does_not_start_fused() -> None:
    a = make_app("step_root")

    @a.app.workflow
    def wf(key):  # type: ignore[no-untyped-def]
        return a.store(key, a.notify(key))

    plan = plan_of(a.app, "wf")
    assert plan.starts_fused is False
    assert plan.finishes_fused is True
