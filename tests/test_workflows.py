"""The engine suite for workflows: exactly-once, errors, values, shapes, record modes.

Every test runs on each engine of ``make_runtime`` and checks the database through the
apps' own read-only functions (``rt.call``), so that it reads the same everywhere.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import apiary
from tests.apps import assert_same, counting, load_example, recorded_outputs, shapes, values

MakeRuntime = Callable[..., apiary.Runtime]


@pytest.fixture(autouse=True)
def fresh_journals() -> Iterator[None]:
    """Steps journal into their modules; each test starts with empty journals."""
    counting.reset_journals()
    shapes.reset_journals()
    values.SEEN.clear()
    yield
    counting.reset_journals()
    shapes.reset_journals()
    values.SEEN.clear()


def node_ids(rt: apiary.Runtime, workflow: str, function: str) -> list[str]:
    """IDs of the nodes of ``workflow`` that call ``function``, in call order."""
    return [n["id"] for n in rt.explain(workflow)["nodes"] if n["function"] == function]


def counting_state(rt: apiary.Runtime) -> tuple[dict[str, int], list[list[Any]]]:
    """Counters and effect rows of the counting app."""
    return rt.call("totals"), rt.call("effects")


# -- the hotel example -----------------------------------------------------------------


def test_hotel_example_end_to_end(make_runtime: MakeRuntime) -> None:
    hotel = load_example("hotel")
    rt = make_runtime(hotel.app)

    assert rt.run("open_hotel", hotel_id=1, first_day=1, days=3, rooms=2) == 3
    assert rt.run("book_room", workflow_id="ann", hotel_id=1, day=2, customer="ann") is True
    assert rt.run("book_room", workflow_id="bob", hotel_id=1, day=2, customer="bob") is True
    assert rt.run("book_room", workflow_id="cat", hotel_id=1, day=2, customer="cat") is False
    assert rt.run("book_room", workflow_id="dan", hotel_id=1, day=9, customer="dan") is False
    assert rt.call("check_avail", hotel_id=1, day=2) is False
    assert rt.call("check_avail", hotel_id=1, day=1) is True

    report = rt.run("hotel_report", workflow_id="report-1", hotel_id=1)
    assert report == {
        "rooms": [[1, 2], [2, 0], [3, 2]],
        "bookings": [[2, "ann"], [2, "bob"]],
    }
    for customer, booked in [("ann", True), ("cat", False)]:
        status = rt.status(customer)
        assert (status.workflow_id, status.name) == (customer, "book_room")
        assert (status.status, status.output, status.error) == ("SUCCESS", booked, None)
    with pytest.raises(apiary.NotFoundError):
        rt.status("report-1")  # read-only: no status row

    # Booking again under the same ID books nothing more and answers the same.
    assert rt.run("book_room", workflow_id="ann", hotel_id=1, day=2, customer="ann") is True
    assert rt.call("occupancy", hotel_id=1) == report
    assert recorded_outputs(rt) == 0


# -- exactly-once by workflow ID ---------------------------------------------------------


def test_rerunning_a_finished_id_returns_its_output_without_executing(
    make_runtime: MakeRuntime,
) -> None:
    rt = make_runtime(counting.app)
    first = rt.run("count", workflow_id="w1", name="a", amount=5)
    assert first == {"total": 5, "note": "a reached 5"}
    assert counting.STEP_CALLS == [("notify", "w1/notify", 5)]

    for _ in range(3):
        assert rt.run("count", workflow_id="w1", name="a", amount=5) == first
    assert asyncio.run(rt.run_async("count", workflow_id="w1", name="a", amount=5)) == first

    assert counting_state(rt) == ({"a": 5}, [["w1", "bump", "a", 5]])
    assert counting.STEP_CALLS == [("notify", "w1/notify", 5)]
    status = rt.status("w1")
    assert (status.status, status.output, status.name) == ("SUCCESS", first, "count")

    # Another ID is another run.
    assert rt.run("count", workflow_id="w2", name="a", amount=5)["total"] == 10


def test_rerunning_an_id_that_failed_raises_the_same_error_without_executing(
    make_runtime: MakeRuntime,
) -> None:
    rt = make_runtime(counting.app)
    with pytest.raises(apiary.FunctionError) as caught:
        rt.run("count_then_limit", workflow_id="w1", name="a", amount=5, limit=3)
    error = caught.value
    assert (error.type_name, error.message) == ("QuotaExceededError", "a is at 5, over 3")
    assert (error.function, error.workflow_id) == ("enforce_limit", "w1")
    status = rt.status("w1")
    assert status.status == "ERROR"
    assert status.output is None
    assert status.error == {
        "type": "QuotaExceededError",
        "message": "a is at 5, over 3",
        "function": "enforce_limit",
    }
    # bump committed; enforce_limit's effect row was rolled back with its error.
    assert counting_state(rt) == ({"a": 5}, [["w1", "bump", "a", 5]])

    # Move the counter: a re-execution of enforce_limit would now say "a is at 105".
    assert rt.call("bump", name="a", amount=100) == 105
    calls_before = list(counting.STEP_CALLS)
    replays: list[Callable[[], Any]] = [
        lambda: rt.run("count_then_limit", workflow_id="w1", name="a", amount=5, limit=3),
        lambda: asyncio.run(
            rt.run_async("count_then_limit", workflow_id="w1", name="a", amount=5, limit=3)
        ),
    ]
    for replay in replays:
        with pytest.raises(apiary.FunctionError) as again:
            replay()
        assert (again.value.type_name, again.value.message) == (error.type_name, error.message)
        assert again.value.function == "enforce_limit"
    assert calls_before == counting.STEP_CALLS
    totals, rows = counting_state(rt)
    assert totals == {"a": 105}
    assert [r for r in rows if r[0] == "w1"] == [["w1", "bump", "a", 5]]


def test_reusing_an_id_with_other_arguments_or_workflow_conflicts(
    make_runtime: MakeRuntime,
) -> None:
    rt = make_runtime(counting.app)
    output = rt.run("count", workflow_id="w1", name="a", amount=5)
    state = counting_state(rt)
    calls = list(counting.STEP_CALLS)

    attempts: list[tuple[str, dict[str, Any]]] = [
        ("count", {"name": "a", "amount": 6}),
        ("count", {"name": "b", "amount": 5}),
        ("count_unique", {"name": "a", "amount": 5}),
        ("count_failing", {"name": "a", "amount": 5}),
        ("count_then_limit", {"name": "a", "amount": 5, "limit": 9}),
    ]
    for workflow, args in attempts:
        with pytest.raises(apiary.WorkflowConflictError):
            rt.run(workflow, workflow_id="w1", **args)
    with pytest.raises(apiary.WorkflowConflictError):
        asyncio.run(rt.run_async("count", workflow_id="w1", name="a", amount=7))

    assert counting_state(rt) == state
    assert calls == counting.STEP_CALLS
    status = rt.status("w1")
    assert (status.name, status.status, status.output) == ("count", "SUCCESS", output)
    assert rt.run("count", workflow_id="w1", name="a", amount=5) == output

    # An ID that ended in an error conflicts the same way.
    with pytest.raises(apiary.FunctionError):
        rt.run("count_failing", workflow_id="w2", name="a", amount=1)
    with pytest.raises(apiary.WorkflowConflictError):
        rt.run("count_failing", workflow_id="w2", name="a", amount=2)
    assert counting_state(rt) == state


# -- application errors ----------------------------------------------------------------


def test_a_workflow_of_one_transaction_takes_effect_once_under_a_reused_id(
    make_runtime: MakeRuntime,
) -> None:
    # count_within_limit is one transaction (bump and enforce_limit): it runs before it
    # looks for its status row, and inserts the row after. A reused ID must still find
    # the first run's answer, and the repeat's writes must be rolled back.
    rt = make_runtime(counting.app)
    assert rt.run("count_within_limit", workflow_id="s1", name="z", amount=5, limit=50) == 5
    state = counting_state(rt)
    assert state == ({"z": 5}, [["s1", "bump", "z", 5], ["s1", "enforce_limit", "z", 5]])
    for _ in range(2):
        assert rt.run("count_within_limit", workflow_id="s1", name="z", amount=5, limit=50) == 5
    assert (
        asyncio.run(
            rt.run_async("count_within_limit", workflow_id="s1", name="z", amount=5, limit=50)
        )
        == 5
    )
    assert counting_state(rt) == state

    # Re-executing s2 now would fail (12 > 7): its recorded answer comes back instead.
    assert rt.run("count_within_limit", workflow_id="s2", name="z", amount=1, limit=7) == 6
    assert rt.call("bump", name="z", amount=5) == 11
    state = counting_state(rt)
    assert rt.run("count_within_limit", workflow_id="s2", name="z", amount=1, limit=7) == 6
    # And the ID cannot be reused for other inputs, whether that run would succeed or fail.
    for args in ({"amount": 1, "limit": 99}, {"amount": 1, "limit": 0}):
        with pytest.raises(apiary.WorkflowConflictError):
            rt.run("count_within_limit", workflow_id="s2", name="z", **args)
    with pytest.raises(apiary.WorkflowConflictError):
        rt.run("count_failing", workflow_id="s2", name="z", amount=1)
    assert counting_state(rt) == state
    status = rt.status("s2")
    assert (status.name, status.status, status.output) == ("count_within_limit", "SUCCESS", 6)

    # A failed one-transaction run keeps its error, and its ID conflicts with others.
    with pytest.raises(apiary.FunctionError):
        rt.run("count_failing", workflow_id="s3", name="z", amount=1)
    with pytest.raises(apiary.FunctionError):
        rt.run("count_failing", workflow_id="s3", name="z", amount=1)
    with pytest.raises(apiary.WorkflowConflictError):
        rt.run("count_within_limit", workflow_id="s3", name="z", amount=1, limit=99)
    assert counting_state(rt) == state
    assert rt.status("s3").status == "ERROR"


def test_function_error_keeps_the_exception_and_rolls_back_its_writes(
    make_runtime: MakeRuntime,
) -> None:
    rt = make_runtime(counting.app)
    rt.run("count", workflow_id="w0", name="a", amount=1)
    before = counting_state(rt)

    with pytest.raises(apiary.FunctionError) as caught:
        rt.run("count_failing", workflow_id="w1", name="a", amount=5)
    error = caught.value
    assert isinstance(error, apiary.ApiaryError)
    # The message quotes the total the function wrote just before raising.
    assert (error.type_name, error.message) == ("QuotaExceededError", "a would reach 6")
    assert (error.function, error.workflow_id) == ("bump_then_fail", "w1")
    assert counting_state(rt) == before

    status = rt.status("w1")
    assert (status.name, status.status, status.output) == ("count_failing", "ERROR", None)
    assert status.error == {
        "type": "QuotaExceededError",
        "message": "a would reach 6",
        "function": "bump_then_fail",
    }
    assert recorded_outputs(rt) == 0


def test_multi_function_transaction_rolls_back_every_member(make_runtime: MakeRuntime) -> None:
    rt = make_runtime(counting.app)
    assert rt.run("count_within_limit", workflow_id="ok", name="a", amount=2, limit=3) == 2
    assert counting_state(rt) == (
        {"a": 2},
        [["ok", "bump", "a", 2], ["ok", "enforce_limit", "a", 2]],
    )

    with pytest.raises(apiary.FunctionError) as caught:
        rt.run("count_within_limit", workflow_id="over", name="a", amount=5, limit=3)
    # enforce_limit saw bump's write (same transaction), then both were rolled back.
    assert (caught.value.type_name, caught.value.message) == (
        "QuotaExceededError",
        "a is at 7, over 3",
    )
    assert caught.value.function == "enforce_limit"
    assert counting_state(rt) == (
        {"a": 2},
        [["ok", "bump", "a", 2], ["ok", "enforce_limit", "a", 2]],
    )
    assert rt.status("over").status == "ERROR"
    assert rt.status("ok").status == "SUCCESS"


def test_a_failing_step_ends_the_workflow_in_error(make_runtime: MakeRuntime) -> None:
    rt = make_runtime(counting.app)
    with pytest.raises(apiary.FunctionError) as caught:
        rt.run("count_then_mail", workflow_id="w1", name="a", amount=4)
    assert caught.value.type_name == "ConnectionRefusedError"
    assert caught.value.message == "mail server refused total 4"
    assert caught.value.function == "refuse_mail"
    status = rt.status("w1")
    assert status.status == "ERROR"
    assert status.error == {
        "type": "ConnectionRefusedError",
        "message": "mail server refused total 4",
        "function": "refuse_mail",
    }
    # The function before the step committed, once; the step ran once.
    assert counting_state(rt) == ({"a": 4}, [["w1", "bump", "a", 4]])
    assert counting.STEP_CALLS == [("refuse_mail", "w1/refuse_mail", 4)]

    with pytest.raises(apiary.FunctionError) as again:
        rt.run("count_then_mail", workflow_id="w1", name="a", amount=4)
    assert (again.value.type_name, again.value.message) == (
        "ConnectionRefusedError",
        "mail server refused total 4",
    )
    assert counting.STEP_CALLS == [("refuse_mail", "w1/refuse_mail", 4)]
    assert counting_state(rt) == ({"a": 4}, [["w1", "bump", "a", 4]])
    assert recorded_outputs(rt) == 0


# -- refused calls -----------------------------------------------------------------------


class _NotJson:
    pass


@pytest.mark.parametrize(
    "args",
    [
        pytest.param({"name": "a"}, id="missing"),
        pytest.param({"name": "a", "amount": 1, "colour": "red"}, id="unknown"),
        pytest.param({"name": "a", "amount": _NotJson()}, id="object"),
        pytest.param({"name": "a", "amount": float("nan")}, id="nan"),
        pytest.param({"name": "a", "amount": float("inf")}, id="infinity"),
        pytest.param({"name": "a", "amount": {1: 2}}, id="int-key"),
        pytest.param({"name": "a", "amount": {1, 2}}, id="set"),
        pytest.param({"name": ["a", _NotJson()], "amount": 1}, id="nested-object"),
    ],
)
def test_invalid_arguments_are_refused_before_any_work(
    make_runtime: MakeRuntime, args: dict[str, Any]
) -> None:
    rt = make_runtime(counting.app)
    with pytest.raises(apiary.InvalidArgumentsError):
        rt.run("count", workflow_id="w1", **args)
    with pytest.raises(apiary.InvalidArgumentsError):
        asyncio.run(rt.run_async("count", workflow_id="w1", **args))
    with pytest.raises(apiary.InvalidArgumentsError):
        rt.call("bump", **args)
    with pytest.raises(apiary.NotFoundError):
        rt.status("w1")
    assert counting_state(rt) == ({}, [])
    assert counting.STEP_CALLS == []


def test_unknown_names_and_bad_ids_are_refused(make_runtime: MakeRuntime) -> None:
    rt = make_runtime(counting.app)
    with pytest.raises(apiary.NotFoundError):
        rt.run("no_such_workflow", workflow_id="w1", name="a", amount=1)
    with pytest.raises(apiary.NotFoundError):
        asyncio.run(rt.run_async("no_such_workflow", name="a", amount=1))
    with pytest.raises(apiary.NotFoundError):
        rt.run("bump", name="a", amount=1)  # a function, not a workflow
    with pytest.raises(apiary.NotFoundError):
        rt.call("no_such_function", name="a", amount=1)
    with pytest.raises(apiary.NotFoundError):
        rt.call("count", name="a", amount=1)  # a workflow, not a function
    with pytest.raises(apiary.NotFoundError):
        rt.status("w1")
    for bad_id in ["", "a\x00b", "x" * 257]:
        with pytest.raises(apiary.InvalidArgumentsError):
            rt.run("count", workflow_id=bad_id, name="a", amount=1)
    assert counting_state(rt) == ({}, [])
    assert counting.STEP_CALLS == []
    assert rt.recover() == []


def test_call_runs_one_function_as_its_own_transaction(make_runtime: MakeRuntime) -> None:
    rt = make_runtime(counting.app)
    assert rt.call("bump", name="a", amount=3) == 3
    assert rt.call("bump", name="a", amount=3) == 6  # not recorded: a call runs every time
    assert asyncio.run(rt.call_async("bump", name="a", amount=1)) == 7
    assert rt.call("peek", name="a") == 7
    assert rt.call("peek", name="nobody") is None

    with pytest.raises(apiary.FunctionError) as caught:
        rt.call("bump_then_fail", name="a", amount=10)
    assert (caught.value.type_name, caught.value.message) == (
        "QuotaExceededError",
        "a would reach 17",
    )
    assert caught.value.function == "bump_then_fail"
    assert caught.value.workflow_id is None
    totals, rows = counting_state(rt)
    assert totals == {"a": 7}
    assert rows == [[None, "bump", "a", 1], [None, "bump", "a", 3], [None, "bump", "a", 3]]

    ids = [rt.call("whoami", tag="t", previous=None) for _ in range(2)]
    for found in ids:
        assert found["workflow_id"] is None
        assert isinstance(found["invocation_id"], str)
        assert found["invocation_id"]
    assert ids[0]["invocation_id"] != ids[1]["invocation_id"]


def test_run_async_gives_the_same_results_as_run(make_runtime: MakeRuntime) -> None:
    rt = make_runtime(counting.app)

    def sync_results(suffix: str) -> list[Any]:
        results: list[Any] = [
            rt.run("count", workflow_id=f"c{suffix}", name=f"n{suffix}", amount=2),
            rt.run(
                "count_within_limit", workflow_id=f"g{suffix}", name=f"g{suffix}", amount=1, limit=5
            ),
            rt.run("peek_total", name=f"n{suffix}"),
        ]
        try:
            rt.run("count_failing", workflow_id=f"f{suffix}", name=f"f{suffix}", amount=3)
        except apiary.FunctionError as exc:
            results.append((exc.type_name, exc.message, exc.function))
        return results

    async def async_results(suffix: str) -> list[Any]:
        results: list[Any] = list(
            await asyncio.gather(
                rt.run_async("count", workflow_id=f"c{suffix}", name=f"n{suffix}", amount=2),
                rt.run_async(
                    "count_within_limit",
                    workflow_id=f"g{suffix}",
                    name=f"g{suffix}",
                    amount=1,
                    limit=5,
                ),
            )
        )
        results.append(await rt.run_async("peek_total", name=f"n{suffix}"))
        try:
            await rt.run_async(
                "count_failing", workflow_id=f"f{suffix}", name=f"f{suffix}", amount=3
            )
        except apiary.FunctionError as exc:
            results.append((exc.type_name, exc.message, exc.function))
        return results

    expected = sync_results("1")
    assert expected[-1] == ("QuotaExceededError", "f1 would reach 3", "bump_then_fail")
    # Same work under new IDs and names: same answers.
    assert asyncio.run(async_results("2")) == [
        {"total": 2, "note": "n2 reached 2"},
        1,
        2,
        ("QuotaExceededError", "f2 would reach 3", "bump_then_fail"),
    ]
    assert expected == [
        {"total": 2, "note": "n1 reached 2"},
        1,
        2,
        ("QuotaExceededError", "f1 would reach 3", "bump_then_fail"),
    ]
    # Replays across the two: each answers what the other recorded, without executing.
    state = counting_state(rt)
    assert asyncio.run(async_results("1")) == expected
    assert sync_results("2")[:2] == asyncio.run(async_results("2"))[:2]
    assert counting_state(rt) == state
    for wid in ["c1", "g1", "f1", "c2", "g2", "f2"]:
        assert rt.status(wid).status in {"SUCCESS", "ERROR"}


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_async_steps_run_under_run_and_run_async(make_runtime: MakeRuntime, mode: str) -> None:
    # @app.step accepts an ``async def``; both ways of running a workflow must await it.
    rt = make_runtime(shapes.app)
    assert run_either(rt, mode, "square_then_log", workflow_id="s1", x=2) == 3 + 9
    assert shapes.STEP_CALLS == [("remote_square", "s1/remote_square", 3)]
    assert rt.status("s1").output == 12
    assert rt.call("visits") == [["s1", "join", 12], ["s1", "seed", 2]]


# -- status rows and recorded outputs ----------------------------------------------------


def test_read_only_workflows_write_no_status_row(make_runtime: MakeRuntime) -> None:
    rt = make_runtime(counting.app)
    assert rt.run("peek_total", workflow_id="r1", name="a") is None
    with pytest.raises(apiary.NotFoundError):
        rt.status("r1")

    rt.run("count", workflow_id="w1", name="a", amount=4)
    status = rt.status("w1")
    assert (status.status, status.output) == ("SUCCESS", {"total": 4, "note": "a reached 4"})

    # A read-only workflow is not recorded: it reads the database as it is now.
    assert rt.run("peek_total", workflow_id="r1", name="a") == 4
    assert asyncio.run(rt.run_async("peek_total", workflow_id="r1", name="a")) == 4
    with pytest.raises(apiary.NotFoundError):
        rt.status("r1")
    assert recorded_outputs(rt) == 0


@pytest.mark.parametrize("record", ["sfr", "all"])
def test_recorded_outputs_are_deleted_when_the_workflow_finishes(
    make_runtime: MakeRuntime, record: str
) -> None:
    rt = make_runtime(counting.app, record=record)
    during: list[tuple[str, int]] = []
    counting.STEP_HOOKS.append(
        lambda ctx: during.append((rt.status(str(ctx.workflow_id)).status, recorded_outputs(rt)))
    )

    rt.run("count", workflow_id="w1", name="a", amount=1)
    # Between bump's transaction and the end, bump's output was recorded.
    assert len(during) == 1
    assert during[0][0] == "PENDING"
    assert during[0][1] >= 1
    assert recorded_outputs(rt) == 0

    with pytest.raises(apiary.FunctionError):
        rt.run("count_then_limit", workflow_id="w2", name="a", amount=1, limit=1)
    assert during[1] == ("PENDING", during[1][1])
    assert during[1][1] >= 1
    assert rt.status("w2").status == "ERROR"
    assert recorded_outputs(rt) == 0


def test_recover_on_a_database_with_nothing_pending_does_nothing(
    make_runtime: MakeRuntime,
) -> None:
    rt = make_runtime(counting.app)
    assert rt.recover() == []
    rt.run("count", workflow_id="ok", name="a", amount=1)
    with pytest.raises(apiary.FunctionError):
        rt.run("count_then_mail", workflow_id="bad", name="a", amount=1)
    state = counting_state(rt)
    calls = list(counting.STEP_CALLS)
    assert rt.recover() == []
    assert counting_state(rt) == state
    assert calls == counting.STEP_CALLS


# -- shapes ------------------------------------------------------------------------------


def run_either(rt: apiary.Runtime, mode: str, workflow: str, **kwargs: Any) -> Any:
    """``rt.run`` or ``rt.run_async`` (in a fresh event loop)."""
    if mode == "sync":
        return rt.run(workflow, **kwargs)
    return asyncio.run(rt.run_async(workflow, **kwargs))


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_diamond_branches_both_run_and_join(make_runtime: MakeRuntime, mode: str) -> None:
    rt = make_runtime(shapes.app)
    assert run_either(rt, mode, "diamond", workflow_id="d1", x=4) == {"a": 5, "d": 25}
    assert shapes.STEP_CALLS == [("triple", "d1/triple", 5)]
    assert rt.call("visits") == [["d1", "join", 25], ["d1", "seed", 4]]

    assert run_either(rt, mode, "diamond", workflow_id="d1", x=4) == {"a": 5, "d": 25}
    assert run_either(rt, mode, "diamond", workflow_id="d2", x=0) == {"a": 1, "d": 5}
    assert rt.call("visits") == [
        ["d1", "join", 25],
        ["d1", "seed", 4],
        ["d2", "join", 5],
        ["d2", "seed", 0],
    ]
    assert len(shapes.STEP_CALLS) == 2
    assert rt.status("d2").output == {"a": 1, "d": 5}


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_independent_branches_run_concurrently(make_runtime: MakeRuntime, mode: str) -> None:
    # Each branch waits at a two-party barrier: run one after the other, they would fail.
    rt = make_runtime(shapes.app)
    assert run_either(rt, mode, "fork", workflow_id="f1", x=7) == "left:7+right:7"
    assert sorted(shapes.STEP_CALLS) == [
        ("branch", "f1/branch", "left"),
        ("branch", "f1/branch#2", "right"),
    ]
    assert rt.status("f1").status == "SUCCESS"


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_record_modes_give_the_same_outputs(make_runtime: MakeRuntime, mode: str) -> None:
    runtimes = {
        record: make_runtime(shapes.app, record=record) for record in ("sfr", "all", "none")
    }
    counters = {
        record: make_runtime(counting.app, record=record) for record in ("sfr", "all", "none")
    }
    seen: dict[str, list[Any]] = {}
    for record, rt in runtimes.items():
        found: list[Any] = [
            run_either(rt, mode, "diamond", workflow_id=f"d-{record}", x=3),
            run_either(rt, mode, "fork", workflow_id=f"f-{record}", x=1),
        ]
        crt = counters[record]
        found.append(
            run_either(crt, mode, "count", workflow_id=f"c-{record}", name=record, amount=2)
        )
        found.append(
            run_either(
                crt,
                mode,
                "count_within_limit",
                workflow_id=f"g-{record}",
                name=record,
                amount=2,
                limit=9,
            )
        )
        found.append(run_either(crt, mode, "peek_total", name=record))
        with pytest.raises(apiary.FunctionError) as caught:
            run_either(
                crt,
                mode,
                "count_then_limit",
                workflow_id=f"e-{record}",
                name=record,
                amount=1,
                limit=0,
            )
        found.append((caught.value.type_name, caught.value.function))
        seen[record] = found

    assert seen["sfr"][0] == {"a": 4, "d": 20}
    for record in ("all", "none"):
        expected = list(seen["sfr"])
        expected[2] = {"total": 2, "note": f"{record} reached 2"}
        assert seen[record] == expected
    totals = counters["sfr"].call("totals")
    assert totals == {"all": 5, "none": 5, "sfr": 5}


# -- values ------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_values_of_every_kind_survive_a_replay_unchanged(
    make_runtime: MakeRuntime, mode: str
) -> None:
    rt = make_runtime(values.app)
    expected = values.expected("t", values.JSON_PAYLOAD)

    first = run_either(
        rt, mode, "roundtrip", workflow_id="v1", tag="t", payload=values.JSON_PAYLOAD
    )
    assert_same(first, expected)
    # The step got them as they are stored, too.
    assert [key for key, _ in values.SEEN] == ["v1/look", "v1/look#2"]
    for _, seen in values.SEEN:
        assert_same(seen, expected)

    for replay_mode in ("sync", "async"):
        again = run_either(
            rt, replay_mode, "roundtrip", workflow_id="v1", tag="t", payload=values.JSON_PAYLOAD
        )
        assert_same(again, expected)
    assert_same(rt.status("v1").output, expected)
    assert len(values.SEEN) == 2
    assert rt.call("counts", tag="t") == {"emit": 1, "settle": 1}

    # A function called directly returns the same types.
    assert_same(
        rt.call("emit", tag="direct", payload=values.JSON_PAYLOAD),
        values.expected("direct", values.JSON_PAYLOAD),
    )


# -- contexts ----------------------------------------------------------------------------


def test_steps_get_their_invocation_id_as_idempotency_key(make_runtime: MakeRuntime) -> None:
    rt = make_runtime(shapes.app)
    rt.run("fork", workflow_id="k1", x=1)
    rt.run("fork", workflow_id="k1", x=1)  # a replay runs no step
    rt.run("fork", workflow_id="k2", x=1)
    nodes = node_ids(rt, "fork", "branch")
    assert len(nodes) == 2
    keys = sorted(key for _, key, _ in shapes.STEP_CALLS)
    assert keys == sorted(f"{wid}/{node}" for wid in ("k1", "k2") for node in nodes)


def test_tx_context_names_the_workflow_and_the_invocation(make_runtime: MakeRuntime) -> None:
    rt = make_runtime(counting.app)
    found = rt.run("identify", workflow_id="i1", tag="t")
    nodes = node_ids(rt, "identify", "whoami")
    assert len(nodes) == 3
    assert found == {
        key: {"workflow_id": "i1", "invocation_id": f"i1/{node}"}
        for key, node in zip(["first", "second", "third"], nodes, strict=True)
    }
    assert len(set(nodes)) == 3
    (notify_node,) = node_ids(rt, "identify", "notify")
    assert [("notify", f"i1/{notify_node}", 0)] == counting.STEP_CALLS
    assert rt.run("identify", workflow_id="i1", tag="t") == found
    assert len(rt.call("effects")) == 3


@pytest.mark.parametrize("how", ["call", "workflow"])
def test_a_raw_sql_string_at_run_time_is_refused(make_runtime: MakeRuntime, how: str) -> None:
    rt = make_runtime(shapes.app)
    attempt: Callable[[], Any] = (
        (lambda: rt.call("raw_at_run_time", table="visits"))
        if how == "call"
        else (lambda: rt.run("misuse_raw", workflow_id="m1", table="visits"))
    )
    with pytest.raises(apiary.FunctionError) as caught:
        attempt()
    assert caught.value.type_name == "TypeError"
    assert caught.value.function == "raw_at_run_time"
    assert rt.call("visits") == []  # its write was rolled back
    if how == "workflow":
        assert rt.status("m1").status == "ERROR"


@pytest.mark.parametrize("how", ["call", "workflow"])
def test_a_statement_the_function_did_not_declare_is_refused(
    make_runtime: MakeRuntime, how: str
) -> None:
    rt = make_runtime(shapes.app)
    rt.run("diamond", workflow_id="d1", x=1)
    before = rt.call("visits")
    assert len(before) == 2
    attempt: Callable[[], Any] = (
        (lambda: rt.call("undeclared_at_run_time", key="wipe"))
        if how == "call"
        else (lambda: rt.run("misuse_undeclared", workflow_id="m1", key="wipe"))
    )
    with pytest.raises(apiary.FunctionError) as caught:
        attempt()
    assert caught.value.type_name == "RegistrationError"
    assert caught.value.function == "undeclared_at_run_time"
    assert rt.call("visits") == before  # neither its write nor the DELETE happened
    if how == "workflow":
        assert rt.status("m1").error == {
            "type": "RegistrationError",
            "message": caught.value.message,
            "function": "undeclared_at_run_time",
        }


def test_pending_status_is_visible_and_nothing_is_left_behind(make_runtime: MakeRuntime) -> None:
    rt = make_runtime(counting.app)
    seen: list[Any] = []
    counting.STEP_HOOKS.append(lambda ctx: seen.append(rt.status(str(ctx.workflow_id))))
    rt.run("count", workflow_id="p1", name="a", amount=1)
    (during,) = seen
    assert (during.workflow_id, during.name, during.status, during.output, during.error) == (
        "p1",
        "count",
        "PENDING",
        None,
        None,
    )
    assert rt.status("p1").status == "SUCCESS"
    assert rt.recover() == []


def test_user_dicts_shaped_like_codec_tags_survive_a_replay(make_runtime: MakeRuntime) -> None:
    rt = make_runtime(values.app)
    payload = values.TAG_SHAPED_PAYLOAD
    expected = values.expected("t", payload)
    first = rt.run("roundtrip", workflow_id="v1", tag="t", payload=payload)
    assert_same(first["payload"], payload)
    for _, seen in values.SEEN:
        assert_same(seen["payload"], payload)
    assert_same(rt.run("roundtrip", workflow_id="v1", tag="t", payload=payload), expected)
    assert_same(rt.call("emit", tag="direct", payload=payload)["payload"], payload)
