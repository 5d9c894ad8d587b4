"""Where tracing's time goes: the hotel workload on SQLite, in-process, one thread.

Runs the same operations (80% search, 20% reserve) on five configurations, interleaved
round by round, and prints microseconds per operation:

* ``off``: ``trace=False``;
* ``on``: ``trace=True`` (the default);
* ``on, no encoding``: tracing on, but a unit's trace document is not encoded as JSON;
* ``on, no staging``: tracing on, but read-only units' traces are not staged;
* ``on, neither``: both left out.

The last three patch the runtime in this process only, to split the cost of tracing into
capture, encoding and staging. Run::

    .venv/bin/python -m benchmarks.trace_cost [--ops 3000] [--rounds 3]
"""

from __future__ import annotations

import argparse
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


def main(argv: list[str] | None = None) -> None:
    """Time the configurations and print a table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--ops", type=int, default=3000, help="operations per round")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    params = hotel.SCALES["default"]
    directory = tempfile.mkdtemp(prefix="apiary-trace-cost-")
    runtimes = {"off": _runtime(directory, "off", False), "on": _runtime(directory, "on", True)}
    encode, add = _capture._codec.dumps_rows, _base._TraceBuffer.add
    timings: dict[str, list[float]] = {name: [] for name in CONFIGS}
    try:
        for number in range(args.rounds):
            for name, (trace, skip) in CONFIGS.items():
                rng = random.Random(number)
                operations: list[tuple[str, dict[str, Any]]] = [
                    hotel.operation(
                        "search" if rng.random() < hotel.MIX["search"] else "reserve",
                        rng,
                        params,
                        f"{name}-{number}-{i}",
                    )
                    for i in range(args.ops)
                ]
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
