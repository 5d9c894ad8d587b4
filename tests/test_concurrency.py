"""The engine suite under concurrency: invariants hold with many threads and runtimes.

Threads share one ``Runtime`` (it is documented as thread-safe) or spread over two
runtimes on the same database URL, which is what two processes' connections look like
to the database. Nothing here asserts timings: only what the database holds afterwards.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import random
import threading
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

import apiary
from tests.apps import bank, counting, load_example

MakeRuntime = Callable[..., apiary.Runtime]

THREADS = 8
SEED = 20_240_801


def run_in_threads(jobs: list[Callable[[], Any]], threads: int = THREADS) -> list[Any]:
    """Run every job on ``threads`` threads, all released together; return results in order.

    A job's exception is returned as its result (so every job runs, and the test sees all).
    """
    start = threading.Barrier(min(threads, len(jobs)), timeout=60)
    local = threading.local()

    def guarded(job: Callable[[], Any]) -> Any:
        if not getattr(local, "started", False):
            local.started = True
            start.wait()
        try:
            return job()
        except Exception as exc:
            return exc

    with concurrent.futures.ThreadPoolExecutor(max_workers=threads) as pool:
        return list(pool.map(guarded, jobs))


@pytest.fixture(autouse=True)
def fresh_journals() -> None:
    """Steps journal into their module; each test starts with an empty journal."""
    counting.reset_journals()


# -- booking -----------------------------------------------------------------------------


@pytest.mark.parametrize("runtimes", [1, 2])
def test_bookings_never_oversell_under_concurrency(
    make_runtime: MakeRuntime, runtimes: int
) -> None:
    hotel = load_example("hotel")
    rts = [make_runtime(hotel.app) for _ in range(runtimes)]
    days, rooms = 3, 4
    assert rts[0].run("open_hotel", hotel_id=1, first_day=1, days=days, rooms=rooms) == days

    rng = random.Random(SEED + runtimes)
    customers = [f"c{i:02d}" for i in range(60)]
    wanted = {customer: rng.randint(1, days) for customer in customers}
    # Each request is sent twice under its workflow ID, like a client retrying.
    requests = [customer for customer in customers for _ in range(2)]
    rng.shuffle(requests)
    jobs: list[Callable[[], Any]] = [
        (
            lambda customer=customer, index=index: rts[index % runtimes].run(
                "book_room",
                workflow_id=f"book-{customer}",
                hotel_id=1,
                day=wanted[customer],
                customer=customer,
            )
        )
        for index, customer in enumerate(requests)
    ]
    results = run_in_threads(jobs)

    answers: dict[str, set[Any]] = {}
    for customer, result in zip(requests, results, strict=True):
        assert not isinstance(result, BaseException), result
        answers.setdefault(customer, set()).add(result)
    assert all(len(found) == 1 for found in answers.values()), answers
    booked = {customer for customer, found in answers.items() if found == {True}}

    report = rts[-1].call("occupancy", hotel_id=1)
    available = dict(report["rooms"])
    bookings = report["bookings"]
    assert all(left >= 0 for left in available.values()), available
    assert len({customer for _, customer in bookings}) == len(bookings)  # at most once each
    assert {customer for _, customer in bookings} == booked
    for day in range(1, days + 1):
        on_day = [customer for booked_day, customer in bookings if booked_day == day]
        assert len(on_day) == rooms - available[day]
        demand = sum(1 for customer in customers if wanted[customer] == day)
        assert len(on_day) == min(rooms, demand)
        assert all(wanted[customer] == day for customer in on_day)
    for customer in customers:
        status = rts[0].status(f"book-{customer}")
        assert (status.status, status.output) == ("SUCCESS", customer in booked)


# -- bank transfers ----------------------------------------------------------------------


def open_accounts(rt: apiary.Runtime, balances: dict[int, int]) -> None:
    """Open the accounts, each with its balance."""
    for account, balance in balances.items():
        assert rt.call("open_account", account=account, balance=balance) == balance


@pytest.mark.parametrize(("runtimes", "how"), [(1, "threads"), (2, "threads"), (2, "async")])
def test_hot_account_transfers_conserve_money(
    make_runtime: MakeRuntime, runtimes: int, how: str
) -> None:
    rts = [make_runtime(bank.app) for _ in range(runtimes)]
    opening = {1: 100, 2: 100, 3: 100}
    open_accounts(rts[0], opening)

    rng = random.Random(f"{SEED}-{runtimes}-{how}")
    transfers: list[dict[str, Any]] = []
    for number in range(100):
        src, dst = rng.sample(sorted(opening), 2)
        transfers.append(
            {"transfer_id": f"t-{number:03d}", "src": src, "dst": dst, "amount": rng.randint(1, 70)}
        )
    if how == "threads":
        jobs: list[Callable[[], Any]] = [
            (
                lambda args=args, index=index: rts[index % runtimes].run(
                    "transfer", workflow_id=args["transfer_id"], **args
                )
            )
            for index, args in enumerate(transfers)
        ]
        results = run_in_threads(jobs)
    else:

        async def all_at_once() -> list[Any]:
            return await asyncio.gather(
                *(
                    rts[index % runtimes].run_async(
                        "transfer", workflow_id=args["transfer_id"], **args
                    )
                    for index, args in enumerate(transfers)
                ),
                return_exceptions=True,
            )

        results = asyncio.run(all_at_once())

    succeeded: dict[str, dict[str, Any]] = {}
    refused: set[str] = set()
    for args, result in zip(transfers, results, strict=True):
        if isinstance(result, apiary.FunctionError):
            assert result.type_name == "InsufficientFundsError", result
            assert result.function == "debit"
            refused.add(args["transfer_id"])
        else:
            assert not isinstance(result, BaseException), result
            assert result["transfer"] == args["transfer_id"]
            assert result["src_left"] >= 0
            succeeded[args["transfer_id"]] = args
    assert succeeded, "every transfer was refused: the test proves nothing"
    assert refused, "no transfer was refused: overdrafts were never tried"

    final = {int(account): balance for account, balance in rts[-1].call("balances").items()}
    assert sum(final.values()) == sum(opening.values())
    assert all(balance >= 0 for balance in final.values()), final

    ledger = rts[-1].call("ledger")
    ids = Counter(row[0] for row in ledger)
    assert all(n == 1 for n in ids.values()), ids
    assert set(ids) == set(succeeded)
    for transfer_id, src, dst, amount in ledger:
        assert succeeded[transfer_id] == {
            "transfer_id": transfer_id,
            "src": src,
            "dst": dst,
            "amount": amount,
        }
    # Every balance is its opening plus what the ledger moved: no write outside it.
    expected = dict(opening)
    for _, src, dst, amount in ledger:
        expected[src] -= amount
        expected[dst] += amount
    assert final == expected

    # Each workflow's status row holds the answer its caller got.
    for args in transfers:
        status = rts[0].status(args["transfer_id"])
        if args["transfer_id"] in succeeded:
            assert status.status == "SUCCESS"
        else:
            assert status.status == "ERROR"
            assert status.error is not None
            assert status.error["type"] == "InsufficientFundsError"


# -- replays of one workflow ID ----------------------------------------------------------


@pytest.mark.parametrize("runtimes", [1, 2])
def test_concurrent_replays_of_one_transfer_apply_it_once(
    make_runtime: MakeRuntime, runtimes: int
) -> None:
    rts = [make_runtime(bank.app) for _ in range(runtimes)]
    open_accounts(rts[0], {1: 50, 2: 0})
    args = {"transfer_id": "t-1", "src": 1, "dst": 2, "amount": 30}
    jobs: list[Callable[[], Any]] = [
        lambda index=index: rts[index % runtimes].run("transfer", workflow_id="t-1", **args)
        for index in range(THREADS)
    ]
    results = run_in_threads(jobs)
    assert results == [{"transfer": "t-1", "src_left": 20, "dst_now": 30}] * THREADS
    assert rts[0].call("balances") == {"1": 20, "2": 30}
    assert rts[0].call("ledger") == [["t-1", 1, 2, 30]]

    # A refused transfer, replayed concurrently, is refused identically and changes nothing.
    args = {"transfer_id": "t-2", "src": 1, "dst": 2, "amount": 25}
    jobs = [
        lambda index=index: rts[index % runtimes].run("transfer", workflow_id="t-2", **args)
        for index in range(THREADS)
    ]
    errors = run_in_threads(jobs)
    assert all(isinstance(e, apiary.FunctionError) for e in errors), errors
    assert {(e.type_name, e.message, e.function) for e in errors} == {
        ("InsufficientFundsError", "account 1 holds 20, cannot pay 25", "debit")
    }
    assert rts[0].call("balances") == {"1": 20, "2": 30}
    assert rts[0].call("ledger") == [["t-1", 1, 2, 30]]


@pytest.mark.parametrize("runtimes", [1, 2])
def test_concurrent_replays_of_a_multi_step_workflow_agree(
    make_runtime: MakeRuntime, runtimes: int
) -> None:
    # count_unique: a recorded write, then a step whose output differs on every
    # execution. Concurrent runs may execute the step more than once (steps are
    # at-least-once), but every caller must get the one output that was recorded.
    rts = [make_runtime(counting.app) for _ in range(runtimes)]
    for round_number in range(3):
        workflow_id = f"u-{round_number}"
        jobs: list[Callable[[], Any]] = [
            lambda index=index, wid=workflow_id: rts[index % runtimes].run(
                "count_unique", workflow_id=wid, name="n", amount=1
            )
            for index in range(THREADS)
        ]
        results = run_in_threads(jobs)
        assert not any(isinstance(r, BaseException) for r in results), results
        assert len({repr(r) for r in results}) == 1, results
        assert results[0]["total"] == round_number + 1
        assert results[0]["note"].startswith(f"n reached {round_number + 1}, receipt ")
        assert rts[-1].status(workflow_id).output == results[0]
        assert {key for _, key, _ in counting.STEP_CALLS} == {
            f"u-{r}/notify_unique" for r in range(round_number + 1)
        }

    assert rts[0].call("totals") == {"n": 3}
    assert Counter(row[0] for row in rts[0].call("effects")) == {"u-0": 1, "u-1": 1, "u-2": 1}


def test_generated_workflow_ids_never_collide(make_runtime: MakeRuntime) -> None:
    # Without a workflow ID, each runtime numbers its runs under a database-issued
    # client ID: runs from two runtimes (two processes) must never share an ID.
    rts = [make_runtime(counting.app) for _ in range(2)]
    jobs: list[Callable[[], Any]] = [
        lambda index=index: rts[index % 2].run("count", name="n", amount=1) for index in range(80)
    ]
    results = run_in_threads(jobs)
    assert not any(isinstance(r, BaseException) for r in results), results
    assert sorted(r["total"] for r in results) == list(range(1, 81))
    effects = rts[0].call("effects")
    workflow_ids = [row[0] for row in effects]
    assert len(set(workflow_ids)) == 80
    for workflow_id in workflow_ids:
        assert rts[1].status(workflow_id).status == "SUCCESS"
    assert sorted(key for _, key, _ in counting.STEP_CALLS) == sorted(
        f"{workflow_id}/notify" for workflow_id in workflow_ids
    )
