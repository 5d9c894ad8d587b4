"""PostgreSQL benchmark: many concurrent transfers among a few hot accounts.

Every transfer is one workflow of one transaction (placement=db), with its own workflow
ID: it reads the balances, updates ``src`` then ``dst`` and writes a ledger row. The
transfers run among ``--accounts`` accounts (3 by default), all started at once:
``--transfers`` coroutines gathered on one event loop (``Runtime.run_async``) or as many
threads (``Runtime.run``), spread over two runtimes.
Transfers in both directions between two accounts take their row locks in opposite
orders and deadlock; ``--order fixed`` makes every transfer take the lower account's lock
first, which avoids that. ``--deadlock-timeout`` sets
PostgreSQL's ``deadlock_timeout`` for the benchmark's database (it needs a superuser's
URL, as the benchmark creates and drops ``apiary_bench_hot_rows``). The module defines
the app, so it ships into PostgreSQL: it imports only the standard library and
``apiary`` at module level.

Prints how long all of them took, the latency percentiles of those that finished, the
failures by type, and the retries the engine made. Run::

    .venv/bin/python -m benchmarks.hot_rows --url postgresql://apiary:apiary@127.0.0.1:55434/db \\
        [--transfers 200] [--how async|threads] [--order random|fixed] \\
        [--deadlock-timeout 100ms]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import random
import threading
import time
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import apiary

DATABASE = "apiary_bench_hot_rows"

app = apiary.App("bench_hot_rows")
app.schema(
    "CREATE TABLE IF NOT EXISTS accounts (id INTEGER PRIMARY KEY, balance BIGINT NOT NULL);"
    "CREATE TABLE IF NOT EXISTS ledger (transfer_id TEXT NOT NULL, src INTEGER NOT NULL, "
    "dst INTEGER NOT NULL, amount BIGINT NOT NULL);"
)

BALANCE = apiary.sql("SELECT balance FROM accounts WHERE id = ?")
ADD = apiary.sql("UPDATE accounts SET balance = balance + ? WHERE id = ?")
RECORD = apiary.sql("INSERT INTO ledger (transfer_id, src, dst, amount) VALUES (?, ?, ?, ?)")
TOTAL = apiary.sql("SELECT sum(balance) FROM accounts")


@app.function
def move(
    ctx: apiary.TxContext, transfer_id: str, src: int, dst: int, amount: int, fixed: bool
) -> int:
    """Take ``amount`` from ``src``, give it to ``dst`` and write a ledger row; with
    ``fixed``, update the lower account first. Returns what ``src`` holds after."""
    row = ctx.query_one(BALANCE, src)
    if row is None or row[0] < amount:
        raise ValueError(f"account {src} cannot pay {amount}")
    steps = [(src, -amount), (dst, amount)]
    if fixed:
        steps.sort()
    for account, delta in steps:
        ctx.query_one(BALANCE, account)
        ctx.execute(ADD, delta, account)
    ctx.execute(RECORD, transfer_id, src, dst, amount)
    return int(row[0]) - amount


@app.function
def total(ctx: apiary.TxContext) -> int:
    """The money in all accounts (read-only)."""
    row = ctx.query_one(TOTAL)
    return int(row[0]) if row is not None else 0


@app.workflow
def transfer(transfer_id: str, src: int, dst: int, amount: int, fixed: bool):  # type: ignore[no-untyped-def]
    """One transfer, one transaction."""
    return move(transfer_id, src, dst, amount, fixed)


def _url(url: str, database: str, query: str = "") -> str:
    return urlunsplit(urlsplit(url)._replace(path=f"/{database}", query=query))


def main(argv: list[str] | None = None) -> None:
    """Run the transfers once and print what happened."""
    # Not at module level: this module ships into PostgreSQL, where only the standard
    # library and the app's shim of apiary exist.
    import psycopg

    from apiary._engines import postgres

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--url", required=True, help="a PostgreSQL superuser's URL")
    parser.add_argument("--transfers", type=int, default=200)
    parser.add_argument("--accounts", type=int, default=3)
    parser.add_argument("--how", choices=("async", "threads"), default="async")
    parser.add_argument("--order", choices=("random", "fixed"), default="random")
    parser.add_argument("--deadlock-timeout", help="PostgreSQL's deadlock_timeout, e.g. 100ms")
    args = parser.parse_args(argv)

    with psycopg.connect(args.url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{DATABASE}"')
        if args.deadlock_timeout:
            conn.execute(
                f"ALTER DATABASE \"{DATABASE}\" SET deadlock_timeout = '{args.deadlock_timeout}'"
            )
    retries = collections.Counter[str]()
    counting = postgres.backoff_delay

    def counted(attempt: int) -> float:
        retries["retries"] += 1
        return counting(attempt)

    postgres.backoff_delay = counted
    url = _url(args.url, DATABASE, "placement=db")
    runtimes = [apiary.Runtime(app, url, trace_store=None) for _ in range(2)]
    try:
        runtimes[0].install()
        with psycopg.connect(_url(args.url, DATABASE), autocommit=True) as conn:
            conn.execute(
                "INSERT INTO accounts SELECT g, 1000000000 FROM generate_series(1, %s) g",
                (args.accounts,),
            )
        rng = random.Random(1)
        fixed = args.order == "fixed"
        work = [
            {
                "workflow_id": f"transfer-{index}",
                "transfer_id": f"transfer-{index}",
                "src": src,
                "dst": dst,
                "amount": 1,
                "fixed": fixed,
            }
            for index, (src, dst) in enumerate(
                rng.sample(range(1, args.accounts + 1), 2) for _ in range(args.transfers)
            )
        ]
        latencies: list[float] = []
        failures = collections.Counter[str]()

        def record(began: float, exc: BaseException | None) -> None:
            if exc is None:
                latencies.append(time.perf_counter() - began)
            else:
                failures[type(exc).__name__] += 1

        async def one(index: int, arguments: dict[str, Any]) -> None:
            began = time.perf_counter()
            try:
                await runtimes[index % 2].run_async("transfer", **arguments)
            except Exception as exc:  # counted by type
                record(began, exc)
            else:
                record(began, None)

        def in_thread(index: int, arguments: dict[str, Any]) -> None:
            began = time.perf_counter()
            try:
                runtimes[index % 2].run("transfer", **arguments)
            except Exception as exc:  # counted by type
                record(began, exc)
            else:
                record(began, None)

        began = time.perf_counter()
        if args.how == "async":

            async def everything() -> None:
                await asyncio.gather(*(one(i, w) for i, w in enumerate(work)))

            asyncio.run(everything())
        else:
            threads = [threading.Thread(target=in_thread, args=(i, w)) for i, w in enumerate(work)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        took = time.perf_counter() - began
        money = runtimes[0].call("total")
    finally:
        postgres.backoff_delay = counting
        for runtime in runtimes:
            runtime.close()
        with psycopg.connect(args.url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)')
    latencies.sort()
    summary: dict[str, Any] = {
        "transfers": args.transfers,
        "how": args.how,
        "order": args.order,
        "deadlock_timeout": args.deadlock_timeout or "server default",
        "all done in s": round(took, 2),
        "finished": len(latencies),
        "failed": dict(failures),
        "retries": retries["retries"],
    }
    if latencies:
        summary["p50 s"] = round(latencies[len(latencies) // 2], 2)
        summary["max s"] = round(latencies[-1], 2)
    if money != args.accounts * 1_000_000_000:
        raise AssertionError(f"money was created or destroyed: {money}")
    for key, value in summary.items():
        print(f"{key}: {value}")


if __name__ == "__main__":
    # placement=db ships the module defining the app into the database under its import
    # name, and "__main__" is none: run the app from this module's importable twin.
    from benchmarks.hot_rows import main as run_main

    run_main()
