"""PostgreSQL benchmark: serialization retries that the workflow bookkeeping causes.

Runs the transfer workflow of ``benchmarks.cluster_routing`` (a debit unit, then a
credit unit, on two random accounts among 10,000) from several threads on one fresh
database, with ``record="sfr"`` and with ``record="none"`` (no status row, no recorded
outputs), and counts the retries of serialization failures (40001) and deadlocks that
the engine made. Accounts are rarely shared by two transfers at once, so retries beyond
those of ``record="none"`` come from the bookkeeping tables. Run::

    .venv/bin/python -m benchmarks.bookkeeping_conflicts [--threads 4] [--seconds 4]
"""

from __future__ import annotations

import argparse
import os
import random
import threading
import time
from typing import Any

import apiary
from apiary._engines import postgres
from benchmarks.cluster_routing import DEFAULT_URL, app, with_database

DATABASE = "apiary_bench_conflicts"
ACCOUNTS = 10_000


def _fresh(url: str) -> str:
    import psycopg

    with psycopg.connect(with_database(url, "postgres"), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{DATABASE}"')
    target = with_database(url, DATABASE)
    with apiary.Runtime(app, target, trace_store=None) as runtime:
        runtime.install()
    with psycopg.connect(target, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO accounts (id, balance) SELECT g, 1000000 "
            f"FROM generate_series(1, {ACCOUNTS}) AS g"
        )
        conn.execute("VACUUM ANALYZE accounts")
    return target


def _run(url: str, record: Any, threads: int, seconds: float) -> tuple[int, int]:
    """Transfers done and retries made in ``seconds``, on a fresh database."""
    target = _fresh(url)
    retries = [0]
    original = postgres.backoff_delay

    def counting(attempt: int) -> float:
        retries[0] += 1
        return original(attempt)

    postgres.backoff_delay = counting
    done = [0] * threads
    try:
        with apiary.Runtime(app, target, trace=False, trace_store=None, record=record) as runtime:
            stop = time.monotonic() + seconds

            def work(index: int) -> None:
                rng = random.Random(index)
                while time.monotonic() < stop:
                    src, dst = rng.sample(range(1, ACCOUNTS + 1), 2)
                    runtime.run("transfer", src=src, dst=dst, amount=1)
                    done[index] += 1

            workers = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
            for worker in workers:
                worker.start()
            for worker in workers:
                worker.join()
    finally:
        postgres.backoff_delay = original
    return sum(done), retries[0]


def main(argv: list[str] | None = None) -> None:
    """Run both record modes and print a table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--url", default=os.environ.get("APIARY_BENCH_DB_URL", DEFAULT_URL), help="a server"
    )
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=4.0)
    args = parser.parse_args(argv)
    print(f"| record | transfers | retries | retries per transfer ({args.threads} threads) |")
    print("|---|---:|---:|---:|")
    try:
        for record in ("sfr", "none"):
            done, retries = _run(args.url, record, args.threads, args.seconds)
            print(f"| {record} | {done:,} | {retries:,} | {retries / max(done, 1):.2f} |")
    finally:
        import psycopg

        with psycopg.connect(with_database(args.url, "postgres"), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)')


if __name__ == "__main__":
    main()
