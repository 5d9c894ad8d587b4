"""Core benchmark: a 3-function workflow on Apiary's SQLite engine against plain ``sqlite3``.

The workload is a shop purchase, three transactions in a chain::

    read_price(item)                      read-only   SELECT price
    add_to_cart(cart, item, qty, price)   write       INSERT ... ON CONFLICT DO UPDATE
    decrement_stock(item, added)          write       UPDATE ... RETURNING stock

Apiary runs it as a workflow of three units (no transaction group), with the runtime's
record modes ``sfr`` (the default), ``all`` and ``none``, with tracing off, and as
``traced``: ``sfr`` with tracing on (the default of :class:`apiary.Runtime`: each unit
stages its trace in its transaction, a background thread spools it into DuckDB).
The baseline runs the same three
transactions with the same SQL in plain ``sqlite3``: same schema and data, same PRAGMAs
(WAL, ``synchronous=NORMAL``, ``busy_timeout``, ``foreign_keys``), ``BEGIN IMMEDIATE`` for
the writes and a deferred ``BEGIN`` for the read. With several threads, each baseline
thread has its own connection, and writers wait for each other in SQLite's busy handler,
as Apiary's do.

Every system gets a fresh database file, preloaded with the same items. Rounds are
interleaved (A, B, C, A, B, C, ...) after a warm-up, so that drift of the machine hits every
system alike; the table shows medians over rounds. Run::

    .venv/bin/python -m benchmarks.core_sqlite --seconds 3 --rounds 3

``--profile N`` instead runs N Apiary workflows (``record="sfr"``, one thread) under
cProfile and prints where the time goes; ``--wal-pages`` prints how many pages each
system writes to the WAL per workflow.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import platform
import pstats
import random
import sqlite3
import statistics
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import apiary
from benchmarks._harness import Round, run_threads

ITEMS = 10_000
CARTS = 1_000
INITIAL_STOCK = 10_000_000
BUSY_TIMEOUT_MS = 10_000  # Apiary's SQLite default

SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    item_id INTEGER PRIMARY KEY,
    price   INTEGER NOT NULL,
    stock   INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS cart_items (
    cart_id  INTEGER NOT NULL,
    item_id  INTEGER NOT NULL,
    quantity INTEGER NOT NULL,
    price    INTEGER NOT NULL,
    PRIMARY KEY (cart_id, item_id)
);
"""

PRICE_SQL = "SELECT price FROM items WHERE item_id = ?"
ADD_TO_CART_SQL = (
    "INSERT INTO cart_items (cart_id, item_id, quantity, price) VALUES (?, ?, ?, ?) "
    "ON CONFLICT (cart_id, item_id) DO UPDATE SET quantity = quantity + excluded.quantity, "
    "price = excluded.price"
)
TAKE_STOCK_SQL = (
    "UPDATE items SET stock = stock - ? WHERE item_id = ? AND stock >= ? RETURNING stock"
)

# --------------------------------------------------------------------------------------
# The workflow in Apiary
# --------------------------------------------------------------------------------------

app = apiary.App("shop_bench")
app.schema(SCHEMA)

PRICE = apiary.sql(PRICE_SQL)
ADD_TO_CART = apiary.sql(ADD_TO_CART_SQL)
TAKE_STOCK = apiary.sql(TAKE_STOCK_SQL)


@app.function
def read_price(ctx: apiary.TxContext, item: int) -> int | None:
    """The item's price, or None if there is no such item."""
    row = ctx.query_one(PRICE, item)
    return None if row is None else int(row[0])


@app.function
def add_to_cart(ctx: apiary.TxContext, cart: int, item: int, quantity: int, price: int) -> int:
    """Put ``quantity`` of the item in the cart at ``price``; return how many were added."""
    return quantity if ctx.execute(ADD_TO_CART, cart, item, quantity, price) == 1 else 0


@app.function
def decrement_stock(ctx: apiary.TxContext, item: int, added: int) -> int | None:
    """Take what was added from the stock; return the stock left (None if too little)."""
    row = ctx.query_one(TAKE_STOCK, added, item, added)
    return None if row is None else int(row[0])


@app.workflow
def buy(cart: int, item: int, quantity: int):  # type: ignore[no-untyped-def]
    """Read the price, add to the cart, take from the stock: three transactions."""
    price = read_price(item)
    added = add_to_cart(cart, item, quantity, price)
    return decrement_stock(item, added)


# --------------------------------------------------------------------------------------
# The same three transactions in plain sqlite3
# --------------------------------------------------------------------------------------


def plain_connect(path: Path) -> sqlite3.Connection:
    """A connection configured as Apiary's SQLite engine configures its own."""
    conn = sqlite3.connect(
        path,
        isolation_level=None,
        check_same_thread=False,
        cached_statements=512,
        timeout=BUSY_TIMEOUT_MS / 1000,
    )
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute("PRAGMA foreign_keys = ON")
    return conn


@contextlib.contextmanager
def plain_transaction(conn: sqlite3.Connection, *, write: bool) -> Iterator[None]:
    """``BEGIN IMMEDIATE`` (writes) or ``BEGIN`` (reads) ... ``COMMIT``, or ``ROLLBACK``."""
    conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
    try:
        yield
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def plain_buy(conn: sqlite3.Connection, cart: int, item: int, quantity: int) -> int | None:
    """The workflow's three transactions, hand-written."""
    with plain_transaction(conn, write=False):
        row = conn.execute(PRICE_SQL, (item,)).fetchone()
    price = None if row is None else int(row[0])
    with plain_transaction(conn, write=True):
        changed = conn.execute(ADD_TO_CART_SQL, (cart, item, quantity, price)).rowcount
    added = quantity if changed == 1 else 0
    with plain_transaction(conn, write=True):
        rows = conn.execute(TAKE_STOCK_SQL, (added, item, added)).fetchall()
    return int(rows[0][0]) if rows else None


# --------------------------------------------------------------------------------------
# Systems under test
# --------------------------------------------------------------------------------------

#: A callable that runs one workflow with (cart, item, quantity); one per thread.
Runner = Callable[[int, int, int], Any]


class System:
    """One contender: owns its database file; hands each thread a runner."""

    name = ""

    def __init__(self, path: Path) -> None:
        self.path = path

    def runner(self) -> Runner:
        """A runner for the calling thread."""
        raise NotImplementedError

    def close(self) -> None:
        """Release connections."""

    def check(self, workflows: int) -> str:
        """Check the database after ``workflows`` runs; return a short summary."""
        conn = plain_connect(self.path)
        try:
            taken = conn.execute("SELECT ? - sum(stock) FROM items", (ITEMS * INITIAL_STOCK,))
            stock_taken = taken.fetchone()[0]
            in_carts = conn.execute("SELECT sum(quantity) FROM cart_items").fetchone()[0]
        finally:
            conn.close()
        if stock_taken != workflows or in_carts != workflows:
            raise AssertionError(
                f"{self.name}: {workflows} workflows ran, but {stock_taken} units left the "
                f"stock and {in_carts} are in carts"
            )
        return f"{workflows} workflows, stock and carts agree"


class PlainSystem(System):
    """Plain ``sqlite3``: a connection per thread; writers wait in SQLite's busy handler."""

    name = "plain sqlite3"

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self._connections: list[sqlite3.Connection] = []

    def runner(self) -> Runner:
        conn = plain_connect(self.path)
        self._connections.append(conn)
        return lambda cart, item, quantity: plain_buy(conn, cart, item, quantity)

    def close(self) -> None:
        for conn in self._connections:
            conn.close()


class ApiarySystem(System):
    """One shared :class:`apiary.Runtime` (thread-safe) in one record mode."""

    record: Any = "sfr"
    trace = False

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.name = f'apiary, record="{self.record}"' + (", traced" if self.trace else "")
        # Traced, the runtime's background thread spools traces into <db>-trace.duckdb
        # while the workflows run, as it does by default.
        self.runtime = apiary.Runtime(
            app, f"sqlite:///{path}", record=self.record, trace=self.trace
        )
        self.runtime.install()

    def runner(self) -> Runner:
        run = self.runtime.run
        return lambda cart, item, quantity: run("buy", cart=cart, item=item, quantity=quantity)

    def close(self) -> None:
        self.runtime.close()

    def check(self, workflows: int) -> str:
        summary = super().check(workflows)
        conn = plain_connect(self.path)
        try:
            statuses = dict(
                conn.execute("SELECT status, count(*) FROM apiary_workflows GROUP BY status")
            )
            outputs = conn.execute("SELECT count(*) FROM apiary_outputs").fetchone()[0]
        finally:
            conn.close()
        expected = {} if self.record == "none" else {"SUCCESS": workflows}
        if statuses != expected or outputs:
            raise AssertionError(
                f"{self.name}: status rows {statuses}, {outputs} recorded outputs left"
            )
        return f"{summary}; status rows {statuses or 'none'}, no recorded output left"


class ApiarySFR(ApiarySystem):
    record = "sfr"


class ApiaryTraced(ApiarySystem):
    record = "sfr"
    trace = True


class ApiaryAll(ApiarySystem):
    record = "all"


class ApiaryNone(ApiarySystem):
    record = "none"


SYSTEMS: dict[str, type[System]] = {
    "plain": PlainSystem,
    "sfr": ApiarySFR,
    "traced": ApiaryTraced,
    "all": ApiaryAll,
    "none": ApiaryNone,
}


def preload(path: Path) -> None:
    """Create the schema (if missing) and the items, identical for every system."""
    rng = random.Random(7)
    conn = plain_connect(path)
    try:
        conn.executescript(SCHEMA)
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(
            "INSERT INTO items (item_id, price, stock) VALUES (?, ?, ?)",
            ((i, rng.randint(100, 10_000), INITIAL_STOCK) for i in range(1, ITEMS + 1)),
        )
        conn.execute("COMMIT")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()


# --------------------------------------------------------------------------------------
# Measuring
# --------------------------------------------------------------------------------------


@dataclass
class Result:
    """All rounds of one system at one thread count."""

    system: str
    threads: int
    rounds: list[Round] = field(default_factory=list)
    checked: str = ""

    def median(self, metric: Callable[[Round], float]) -> float:
        """Median of a metric over rounds."""
        return statistics.median(metric(r) for r in self.rounds)


def run_timed(runners: list[Runner], seconds: float, seed: int) -> Round:
    """Run workflows on every runner (one thread each) for ``seconds``."""

    def next_call(index: int, rng: random.Random) -> Callable[[], Any]:
        cart, item = rng.randint(1, CARTS), rng.randint(1, ITEMS)
        return lambda: runners[index](cart, item, 1)

    return run_threads(len(runners), next_call, seconds, seed)


def bench_threads(
    names: list[str], threads: int, seconds: float, rounds: int, warmup: float, root: Path
) -> list[Result]:
    """Benchmark every system at one thread count, rounds interleaved."""
    systems: list[System] = []
    try:
        for key in names:
            path = root / f"{key}-t{threads}.db"
            preload(path)
            systems.append(SYSTEMS[key](path))
        runners = {s.name: [s.runner() for _ in range(threads)] for s in systems}
        results = {s.name: Result(s.name, threads) for s in systems}
        totals = dict.fromkeys(results, 0)
        for system in systems:
            totals[system.name] += run_timed(runners[system.name], warmup, seed=0).ops
        for number in range(1, rounds + 1):
            for system in systems:
                measured = run_timed(runners[system.name], seconds, seed=number)
                results[system.name].rounds.append(measured)
                totals[system.name] += measured.ops
                print(
                    f"  threads={threads} round {number}/{rounds} {system.name:<22} "
                    f"{measured.throughput:8.0f} workflows/s",
                    file=sys.stderr,
                    flush=True,
                )
        for system in systems:
            results[system.name].checked = system.check(totals[system.name])
        return list(results.values())
    finally:
        for system in systems:
            system.close()


def table(results: list[Result]) -> str:
    """The results as a Markdown table, with ratios to the plain baselines."""
    lines = [
        "| threads | system | workflows/s (median) | min - max | p50 ms | p99 ms "
        "| vs plain sqlite3 |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]
    for threads in sorted({r.threads for r in results}):
        group = [r for r in results if r.threads == threads]
        base = {r.system: r.median(lambda x: x.throughput) for r in group}
        plain = base.get(PlainSystem.name)
        for r in group:
            tput = r.median(lambda x: x.throughput)
            low = min(x.throughput for x in r.rounds)
            high = max(x.throughput for x in r.rounds)
            ratio = f"{tput / plain:.2f}x" if plain else "-"
            lines.append(
                f"| {threads} | {r.system} | {tput:,.0f} | {low:,.0f} - {high:,.0f} "
                f"| {r.median(lambda x: x.percentile(50)):.3f} "
                f"| {r.median(lambda x: x.percentile(99)):.3f} | {ratio} |"
            )
    return "\n".join(lines)


def machine() -> str:
    """One line describing the machine and versions."""
    import os

    return (
        f"{os.cpu_count()} CPUs, {platform.system()} {platform.release()}, "
        f"Python {platform.python_version()}, SQLite {sqlite3.sqlite_version}, "
        f"apiary {apiary.__version__}"
    )


def wal_pages(names: list[str], root: Path, workflows: int = 50) -> None:
    """Print the WAL pages (frames) each system writes per workflow, one thread.

    Every committed transaction appends each page it changed to the WAL; a checkpoint
    later copies them into the database file (and syncs it). Fewer than 1,000 frames are
    written, so no automatic checkpoint interferes with the count.
    """
    print("| system | WAL pages per workflow |")
    print("|---|---:|")
    for key in names:
        path = root / f"wal-{key}.db"
        preload(path)
        system = SYSTEMS[key](path)
        try:
            runner = system.runner()
            rng = random.Random(1)
            for _ in range(2_000):  # let the tables grow past their first pages
                runner(rng.randint(1, CARTS), rng.randint(1, ITEMS), 1)
            observer = plain_connect(path)
            try:
                observer.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
                for _ in range(workflows):
                    runner(rng.randint(1, CARTS), rng.randint(1, ITEMS), 1)
                frames = observer.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()[1]
            finally:
                observer.close()
        finally:
            system.close()
        print(f"| {system.name} | {frames / workflows:.1f} |")


def profile(workflows: int, root: Path, top: int) -> None:
    """Run ``workflows`` Apiary workflows under cProfile; print the top functions."""
    path = root / "profile.db"
    preload(path)
    system = ApiarySFR(path)
    try:
        runner = system.runner()
        rng = random.Random(1)
        for _ in range(200):  # warm caches
            runner(rng.randint(1, CARTS), rng.randint(1, ITEMS), 1)
        profiler = cProfile.Profile()
        profiler.enable()
        for _ in range(workflows):
            runner(rng.randint(1, CARTS), rng.randint(1, ITEMS), 1)
        profiler.disable()
    finally:
        system.close()
    for order in ("tottime", "cumulative"):
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats(order).print_stats(top)
        print(out.getvalue())


def main(argv: list[str] | None = None) -> None:
    """Parse arguments, run the benchmark and print the table."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.core_sqlite", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--seconds", type=float, default=3.0, help="length of a round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per system")
    parser.add_argument("--warmup", type=float, default=1.0, help="warm-up seconds per system")
    parser.add_argument(
        "--threads", type=int, nargs="+", default=[1, 4], help="thread counts to measure"
    )
    parser.add_argument(
        "--systems",
        nargs="+",
        choices=list(SYSTEMS),
        default=list(SYSTEMS),
        help="systems to run",
    )
    parser.add_argument(
        "--profile", type=int, metavar="N", help="profile N Apiary workflows instead"
    )
    parser.add_argument("--top", type=int, default=30, help="rows of profile output")
    parser.add_argument(
        "--wal-pages",
        action="store_true",
        help="print the WAL pages each system writes per workflow instead",
    )
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="apiary-bench-") as tmp:
        root = Path(tmp)
        if args.profile:
            profile(args.profile, root, args.top)
            return
        if args.wal_pages:
            wal_pages(list(args.systems), root)
            return
        print(f"machine: {machine()}", file=sys.stderr)
        results: list[Result] = []
        for threads in args.threads:
            results += bench_threads(
                list(args.systems), threads, args.seconds, args.rounds, args.warmup, root
            )
    print()
    print(f"Machine: {machine()}")
    print(
        f"Workload: read_price -> add_to_cart -> decrement_stock, 3 transactions; "
        f"{ITEMS:,} items, {CARTS:,} carts; {args.rounds} rounds of {args.seconds:g} s, "
        f"interleaved, after {args.warmup:g} s warm-up; medians over rounds."
    )
    print()
    print(table(results))
    print()
    for r in results:
        print(f"- threads={r.threads} {r.system}: {r.checked}")


if __name__ == "__main__":
    main()
