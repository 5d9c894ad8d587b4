"""PostgreSQL benchmark: one function of k point queries, placed in the database or not.

The workload is one Apiary function called on its own (``Runtime.call``), so each call is
one serializable transaction::

    read_rows(keys)          k x  SELECT val FROM kv WHERE id = ?          (workload "read")
    read_then_update(keys)   (k-1) x that SELECT, then
                             UPDATE kv SET hits = hits + 1 WHERE id = ?   (workload "rw")

on a table of 100,000 rows, with k random primary keys per call. Three systems run it:

* ``apiary placement=db``: a :class:`apiary.Runtime` on ``...?placement=db``; each call is
  one ``SELECT`` of the function's PL/Python stored procedure;
* ``apiary placement=client``: a Runtime on ``...?placement=client``; the function runs in
  this process, one round trip per query plus ``BEGIN`` and ``COMMIT``;
* ``bare PL/Python``: the same queries in a hand-written ``plpython3u`` function with its
  ``plpy.prepare`` plans cached in ``SD``, called with one prepared ``SELECT`` over a plain
  psycopg connection per thread (autocommit, ``default_transaction_isolation`` serializable,
  serialization failures retried). It is the lower bound of what placement=db can cost.

All three use one database, created afresh (``DROP DATABASE ... WITH (FORCE)``) on the
server of ``--url`` and loaded once. For each workload, k and client count, the systems get
a warm-up, then their rounds are interleaved (db, client, bare, db, ...), so that drift of
the machine hits every system alike; the tables show medians over rounds. Run::

    .venv/bin/python -m benchmarks.pg_placement --seconds 3 --rounds 3 --url URL

on a server of its own (docs/BENCHMARKS.md says why): ``URL`` names any database there, to
be reached as a superuser; the benchmark's own database is made next to it.

This module also defines the app that placement=db ships into the database, whose Python
has only the standard library: psycopg is imported inside the functions that use it.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import apiary
from benchmarks._harness import Round, RoundStats, run_threads

ROWS = 100_000
DEFAULT_URL = os.environ.get(
    "APIARY_TEST_POSTGRES_URL", "postgresql://apiary:apiary@127.0.0.1:55432/apiary_test"
)
DATABASE = "apiary_bench"

SCHEMA = """
CREATE TABLE IF NOT EXISTS kv (
    id   INTEGER PRIMARY KEY,
    val  INTEGER NOT NULL,
    hits INTEGER NOT NULL DEFAULT 0
);
"""


def value_of(key: int) -> int:
    """The ``val`` column of row ``key``, as loaded (so every answer can be checked)."""
    return key * 7919 % 100_003


# --------------------------------------------------------------------------------------
# The functions in Apiary
# --------------------------------------------------------------------------------------

app = apiary.App("pg_placement_bench")
app.schema(SCHEMA)

READ_ROW = apiary.sql("SELECT val FROM kv WHERE id = ?")
BUMP_ROW = apiary.sql("UPDATE kv SET hits = hits + 1 WHERE id = ?")


@app.function
def read_rows(ctx: apiary.TxContext, keys: list[int]) -> list[int | None]:
    """The ``val`` of each key: one point query per key."""
    values: list[int | None] = []
    for key in keys:
        row = ctx.query_one(READ_ROW, key)
        values.append(None if row is None else row[0])
    return values


@app.function
def read_then_update(ctx: apiary.TxContext, keys: list[int]) -> list[int | None]:
    """Read every key but the last, then count a hit on the last one."""
    values: list[int | None] = []
    for key in keys[:-1]:
        row = ctx.query_one(READ_ROW, key)
        values.append(None if row is None else row[0])
    ctx.execute(BUMP_ROW, keys[-1])
    return values


#: Workload name -> the Apiary function and the bare procedure that do the same.
WORKLOADS = {"read": "read_rows", "rw": "read_then_update"}

# --------------------------------------------------------------------------------------
# The same functions as bare PL/Python procedures
# --------------------------------------------------------------------------------------

BARE_DDL = """
CREATE OR REPLACE FUNCTION bare_read_rows(keys integer[]) RETURNS integer[]
LANGUAGE plpython3u AS $$
plan = SD.get("read")
if plan is None:
    plan = SD["read"] = plpy.prepare("SELECT val FROM kv WHERE id = $1", ["integer"])
values = []
for key in keys:
    rows = plpy.execute(plan, [key])
    values.append(rows[0]["val"] if rows else None)
return values
$$;

CREATE OR REPLACE FUNCTION bare_read_then_update(keys integer[]) RETURNS integer[]
LANGUAGE plpython3u AS $$
read = SD.get("read")
if read is None:
    read = SD["read"] = plpy.prepare("SELECT val FROM kv WHERE id = $1", ["integer"])
    SD["bump"] = plpy.prepare("UPDATE kv SET hits = hits + 1 WHERE id = $1", ["integer"])
values = []
for key in keys[:-1]:
    rows = plpy.execute(read, [key])
    values.append(rows[0]["val"] if rows else None)
plpy.execute(SD["bump"], [keys[-1]])
return values
$$;

CREATE OR REPLACE FUNCTION bench_server_python() RETURNS text LANGUAGE plpython3u AS $$
import sys
return sys.version.split()[0]
$$;
"""

# --------------------------------------------------------------------------------------
# Systems under test
# --------------------------------------------------------------------------------------

DB, CLIENT, BARE = "apiary placement=db", "apiary placement=client", "bare PL/Python"

#: A callable that runs one call of a workload with the given keys; one per thread.
Runner = Callable[[list[int]], list[Any]]


def with_database(url: str, database: str, query: str = "") -> str:
    """``url`` pointing at another database on the same server, with a query string."""
    return urlunsplit(urlsplit(url)._replace(path=f"/{database}", query=query))


class System:
    """One contender; hands each client thread a runner for a workload."""

    name = ""

    def __init__(self, url: str, clients: int) -> None:
        self.url = url

    def runner(self, workload: str) -> Runner:
        """A runner for one client thread."""
        raise NotImplementedError

    def close(self) -> None:
        """Release connections."""


class ApiarySystem(System):
    """One :class:`apiary.Runtime` shared by all client threads (it is thread-safe)."""

    placement = ""

    def __init__(self, url: str, clients: int) -> None:
        super().__init__(url, clients)
        # pool_min: a connection for every client thread, opened before the warm-up ends.
        self.runtime = apiary.Runtime(app, f"{url}?placement={self.placement}&pool_min={clients}")

    def runner(self, workload: str) -> Runner:
        call = self.runtime.call
        function = WORKLOADS[workload]
        return lambda keys: call(function, keys=keys)

    def close(self) -> None:
        self.runtime.close()


class DbPlacement(ApiarySystem):
    name = DB
    placement = "db"


class ClientPlacement(ApiarySystem):
    name = CLIENT
    placement = "client"


class BareSystem(System):
    """Plain psycopg calling the bare procedures: one connection per client thread."""

    name = BARE

    def __init__(self, url: str, clients: int) -> None:
        super().__init__(url, clients)
        self._connections: list[Any] = []

    def runner(self, workload: str) -> Runner:
        import psycopg
        from psycopg.types.numeric import Int4BinaryDumper, Int4Dumper

        conn = psycopg.connect(self.url, autocommit=True)
        self._connections.append(conn)
        conn.execute("SET default_transaction_isolation TO 'serializable'")
        # Keys go as integer[], whatever their size, so one prepared statement serves all.
        conn.adapters.register_dumper(int, Int4Dumper)
        conn.adapters.register_dumper(int, Int4BinaryDumper)
        sql = f"SELECT bare_{WORKLOADS[workload]}(%s)"
        conflict = psycopg.errors.SerializationFailure

        def run(keys: list[int]) -> list[Any]:
            while True:
                try:
                    return conn.execute(sql, (keys,), prepare=True).fetchone()[0]  # type: ignore[index,no-any-return]
                except conflict:
                    time.sleep(random.uniform(0, 0.002))

        return run

    def close(self) -> None:
        for conn in self._connections:
            conn.close()


SYSTEMS: dict[str, type[System]] = {
    "db": DbPlacement,
    "client": ClientPlacement,
    "bare": BareSystem,
}


def create_database(server_url: str, url: str) -> None:
    """Create the benchmark database afresh, install the app and load the rows once."""
    import psycopg

    database = urlsplit(url).path.lstrip("/")
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{database}"')
    # placement=db installs everything client placement needs, plus the stored procedures.
    with apiary.Runtime(app, f"{url}?placement=db") as runtime:
        runtime.install()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(BARE_DDL)
        conn.execute(
            "INSERT INTO kv (id, val) SELECT g, g::bigint * 7919 %% 100003 "
            "FROM generate_series(1, %s) AS g",
            (ROWS,),
        )
        conn.execute("VACUUM ANALYZE kv")


def hits(url: str) -> int:
    """The hits counted in the table: one per ``rw`` call that committed."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        return int(conn.execute("SELECT coalesce(sum(hits), 0) FROM kv").fetchone()[0])  # type: ignore[index]


def check_answers(system: System, workload: str) -> None:
    """Every system must return the rows as loaded, for a few calls of every size."""
    runner = system.runner(workload)
    rng = random.Random(99)
    for k in (1, 2, 5, 10):
        keys = [rng.randint(1, ROWS) for _ in range(k)]
        expected = [value_of(key) for key in (keys if workload == "read" else keys[:-1])]
        got = runner(keys)
        if list(got) != expected:
            raise AssertionError(f"{system.name} {workload}{keys}: {got}, expected {expected}")


# --------------------------------------------------------------------------------------
# Measuring
# --------------------------------------------------------------------------------------


@dataclass
class Result(RoundStats):
    """All rounds of one system at one workload, k and client count."""

    workload: str
    k: int
    clients: int
    system: str
    rounds: list[Round] = field(default_factory=list)


def run_timed(runners: Sequence[Runner], k: int, seconds: float, seed: int) -> Round:
    """Call every runner (one thread each) with k random keys, for ``seconds``."""

    def next_call(index: int, rng: random.Random) -> Callable[[], Any]:
        keys = [rng.randint(1, ROWS) for _ in range(k)]
        return lambda: runners[index](keys)

    return run_threads(len(runners), next_call, seconds, seed)


def bench_clients(
    url: str,
    names: list[str],
    workloads: list[str],
    ks: list[int],
    clients: int,
    seconds: float,
    rounds: int,
    warmup: float,
) -> tuple[list[Result], int]:
    """Benchmark every system at one client count; return results and committed rw calls."""
    systems: list[System] = []
    rw_calls = 0
    results: list[Result] = []
    try:
        for key in names:
            systems.append(SYSTEMS[key](url, clients))
        for workload in workloads:
            for system in systems:
                check_answers(system, workload)
            rw_calls += 4 * len(systems) if workload == "rw" else 0
            runners = {s.name: [s.runner(workload) for _ in range(clients)] for s in systems}
            for k in ks:
                group = {s.name: Result(workload, k, clients, s.name) for s in systems}
                done = 0
                for system in systems:
                    done += run_timed(runners[system.name], k, warmup, seed=0).ops
                for number in range(1, rounds + 1):
                    for system in systems:
                        measured = run_timed(runners[system.name], k, seconds, seed=number)
                        group[system.name].rounds.append(measured)
                        done += measured.ops
                        print(
                            f"  {workload} k={k} clients={clients} round {number}/{rounds} "
                            f"{system.name:<24} {measured.throughput:8.0f} calls/s",
                            file=sys.stderr,
                            flush=True,
                        )
                rw_calls += done if workload == "rw" else 0
                results += group.values()
        return results, rw_calls
    finally:
        for system in systems:
            system.close()


def table(results: list[Result]) -> str:
    """Throughput and latency of every system, as a Markdown table."""
    lines = [
        "| workload | k | clients | system | calls/s (median) | min - max | p50 ms | p99 ms |",
        "|---|---:|---:|---|---:|---:|---:|---:|",
    ]
    for r in results:
        low = min(x.throughput for x in r.rounds)
        high = max(x.throughput for x in r.rounds)
        lines.append(
            f"| {r.workload} | {r.k} | {r.clients} | {r.system} | {r.throughput:,.0f} "
            f"| {low:,.0f} - {high:,.0f} | {r.median(lambda x: x.percentile(50)):.3f} "
            f"| {r.median(lambda x: x.percentile(99)):.3f} |"
        )
    return "\n".join(lines)


#: db/client targets at 4 clients, by k.
CLIENT_TARGETS = {5: 2.0, 10: 3.0}
BARE_TARGET = 0.8


def ratio_table(results: list[Result]) -> str:
    """db/client and db/bare per workload, k and client count, against the targets."""
    lines = [
        "| workload | k | clients | db / client | target | db / bare | target |",
        "|---|---:|---:|---:|---|---:|---|",
    ]
    by_key = {(r.workload, r.k, r.clients, r.system): r.throughput for r in results}
    configs = sorted(
        {(r.workload, r.k, r.clients) for r in results},
        key=lambda c: (list(WORKLOADS).index(c[0]), c[2], c[1]),
    )
    for workload, k, clients in configs:
        db = by_key.get((workload, k, clients, DB))
        client = by_key.get((workload, k, clients, CLIENT))
        bare = by_key.get((workload, k, clients, BARE))
        cells = []
        for base, target in (
            (client, CLIENT_TARGETS.get(k) if clients == 4 and workload == "read" else None),
            (bare, BARE_TARGET),
        ):
            if db is None or base is None:
                cells += ["-", "-"]
                continue
            ratio = db / base
            verdict = "-"
            if target is not None:
                verdict = f">= {target:g}x: " + ("met" if ratio >= target else "MISSED")
            cells += [f"{ratio:.2f}x", verdict]
        lines.append(f"| {workload} | {k} | {clients} | {' | '.join(cells)} |")
    return "\n".join(lines)


def machine(url: str) -> str:
    """One line describing the machine and versions."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        server = conn.execute("SHOW server_version").fetchone()[0]  # type: ignore[index]
        server_python = conn.execute("SELECT bench_server_python()").fetchone()[0]  # type: ignore[index]
    return (
        f"{os.cpu_count()} CPUs, {platform.system()} {platform.release()}, "
        f"Python {platform.python_version()} (client), PostgreSQL {server} with PL/Python "
        f"(server Python {server_python}), psycopg {psycopg.__version__}, "
        f"apiary {apiary.__version__}"
    )


def main(argv: list[str] | None = None) -> None:
    """Parse arguments, build the database, run the benchmark and print the tables."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.pg_placement", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--seconds", type=float, default=3.0, help="length of a round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per system")
    parser.add_argument("--warmup", type=float, default=1.0, help="warm-up seconds per system")
    parser.add_argument(
        "--k", type=int, nargs="+", default=[1, 3, 5, 10], help="point queries per call"
    )
    parser.add_argument(
        "--clients", type=int, nargs="+", default=[1, 4], help="concurrent client threads"
    )
    parser.add_argument(
        "--workloads",
        nargs="+",
        choices=list(WORKLOADS),
        default=list(WORKLOADS),
        help="read: k point reads; rw: k-1 point reads and one UPDATE",
    )
    parser.add_argument(
        "--systems", nargs="+", choices=list(SYSTEMS), default=list(SYSTEMS), help="systems to run"
    )
    parser.add_argument(
        "--url",
        default=DEFAULT_URL,
        help="a database on the PostgreSQL server to use (a superuser role); the benchmark "
        f"creates its own database there, dropping it first (default {DEFAULT_URL})",
    )
    parser.add_argument(
        "--database", default=DATABASE, help=f"the benchmark's database (default {DATABASE})"
    )
    args = parser.parse_args(argv)
    if min(args.k) < 1:
        parser.error("--k values must be at least 1")

    url = with_database(args.url, args.database)
    create_database(args.url, url)
    described = machine(url)
    print(f"machine: {described}", file=sys.stderr)
    results: list[Result] = []
    rw_calls = 0
    try:
        for clients in args.clients:
            found, committed = bench_clients(
                url,
                args.systems,
                args.workloads,
                args.k,
                clients,
                args.seconds,
                args.rounds,
                args.warmup,
            )
            results += found
            rw_calls += committed
    except Exception as exc:
        if "out of shared memory" not in str(exc):
            raise
        # Under SERIALIZABLE, PostgreSQL keeps the predicate locks of every transaction
        # that commits while an older serializable transaction is open anywhere on the
        # server; at thousands of calls a second they fill its lock table in moments.
        sys.exit(
            f"PostgreSQL ran out of predicate locks ({exc.__class__.__name__}: out of shared "
            "memory). Another session on this server probably held a serializable "
            "transaction open: run the benchmark on a server of its own (--url)."
        )
    counted = hits(url)
    if counted != rw_calls:
        raise AssertionError(f"{rw_calls} rw calls committed, but the table counts {counted} hits")

    print()
    print(f"Machine: {described}")
    print(
        f"Workload: one function per call, k point queries by primary key on {ROWS:,} rows "
        f"(rw: k-1 reads and one UPDATE), SERIALIZABLE; {args.rounds} rounds of "
        f"{args.seconds:g} s, interleaved, after {args.warmup:g} s warm-up; medians over rounds."
    )
    print()
    print(table(results))
    print()
    print(ratio_table(results))
    print()
    print(
        f"Checked: every system returned the loaded values; {rw_calls:,} rw calls "
        f"committed and the table counts {counted:,} hits."
    )


if __name__ == "__main__":
    # placement=db ships the module defining the app into the database under its import
    # name, and "__main__" is none: run the app from this module's importable twin.
    from benchmarks.pg_placement import main as run_main

    run_main()
