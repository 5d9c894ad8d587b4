"""Where one placement=db call's time goes: bare procedure, the unit's stub, ``rt.call``.

Sequential calls from one thread, k point reads per call, on the database that
``benchmarks.pg_placement`` creates (run that first, or pass ``--setup``). Three ways to do
the same reads, each timed over ``--calls`` calls, repeated ``--rounds`` times in turn:

* ``bare``: the hand-written PL/Python procedure, one prepared ``SELECT`` on a psycopg
  connection of this script's own;
* ``stub``: the unit's stored procedure that Apiary compiled, called the same way with
  the request Apiary would send (what placement=db costs inside the database);
* ``rt.call``: the public API, ``Runtime.call`` on ``?placement=db`` (adds the client
  side: arguments, request and answer encoding, the connection pool).

Run::

    .venv/bin/python -m benchmarks.pg_call_path --url postgresql://apiary:apiary@127.0.0.1:55433/apiary_test
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from collections.abc import Callable, Sequence
from urllib.parse import urlsplit, urlunsplit

import psycopg

import apiary
from apiary import _codec
from apiary._engines.pgwire import stub_name
from benchmarks import pg_placement


def _database_url(url: str, database: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path=f"/{database}", query=""))


def _timed(call: Callable[[], object], calls: int) -> float:
    begun = time.perf_counter()
    for _ in range(calls):
        call()
    return (time.perf_counter() - begun) / calls * 1e6


def main(argv: Sequence[str] | None = None) -> None:
    """Print microseconds per call for each path and k."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", default=pg_placement.DEFAULT_URL, help="a superuser URL")
    parser.add_argument("--database", default=pg_placement.DATABASE)
    parser.add_argument("--k", type=int, nargs="+", default=[1, 10])
    parser.add_argument("--calls", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)

    url = _database_url(args.url, args.database)
    rng = random.Random(0)
    rt = apiary.Runtime(pg_placement.app, f"{url}?placement=db")
    conn = psycopg.connect(url, autocommit=True, prepare_threshold=0)
    try:
        unit = rt._call_units["read_rows"]
        stub_sql = f'SELECT apiary."{stub_name(pg_placement.app.name, unit)}"(%s, %s)'
        print("| k | path | us per call (median of rounds) | rounds |")
        print("|---:|---|---:|---|")
        for k in args.k:
            keys = [rng.randint(1, pg_placement.ROWS) for _ in range(k)]
            payload = _codec.dumps({"w": None, "p": {"keys": keys}, "i": {}, "s": None, "c": "x/1"})
            paths: dict[str, Callable[[], object]] = {
                "bare": lambda keys=keys: conn.execute(
                    "SELECT bare_read_rows(%s)", (keys,), prepare=True
                ).fetchone(),
                "stub": lambda payload=payload: conn.execute(
                    stub_sql, (rt.version, payload), prepare=True
                ).fetchone(),
                "rt.call": lambda keys=keys: rt.call("read_rows", keys=keys),
            }
            for call in paths.values():
                _timed(call, args.calls // 5)  # warm-up: plans, caches
            times: dict[str, list[float]] = {name: [] for name in paths}
            for _ in range(args.rounds):
                for name, call in paths.items():
                    times[name].append(_timed(call, args.calls))
            for name, measured in times.items():
                rounds = ", ".join(f"{t:.1f}" for t in measured)
                print(f"| {k} | {name} | {statistics.median(measured):.1f} | {rounds} |")
    finally:
        conn.close()
        rt.close()


if __name__ == "__main__":
    main()
