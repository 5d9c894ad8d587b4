"""Trace store benchmark: ingest, then "who touched row X" over a million events.

The store is filled through :meth:`TraceStore.ingest`, the spooler's own entry point, with
staged rows in the real payload format: each is made by :class:`apiary._capture.UnitTrace`
(the capture code the engines run) from the capture plans that
:func:`apiary._tracing.rewrite.plan_capture` makes for the statements below, fed with the
rows those statements' variants would return, and staged through
:meth:`UnitTrace.stage`. No OLTP database is involved: the figures are DuckDB's and the
store's, not SQLite's or PostgreSQL's.

The workload is a shop of ``--customers`` customers. A ``buy`` workflow has two units:

* ``browse+buy`` (a two-function transaction): a range read of the 5 richest customers of
  a city (5 read events), a point read of the buyer, an order insert, a balance update;
* ``history``: a join of the buyer with their orders (2 events per order, at most 2
  orders returned) and an aggregate (a statement-level event).

Buyers are drawn with a skew (a few customers are hot), so row histories range from
empty to long. Then, for several keys, the median over ``--reps`` repetitions of
``TraceStore.row_history`` on a store open read-only, and of ``apiary trace row`` run end
to end as a subprocess (Python start-up and imports included), ``--cli-reps`` times.
Run::

    .venv/bin/python -m benchmarks.trace_query --events 1000000
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import duckdb

from apiary._capture import ROWS, STAGE_TRACE, CapturePlan, UnitTrace
from apiary._database import Statement
from apiary._tracing.rewrite import plan_capture
from apiary._tracing.store import TraceStore
from apiary._tracing.tables import tables_of

SCHEMA = """
CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT NOT NULL, city TEXT NOT NULL,
                        balance INTEGER NOT NULL);
CREATE TABLE orders (customer_id INTEGER NOT NULL, order_no INTEGER NOT NULL,
                     amount INTEGER NOT NULL, status TEXT NOT NULL,
                     PRIMARY KEY (customer_id, order_no));
"""
TABLES = tables_of([SCHEMA])

RICHEST = "SELECT id, name FROM customers WHERE city = ? ORDER BY balance DESC, id LIMIT 5"
GET = "SELECT name, balance FROM customers WHERE id = ?"
PLACE = "INSERT INTO orders (customer_id, order_no, amount, status) VALUES (?, ?, ?, 'new')"
ADJUST = "UPDATE customers SET balance = balance - ? WHERE id = ?"
HISTORY = (
    "SELECT c.name, o.order_no, o.amount FROM customers c JOIN orders o "
    "ON o.customer_id = c.id WHERE c.id = ? ORDER BY o.order_no DESC LIMIT 2"
)
TOTAL = "SELECT count(*) FROM orders WHERE customer_id = ?"
CITIES = 50
BATCH = 1000  # staged rows per ingest, as the spooler's default batch


class _Staging:
    """A ``Database`` that keeps what :meth:`UnitTrace.stage` inserts, instead of a table."""

    def __init__(self) -> None:
        self.rows: list[tuple[int, str | None, str | None, str]] = []

    def execute(self, stmt: Statement, params: Sequence[Any]) -> int:
        assert stmt is STAGE_TRACE
        workflow_id, invocation_id, payload, _created = params
        self.rows.append((len(self.rows) + 1, workflow_id, invocation_id, payload))
        return 1

    def query(self, stmt: Statement, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        raise NotImplementedError


class Shop:
    """The shop's state, and the staged unit traces its workflows leave."""

    def __init__(self, customers: int, seed: int) -> None:
        self.random = random.Random(seed)
        self.plans: dict[str, CapturePlan] = {}
        for text in (RICHEST, GET, PLACE, ADJUST, HISTORY, TOTAL):
            self.plans[text] = plan_capture(text, TABLES)
        for text in (RICHEST, GET, PLACE, ADJUST, HISTORY):
            assert self.plans[text].mode == ROWS, text  # traced per row, as intended
        self.customers = customers
        self.balance = [1_000_000] * (customers + 1)
        self.orders: list[list[tuple[int, int]]] = [[] for _ in range(customers + 1)]
        self.touched = [0] * (customers + 1)
        self.staging = _Staging()
        self.events = 0
        self.workflows = 0

    def name(self, customer: int) -> str:
        return f"customer {customer}"

    def city(self, customer: int) -> str:
        return f"city-{customer % CITIES}"

    def buyer(self) -> int:
        # Skewed: a quarter of the purchases go to the first 0.1% of customers.
        if self.random.random() < 0.25:
            return self.random.randint(1, max(1, self.customers // 1000))
        return self.random.randint(1, self.customers)

    def _rows(self, trace: UnitTrace, number: int, text: str, rows: list[tuple[Any, ...]]) -> None:
        trace.rows(number, text, self.plans[text], rows)
        self.events += max(1, sum(len(self.plans[text].groups) for _ in rows))

    def buy(self) -> None:
        """One ``buy`` workflow: stages its two units."""
        self.workflows += 1
        wid = f"wf-{self.workflows}"
        buyer = self.buyer()
        city = self.city(buyer)
        # browse+buy: one transaction of two functions.
        trace = UnitTrace()
        browse = trace.begin(f"{wid}/browse", "browse", True)
        start = self.random.randint(0, self.customers // CITIES - 5)
        richest = [c * CITIES + buyer % CITIES for c in range(start, start + 5)]
        richest = [c for c in richest if 1 <= c <= self.customers] or [buyer]
        self._rows(trace, browse, RICHEST, [(c, self.name(c), c) for c in richest])
        trace.end(browse)
        buy = trace.begin(f"{wid}/buy", "buy", False)
        self._rows(trace, buy, GET, [(self.name(buyer), self.balance[buyer], buyer)])
        order_no = len(self.orders[buyer]) + 1
        amount = self.random.randint(1, 500)
        self.orders[buyer].append((order_no, amount))
        self._rows(trace, buy, PLACE, [(buyer, order_no, amount, "new")])
        self.balance[buyer] -= amount
        self._rows(trace, buy, ADJUST, [(buyer, self.name(buyer), city, self.balance[buyer])])
        trace.end(buy)
        trace.stage(self.staging, wid, f"{wid}/browse+buy")
        self.touched[buyer] += 1
        # history: a join and an aggregate.
        trace = UnitTrace()
        history = trace.begin(f"{wid}/history", "history", True)
        recent = self.orders[buyer][::-1][:2]
        joined = [(self.name(buyer), n, a, buyer, buyer, n) for n, a in recent]
        self._rows(trace, history, HISTORY, joined)
        trace.statement(history, TOTAL, self.plans[TOTAL])
        self.events += 1
        trace.end(history)
        trace.stage(self.staging, wid, f"{wid}/history")

    def take_staged(self, first_id: int) -> list[tuple[int, str | None, str | None, str]]:
        rows = [(first_id + i, w, v, p) for i, (_, w, v, p) in enumerate(self.staging.rows)]
        self.staging.rows.clear()
        return rows


def build(path: Path, events: int, customers: int, seed: int) -> dict[str, Any]:
    """Generate and ingest at least ``events`` events; return the figures."""
    shop = Shop(customers, seed)
    generating = ingesting = 0.0
    staged = units = 0
    with TraceStore(str(path), TABLES) as store:
        store.open()
        while shop.events < events:
            started = time.perf_counter()
            while len(shop.staging.rows) < BATCH and shop.events < events:
                shop.buy()
            batch = shop.take_staged(staged + 1)
            generating += time.perf_counter() - started
            started = time.perf_counter()
            stored = store.ingest(batch)
            ingesting += time.perf_counter() - started
            assert len(stored) == len(batch)
            staged += len(batch)
            units += len(batch)
    return {
        "shop": shop,
        "units": units,
        "generating": generating,
        "ingesting": ingesting,
    }


def median_ms(samples: Sequence[float]) -> float:
    return statistics.median(samples) * 1000


def time_api(path: Path, keys: list[tuple[str, dict[str, Any]]], reps: int) -> list[Any]:
    """``row_history`` per key, ``reps`` rounds over all keys (a load spike hits all)."""
    times: list[list[float]] = [[] for _ in keys]
    found = [0] * len(keys)
    with TraceStore(str(path), {}, read_only=True) as store:
        store.open()
        for _ in range(reps):
            for i, (table, key) in enumerate(keys):
                started = time.perf_counter()
                found[i] = len(store.row_history(table, **key))
                times[i].append(time.perf_counter() - started)
    return [(t, k, n, ts) for (t, k), n, ts in zip(keys, found, times, strict=True)]


def time_cli(path: Path, keys: list[tuple[str, dict[str, Any]]], reps: int) -> list[Any]:
    """``apiary trace row`` per key as a subprocess, ``reps`` rounds over all keys, and
    the floor: the same command doing nothing but start (Python, imports, argparse)."""
    apiary_cmd = str(Path(sys.executable).with_name("apiary"))
    commands = [
        [apiary_cmd, "trace", "row", "--store", str(path), table]
        + [f"{c}={v}" for c, v in key.items()]
        for table, key in keys
    ]
    commands.append([apiary_cmd, "trace", "row", "--help"])
    times: list[list[float]] = [[] for _ in commands]
    for _ in range(reps):
        for i, command in enumerate(commands):
            started = time.perf_counter()
            done = subprocess.run(command, capture_output=True, text=True, check=False)
            times[i].append(time.perf_counter() - started)
            assert done.returncode in (0, 1), done.stderr
    labels = [*keys, ("(start-up only: apiary trace row --help)", {})]
    return [(t, k, ts) for (t, k), ts in zip(labels, times, strict=True)]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000, help="events to store")
    parser.add_argument("--customers", type=int, default=100_000)
    parser.add_argument("--reps", type=int, default=20, help="row_history repetitions per key")
    parser.add_argument("--cli-reps", type=int, default=5, help="CLI runs per key")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--keep", metavar="PATH", help="build the store here and keep it")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(args.keep) if args.keep else Path(tmp) / "trace.duckdb"
        if path.exists():
            sys.exit(f"{path} exists; give a new path")
        built = build(path, args.events, args.customers, args.seed)
        shop: Shop = built["shop"]
        with duckdb.connect(str(path), read_only=True) as con:
            counts = {
                name: (con.execute(f"SELECT count(*) FROM {name}").fetchone() or (0,))[0]
                for name in ("customers_events", "orders_events", "statement_events")
            }
        stored_events = sum(counts.values())
        hot = max(range(1, shop.customers + 1), key=shop.touched.__getitem__)
        typical = sorted(range(1, shop.customers + 1), key=shop.touched.__getitem__)[
            shop.customers // 2
        ]
        keys: list[tuple[str, dict[str, Any]]] = [
            ("customers", {"id": hot}),
            ("customers", {"id": typical}),
            ("customers", {"id": shop.customers + 1}),  # never touched
            ("orders", {"customer_id": hot, "order_no": 1}),
            ("customers", {"city": "city-7"}),  # not a key: writes only, many rows
        ]
        load_before = os.getloadavg()[0]
        api = time_api(path, keys, args.reps)
        cli = time_cli(path, keys[:4], args.cli_reps)
        size = path.stat().st_size
        load_after = os.getloadavg()[0]

    print(f"# Trace queries over {stored_events:,} events")
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    print(
        f"\ncommit {commit or '?'}, duckdb {duckdb.__version__}, "
        f"Python {platform.python_version()}, {platform.machine()}, "
        f"{os.cpu_count()} CPUs; {args.customers:,} customers; load average "
        f"{load_before:.1f} before the queries, {load_after:.1f} after"
    )
    print("\n| stored | count |\n|---|---:|")
    print(f"| workflows | {shop.workflows:,} |")
    print(f"| staged units ingested | {built['units']:,} |")
    for name, count in counts.items():
        print(f"| {name} | {count:,} |")
    print(f"| file size | {size / 2**20:.0f} MiB |")
    rate = stored_events / built["ingesting"]
    print("\n| ingest (TraceStore.ingest, batches of 1000 units) | |\n|---|---:|")
    print(f"| time | {built['ingesting']:.1f} s |")
    print(f"| events/s | {rate:,.0f} |")
    print(f"| units/s | {built['units'] / built['ingesting']:,.0f} |")
    print(f"| (generating the payloads, not included) | {built['generating']:.1f} s |")
    print("\n| row_history (API, store open read-only) | found | median ms | min | max |")
    print("|---|---:|---:|---:|---:|")
    for table, key, found, times in api:
        what = f"{table} " + " ".join(f"{c}={v}" for c, v in key.items())
        print(
            f"| {what} | {found} | {median_ms(times):.1f} | {min(times) * 1000:.1f} "
            f"| {max(times) * 1000:.1f} |"
        )
    print("\n| apiary trace row (subprocess, end to end) | median ms | runs |\n|---|---:|---|")
    for table, key, times in cli:
        what = f"{table} " + " ".join(f"{c}={v}" for c, v in key.items())
        runs = ", ".join(f"{t * 1000:.0f}" for t in times)
        print(f"| {what} | {median_ms(times):.0f} | {runs} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
