"""Where tracing's time goes: the hotel workload, in-process, one thread.

On SQLite (the default), runs the same operations (80% search, 20% reserve) on five
configurations, interleaved round by round, and prints microseconds per operation:

* ``off``: ``trace=False``;
* ``on``: ``trace=True`` (the default);
* ``on, no encoding``: tracing on, but a unit's trace document is not encoded as JSON;
* ``on, no staging``: tracing on, but read-only units' traces are not staged;
* ``on, neither``: both left out.

The last three patch the runtime in this process only, to split the cost of tracing into
capture, encoding and staging.

With ``--url`` (a PostgreSQL superuser's URL), runs ``off`` and ``on`` with
placement=db in a database of its own (``apiary_trace_cost``, dropped and created
afresh) and splits each operation's cost by where it is spent: wall time, CPU of this
process (the client: requests, answers, staging the read-only units' traces), CPU of the
server's processes (the backends, where capture runs, and the WAL writer and
checkpointer). No spooler runs during the rounds; afterwards the traces staged by the
``on`` rounds are spooled into a new DuckDB file, and its CPU per operation is the last
line. Run::

    .venv/bin/python -m benchmarks.trace_cost [--ops 3000] [--rounds 3]
    .venv/bin/python -m benchmarks.trace_cost --url postgresql://apiary:apiary@127.0.0.1:55434/apiary_test
"""

from __future__ import annotations

import argparse
import os
import random
import sqlite3
import statistics
import tempfile
import time
from typing import Any

import apiary
from apiary import _capture
from apiary._bench import hotel
from apiary._engines import _base

CONFIGS = {
    "off": (False, ""),
    "on": (True, ""),
    "on, no encoding": (True, "encoding"),
    "on, no staging": (True, "staging"),
    "on, neither": (True, "both"),
}


def _runtime(directory: str, name: str, trace: bool) -> apiary.Runtime:
    path = f"{directory}/{name}.db"
    runtime = apiary.Runtime(hotel.app, f"sqlite:///{path}", trace=trace, trace_store=None)
    runtime.install()
    with sqlite3.connect(path) as conn:
        for table, columns, rows in hotel.data(hotel.SCALES["default"]):
            marks = ", ".join("?" * len(columns))
            conn.executemany(f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})", rows)
    return runtime


def _operations(prefix: str, seed: int, count: int) -> list[tuple[str, dict[str, Any]]]:
    """``count`` hotel operations (80% search), the same for every configuration."""
    rng = random.Random(seed)
    params = hotel.SCALES["default"]
    return [
        hotel.operation(
            "search" if rng.random() < hotel.MIX["search"] else "reserve",
            rng,
            params,
            f"{prefix}-{i}",
        )
        for i in range(count)
    ]


def _server_ticks(postmaster: int) -> int:
    """CPU clock ticks of a PostgreSQL server: the postmaster, its live children, and the
    children it has reaped."""
    ticks = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as file:
                fields = file.read().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        pid, ppid = int(entry), int(fields[1])
        if pid == postmaster:
            ticks += sum(int(f) for f in fields[11:15])  # utime stime cutime cstime
        elif ppid == postmaster:
            ticks += int(fields[11]) + int(fields[12])
    return ticks


def _postgres(args: argparse.Namespace) -> None:
    """The PostgreSQL mode (see the module docstring)."""
    import psycopg

    from apiary._bench.systems import PostgresDatabase
    from apiary._bench.workloads import WORKLOADS

    database = PostgresDatabase(args.url, "apiary_trace_cost")
    database.create()
    with psycopg.connect(database.url, autocommit=True) as conn:
        backend = conn.execute("SELECT pg_backend_pid()").fetchone()[0]  # type: ignore[index]
        with open(f"/proc/{backend}/stat") as file:
            postmaster = int(file.read().rsplit(")", 1)[1].split()[1])
    url = f"{database.url}?placement=db&pool_min=1&pool_max=4"
    runtimes = {
        name: apiary.Runtime(hotel.app, url, trace=name == "on", trace_store=None)
        for name in ("off", "on")
    }
    tick = 1e6 / os.sysconf("SC_CLK_TCK")
    figures: dict[str, dict[str, list[float]]] = {
        name: {"wall": [], "client": [], "server": []} for name in runtimes
    }
    traced = 0
    try:
        runtimes["off"].install()
        database.load(WORKLOADS["hotel"], hotel.SCALES["default"])
        runtimes["on"].install()
        for number in range(args.rounds):
            for name, runtime in runtimes.items():
                operations = _operations(f"{name}-{number}", number, args.ops)
                server, client = _server_ticks(postmaster), time.process_time()
                began = time.perf_counter()
                for workflow, arguments in operations:
                    runtime.run(workflow, **arguments)
                runtime.flush_traces()
                wall = time.perf_counter() - began
                client = time.process_time() - client
                server = _server_ticks(postmaster) - server
                figures[name]["wall"].append(wall / args.ops * 1e6)
                figures[name]["client"].append(client / args.ops * 1e6)
                figures[name]["server"].append(server * tick / args.ops)
                traced += args.ops if name == "on" else 0
        store = os.path.join(tempfile.mkdtemp(prefix="apiary-trace-cost-"), "trace.duckdb")
        spooling = time.process_time()
        runtimes["on"].spool(store)
        spooling = time.process_time() - spooling
    finally:
        for runtime in runtimes.values():
            runtime.close()
        database.drop()
    print("| configuration | wall µs/op | client CPU µs/op | server CPU µs/op |")
    print("|---|---:|---:|---:|")
    for name, columns in figures.items():
        cells = " | ".join(f"{statistics.median(columns[c]):.0f}" for c in columns)
        print(f"| {name} | {cells} |")
    per_operation = spooling / traced * 1e6
    print(f"\nspooling the on rounds' traces: {per_operation:.0f} µs of CPU per operation")


def main(argv: list[str] | None = None) -> None:
    """Time the configurations and print a table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--ops", type=int, default=3000, help="operations per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--url", help="a PostgreSQL superuser's URL: measure placement=db")
    args = parser.parse_args(argv)
    if args.url:
        _postgres(args)
        return
    directory = tempfile.mkdtemp(prefix="apiary-trace-cost-")
    runtimes = {"off": _runtime(directory, "off", False), "on": _runtime(directory, "on", True)}
    encode, add = _capture._codec.dumps_rows, _base._TraceBuffer.add
    timings: dict[str, list[float]] = {name: [] for name in CONFIGS}
    try:
        for number in range(args.rounds):
            for name, (trace, skip) in CONFIGS.items():
                operations = _operations(f"{name}-{number}", number, args.ops)
                no_encoding = skip in ("encoding", "both")
                no_staging = skip in ("staging", "both")
                _capture._codec.dumps_rows = (lambda doc: "{}") if no_encoding else encode  # type: ignore[assignment]
                _base._TraceBuffer.add = (lambda self, row: None) if no_staging else add  # type: ignore[method-assign]
                runtime = runtimes["on" if trace else "off"]
                began = time.perf_counter()
                for workflow, arguments in operations:
                    runtime.run(workflow, **arguments)
                timings[name].append((time.perf_counter() - began) / args.ops * 1e6)
    finally:
        _capture._codec.dumps_rows = encode  # type: ignore[assignment]
        _base._TraceBuffer.add = add  # type: ignore[method-assign]
        for runtime in runtimes.values():
            runtime.close()
    print("| configuration | µs per operation (median of rounds) | rounds |")
    print("|---|---:|---|")
    for name, values in timings.items():
        rounds = ", ".join(f"{v:.0f}" for v in values)
        print(f"| {name} | {statistics.median(values):.0f} | {rounds} |")


if __name__ == "__main__":
    main()
