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
line.

``--clients N`` (with ``--url``) runs each round's operations on N threads sharing the
runtime (its pool holds N connections), as ``apiary bench`` runs N clients.

``--backend`` (with ``--url``) then times the search unit's stored procedure inside one
backend, called from a PL/Python block with the requests the ``on`` rounds sent, in five
configurations that leave out one part of capture at a time (the block patches the
runtime loaded in that backend only, in a transaction it rolls back): ``off`` (tracing
off in the request), ``on``, ``on, no encoding`` (a unit's document is a constant),
``on, no events, no encoding`` (the variant statements run and their extra columns are
cut off, nothing is recorded), ``on, no plans, no encoding`` (no statement is captured:
only what tracing costs per unit). Run::

    .venv/bin/python -m benchmarks.trace_cost [--ops 3000] [--rounds 3]
    .venv/bin/python -m benchmarks.trace_cost --url postgresql://apiary:apiary@127.0.0.1:55434/apiary_test
    .venv/bin/python -m benchmarks.trace_cost --url postgresql://... --clients 4 --ops 8000
    .venv/bin/python -m benchmarks.trace_cost --backend --url postgresql://...
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sqlite3
import statistics
import tempfile
import threading
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


#: The PL/Python block of ``--backend``: ``%(calls)s`` is the JSON list of ``[sql,
#: [version, request]]`` calls; notices carry the result, one configuration a line.
_BACKEND_BLOCK = r"""
import json, statistics, sys, time
calls = json.loads(%(calls)r)
plan = plpy.prepare(calls[0][0].replace("%%s", "$1", 1).replace("%%s", "$2", 1), ["text", "text"])
plpy.execute(plan, calls[0][1])  # loads the runtime into this backend
runtime = [v for k, v in GD.items() if k.startswith("apiary:")][0]
unit_trace = sys.modules["apiary._capture"].UnitTrace
rows, staged_row, plans = unit_trace.rows, unit_trace.staged_row, runtime.plans
def cut_only(self, number, text, plan, found):
    cut = len(found[0]) - plan.extra if found else 0
    return [row[:cut] for row in found]
def constant(self, workflow_id, invocation_id):
    return (workflow_id, invocation_id, "{}", 0.0)
configs = {
    "off": (0, rows, staged_row, plans),
    "on": (1, rows, staged_row, plans),
    "on, no encoding": (1, rows, constant, plans),
    "on, no events, no encoding": (1, cut_only, constant, plans),
    "on, no plans, no encoding": (1, rows, constant, {}),
}
made = [0]
def requests(trace):
    out = []
    for version, request in (call[1] for call in calls):
        data = json.loads(request)
        made[0] += 1
        data["t"], data["w"] = trace, "backend-%%d" %% made[0]
        out.append([version, json.dumps(data)])
    return out
times = {name: [] for name in configs}
for number in range(%(rounds)d + 1):
    for name, (trace, unit_rows, unit_staged, unit_plans) in configs.items():
        unit_trace.rows, unit_trace.staged_row, runtime.plans = unit_rows, unit_staged, unit_plans
        batch = requests(trace)
        began = time.perf_counter()
        for arguments in batch:
            plpy.execute(plan, arguments)
        if number:  # the first round warms up
            times[name].append((time.perf_counter() - began) / len(batch) * 1e6)
unit_trace.rows, unit_trace.staged_row, runtime.plans = rows, staged_row, plans
for name, values in times.items():
    rounds = ", ".join("%%.0f" %% v for v in values)
    plpy.notice("%%s|%%.1f|%%s" %% (name, statistics.median(values), rounds))
"""


def _backend(url: str, calls: list[Any], rounds: int) -> None:
    """``--backend``: the search unit's stub timed inside one backend (see the docstring)."""
    import psycopg

    lines: list[str] = []
    block = _BACKEND_BLOCK % {"calls": json.dumps(calls), "rounds": rounds}
    with psycopg.connect(url, autocommit=True) as conn:
        conn.add_notice_handler(lambda notice: lines.append(notice.message_primary or ""))
        with conn.transaction():
            conn.execute(f"DO $apiary_block${block}$apiary_block$ LANGUAGE plpython3u")
            raise psycopg.Rollback()
    print(f"\nThe search unit's stored procedure, {len(calls)} calls a round, in one backend:\n")
    print("| configuration | µs per call (median) | rounds |")
    print("|---|---:|---|")
    for line in lines:
        name, median, values = line.split("|")
        print(f"| {name} | {median} | {values} |")


def _search_calls(runtime: apiary.Runtime, count: int) -> list[Any]:
    """Run ``count`` searches; return the stored procedure calls they made,
    ``[sql, [version, request]]`` each (the engine's calls, seen on their way)."""
    engine: Any = runtime._engine
    calls: list[Any] = []
    call = engine._call

    def seen(sql: str, params: tuple[Any, ...], **options: Any) -> Any:
        calls.append([sql, list(params)])
        return call(sql, params, **options)

    engine._call = seen
    try:
        for workflow, arguments in _operations("backend", 7, count * 2):
            if workflow == "search" and len(calls) < count:
                runtime.run(workflow, **arguments)
    finally:
        del engine._call
    return [c for c in calls if c[0] == calls[-1][0]]  # the search unit's, not bookkeeping


def _run_all(runtime: apiary.Runtime, operations: list[Any], clients: int) -> None:
    """Run ``operations``, by ``clients`` threads each taking every ``clients``-th one."""
    if clients == 1:
        for workflow, arguments in operations:
            runtime.run(workflow, **arguments)
        return

    def client(first: int) -> None:
        for workflow, arguments in operations[first::clients]:
            runtime.run(workflow, **arguments)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


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
    url = f"{database.url}?placement=db&pool_min=1&pool_max={max(4, args.clients)}"
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
                _run_all(runtime, operations, args.clients)
                runtime.flush_traces()
                wall = time.perf_counter() - began
                client = time.process_time() - client
                server = _server_ticks(postmaster) - server
                figures[name]["wall"].append(wall / args.ops * 1e6)
                figures[name]["client"].append(client / args.ops * 1e6)
                figures[name]["server"].append(server * tick / args.ops)
                traced += args.ops if name == "on" else 0
        store = os.path.join(tempfile.mkdtemp(prefix="apiary-trace-cost-"), "trace.duckdb")
        import duckdb  # noqa: F401 (imported before the clock starts, as a spooler has)
        import numpy  # noqa: F401

        server, spooling = _server_ticks(postmaster), time.process_time()
        runtimes["on"].spool(store)
        spooling = time.process_time() - spooling
        server = _server_ticks(postmaster) - server
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
    on_server = server * tick / traced
    print(
        f"\nspooling the on rounds' traces: {per_operation:.0f} µs of CPU per operation "
        f"in this process, {on_server:.0f} µs on the server"
    )
    if args.backend:
        database.create()
        try:
            runtime = apiary.Runtime(hotel.app, url, trace=True, trace_store=None)
            with runtime:
                runtime.install()
                database.load(WORKLOADS["hotel"], hotel.SCALES["default"])
                calls = _search_calls(runtime, min(args.ops, 1000))
            _backend(database.url, calls, args.rounds)
        finally:
            database.drop()


def main(argv: list[str] | None = None) -> None:
    """Time the configurations and print a table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--ops", type=int, default=3000, help="operations per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--clients", type=int, default=1, help="with --url: threads running the operations"
    )
    parser.add_argument("--url", help="a PostgreSQL superuser's URL: measure placement=db")
    parser.add_argument(
        "--backend", action="store_true", help="with --url: also time capture inside a backend"
    )
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
