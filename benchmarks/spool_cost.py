"""What spooling costs: CPU per operation to move staged traces into a DuckDB store.

Runs ``--ops`` operations of a workload (``hotel`` or ``retwis``, default data, the
workload's mix) once on a SQLite file with tracing on and no spooler, so their traces
stay staged. Then, ``--reps`` times, copies that file and spools all of it into a new
DuckDB store (:meth:`Spooler.spool_all`, then closing the store, which checkpoints it),
and prints the CPU time of this process per operation: the median and every repetition.

To compare two versions of the code, run it with ``PYTHONPATH`` pointing at a worktree
of the other one, alternating::

    .venv/bin/python -m benchmarks.spool_cost --workload hotel --ops 8000 --reps 5
    PYTHONPATH=/tmp/old/src .venv/bin/python -m benchmarks.spool_cost --workload hotel \
        --ops 8000 --reps 5

The staged file is kept in ``--cache`` (default: the system's temporary folder) and made
again only when missing, so both versions spool the same traces.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import sqlite3
import statistics
import tempfile
import time

import apiary
from apiary._bench import hotel, retwis
from apiary._tracing.spool import Spooler
from apiary._tracing.store import TraceStore
from apiary._tracing.tables import tables_of

WORKLOADS = {"hotel": hotel, "retwis": retwis}


def _staged(workload: str, ops: int, cache: str) -> str:
    """A SQLite file holding the staged traces of ``ops`` operations (made once)."""
    path = os.path.join(cache, f"apiary-spool-cost-{workload}-{ops}.db")
    if os.path.exists(path):
        return path
    module = WORKLOADS[workload]
    making = path + ".making"
    if os.path.exists(making):
        os.remove(making)
    runtime = apiary.Runtime(module.app, f"sqlite:///{making}", trace=True, trace_store=None)
    try:
        runtime.install()
        with sqlite3.connect(making) as conn:
            for table, columns, rows in module.data(module.SCALES["default"]):
                marks = ", ".join("?" * len(columns))
                conn.executemany(
                    f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})", rows
                )
        rng = random.Random(1)
        names = list(module.MIX)
        weights = [module.MIX[name] for name in names]
        params = module.SCALES["default"]
        for number in range(ops):
            op = rng.choices(names, weights)[0]
            workflow, arguments = module.operation(op, rng, params, f"s-{number}")
            runtime.run(workflow, **arguments)
    finally:
        runtime.close()
    os.replace(making, path)
    return path


def main(argv: list[str] | None = None) -> None:
    """Spool the same staged traces ``--reps`` times; print CPU µs per operation."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--workload", choices=sorted(WORKLOADS), default="hotel")
    parser.add_argument("--ops", type=int, default=8000, help="operations whose traces spool")
    parser.add_argument("--reps", type=int, default=5, help="spools of the same traces")
    parser.add_argument("--cache", default=tempfile.gettempdir(), help="folder of staged files")
    args = parser.parse_args(argv)
    module = WORKLOADS[args.workload]
    source = _staged(args.workload, args.ops, args.cache)
    directory = tempfile.mkdtemp(prefix="apiary-spool-cost-")
    costs = []
    try:
        for rep in range(args.reps):
            copy = os.path.join(directory, f"copy-{rep}.db")
            shutil.copy(source, copy)
            runtime = apiary.Runtime(module.app, f"sqlite:///{copy}", trace=True, trace_store=None)
            store = TraceStore(
                os.path.join(directory, f"store-{rep}.duckdb"), tables_of(module.app.schemas)
            )
            try:
                store.open()
                began = time.process_time()
                Spooler(runtime._engine, store).spool_all()
                store.close()
                costs.append((time.process_time() - began) / args.ops * 1e6)
            finally:
                store.close()
                runtime.close()
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    rounded = ", ".join(f"{cost:.1f}" for cost in costs)
    print(
        f"{args.workload}: spooling {args.ops} operations' traces: "
        f"{statistics.median(costs):.1f} µs of CPU per operation (median; {rounded})"
    )


if __name__ == "__main__":
    main()
