"""PostgreSQL benchmark: what a one-key call costs on one database and on clusters of
several layouts, all routed directly.

Reads one counter (``get`` of ``benchmarks.cluster_routing``'s app, tracing off) with
uniformly random keys on four systems, interleaved round by round:

* ``single``: one database;
* ``cluster-1``: a cluster of one partition (the cluster engine's own cost);
* ``cluster-4x1``: four partitions on the first server;
* ``cluster-4x2``: four partitions, two on each of two servers (a second PostgreSQL
  instance on the same machine).

It separates the cost of routing from the cost of running a second server on the same
cores. Run::

    .venv/bin/python -m benchmarks.cluster_layout [--clients 1] [--rounds 3] [--duration 2]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import tempfile
from typing import Any

import apiary
from benchmarks._harness import run_threads
from benchmarks.cluster_routing import DEFAULT_URL, DEFAULT_URL2, KEYS, app, with_database

PREFIX = "apiary_bench_layout"


def _admin(url: str) -> Any:
    import psycopg

    return psycopg.connect(with_database(url, "postgres"), autocommit=True)


def main(argv: list[str] | None = None) -> None:
    """Create the databases, load them, time interleaved rounds, print a table, drop them."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--url", default=DEFAULT_URL, help="the first server")
    parser.add_argument("--url2", default=DEFAULT_URL2, help="the second server")
    parser.add_argument("--clients", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=2.0, help="seconds per round")
    args = parser.parse_args(argv)

    one, two = args.url, args.url2
    databases = {
        "single": one,
        "one": one,
        **{f"a{i}": one for i in range(4)},
        "b2": two,
        "b3": two,
    }
    names = {key: f"{PREFIX}_{key}" for key in databases}
    urls = {key: with_database(databases[key], names[key]) for key in databases}
    workdir = tempfile.mkdtemp(prefix="apiary-layout-")

    def cluster(keys: list[str]) -> str:
        path = os.path.join(workdir, "-".join(keys) + ".toml")
        listed = ", ".join(f'"{urls[k]}?pool_min={args.clients}"' for k in keys)
        with open(path, "w") as out:
            out.write(f"partitions = [{listed}]\n")
        return f"cluster:{path}"

    systems = {
        "single": f"{urls['single']}?pool_min={args.clients}",
        "cluster-1": cluster(["one"]),
        "cluster-4x1": cluster(["a0", "a1", "a2", "a3"]),
        "cluster-4x2": cluster(["a0", "a1", "b2", "b3"]),
    }
    for key, server in databases.items():
        with _admin(server) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{names[key]}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{names[key]}"')
    runtimes: dict[str, apiary.Runtime] = {}
    try:
        for system, url in systems.items():
            runtime = runtimes[system] = apiary.Runtime(app, url, trace=False, trace_store=None)
            runtime.install()
        for key in ["single", "one", "a0", "a1", "a2", "a3", "b2", "b3"]:
            import psycopg

            with psycopg.connect(urls[key], autocommit=True) as conn:
                owned = "TRUE"
                row = None
                if key != "single":
                    row = conn.execute("SELECT index, count FROM apiary.partition").fetchone()
                if row is not None:
                    owned = f"apiary.partition_hash(g::text) & {row[1] - 1} = {row[0]}"
                conn.execute(
                    "INSERT INTO counters (k, n) SELECT g, 0 FROM generate_series(1, %s) AS g "
                    f"WHERE {owned} ON CONFLICT DO NOTHING",
                    (KEYS,),
                )
        per_call: dict[str, list[float]] = {system: [] for system in systems}
        for number in range(args.rounds + 1):  # round 0 warms up
            order = list(systems)[number % len(systems) :] + list(systems)[: number % len(systems)]
            for system in order:
                call = runtimes[system].call

                def next_call(index: int, rng: random.Random, call: Any = call) -> Any:
                    key = rng.randint(1, KEYS)
                    return lambda: call("get", key=key)

                done = run_threads(args.clients, next_call, args.duration, seed=number)
                if number:
                    per_call[system].append(statistics.median(done.latencies) * 1e6)
        print(f"| system | p50 µs per call ({args.clients} client(s), median of rounds) |")
        print("|---|---:|")
        for system, values in per_call.items():
            print(f"| {system} | {statistics.median(values):.0f} |")
    finally:
        for runtime in runtimes.values():
            runtime.close()
        for key, server in databases.items():
            with _admin(server) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{names[key]}" WITH (FORCE)')


if __name__ == "__main__":
    main()
