"""Peer benchmark: the core benchmark's 3-transaction workflow in DBOS Transact on SQLite.

This program does not import Apiary: run it with an interpreter that has ``dbos``
installed (a separate virtualenv keeps the project's own environment untouched)::

    python3 -m venv /tmp/dbos-venv && /tmp/dbos-venv/bin/pip install dbos
    /tmp/dbos-venv/bin/python -m benchmarks.dbos_sqlite --seconds 3 --rounds 3

The schema, the data and the SQL text are those of :mod:`benchmarks.core_sqlite` (copied
here, since the two programs run in different environments). The workflow is a
``@DBOS.workflow`` calling three transactions declared on a ``SQLAlchemyDatasource`` (the
transaction decorator of DBOS 3: ``@ds.transaction()``, each committing its checkpoint
with the user's writes); statements run through ``exec_driver_sql`` so SQLite sees the
same text. The system database and the application database are SQLite files.

Contenders, each in its own process (DBOS keeps one instance per process), rounds
interleaved after a warm-up:

* ``dbos (defaults)``: DBOS's own engines and connection settings;
* ``dbos (WAL, synchronous=NORMAL)``: DBOS with engines whose connections get the
  PRAGMAs the core benchmark uses (plus DBOS's own ``IMMEDIATE`` transactions);
* ``plain sqlite3``: the core benchmark's baseline, to anchor this run to that one.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import random
import sqlite3
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from benchmarks._harness import run_threads

# Same workload as benchmarks/core_sqlite.py.
ITEMS = 10_000
CARTS = 1_000
INITIAL_STOCK = 10_000_000
BUSY_TIMEOUT_MS = 10_000

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

CONFIGS = {
    "defaults": "dbos (defaults)",
    "tuned": "dbos (WAL, synchronous=NORMAL)",
    "plain": "plain sqlite3",
}

#: Runs one workflow with (cart, item, quantity).
Runner = Callable[[int, int, int], Any]


def plain_connect(path: Path) -> sqlite3.Connection:
    """A connection configured as in the core benchmark."""
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


def preload(path: Path, *, wal: bool) -> None:
    """Create the schema and the items (same prices as the core benchmark)."""
    rng = random.Random(7)
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        if wal:
            conn.execute("PRAGMA journal_mode = WAL")
        conn.executescript(SCHEMA)
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(
            "INSERT INTO items (item_id, price, stock) VALUES (?, ?, ?)",
            ((i, rng.randint(100, 10_000), INITIAL_STOCK) for i in range(1, ITEMS + 1)),
        )
        conn.execute("COMMIT")
    finally:
        conn.close()


def check(path: Path, workflows: int) -> str:
    """Check that stock and carts account for every workflow run."""
    conn = sqlite3.connect(path)
    try:
        taken = conn.execute("SELECT ? - sum(stock) FROM items", (ITEMS * INITIAL_STOCK,))
        stock_taken = taken.fetchone()[0]
        in_carts = conn.execute("SELECT sum(quantity) FROM cart_items").fetchone()[0]
    finally:
        conn.close()
    if stock_taken != workflows or in_carts != workflows:
        raise AssertionError(
            f"{workflows} workflows ran, but {stock_taken} units left the stock and "
            f"{in_carts} are in carts"
        )
    return f"{workflows} workflows, stock and carts agree"


# --------------------------------------------------------------------------------------
# Workers: one process per contender
# --------------------------------------------------------------------------------------


def plain_worker(root: Path) -> tuple[Callable[[], Runner], Path]:
    """The plain sqlite3 baseline of the core benchmark."""
    path = root / "plain.sqlite"
    preload(path, wal=True)

    @contextlib.contextmanager
    def transaction(conn: sqlite3.Connection, write: bool) -> Iterator[None]:
        conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
        try:
            yield
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    def make() -> Runner:
        conn = plain_connect(path)

        def buy(cart: int, item: int, quantity: int) -> int | None:
            with transaction(conn, write=False):
                row = conn.execute(PRICE_SQL, (item,)).fetchone()
            price = None if row is None else int(row[0])
            with transaction(conn, write=True):
                changed = conn.execute(ADD_TO_CART_SQL, (cart, item, quantity, price)).rowcount
            added = quantity if changed == 1 else 0
            with transaction(conn, write=True):
                rows = conn.execute(TAKE_STOCK_SQL, (added, item, added)).fetchall()
            return int(rows[0][0]) if rows else None

        return buy

    return make, path


def dbos_worker(root: Path, tuned: bool) -> tuple[Callable[[], Runner], Path]:
    """DBOS with a SQLite system database and a SQLite datasource."""
    import sqlalchemy as sa
    from dbos import DBOS, SQLAlchemyDatasource

    app_path = root / "dbos-app.sqlite"
    sys_path = root / "dbos-system.sqlite"
    preload(app_path, wal=tuned)
    config: dict[str, Any] = {
        "name": "shop-bench",
        "system_database_url": f"sqlite:///{sys_path}",
        "log_level": "WARNING",
    }
    app_engine = None
    if tuned:

        def tuned_engine(path: Path) -> sa.Engine:
            engine = sa.create_engine(f"sqlite:///{path}", pool_size=20, max_overflow=0)

            @sa.event.listens_for(engine, "connect")
            def configure(dbapi_conn: Any, _record: Any) -> None:
                dbapi_conn.isolation_level = "IMMEDIATE"  # as DBOS configures its own
                dbapi_conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
                dbapi_conn.execute("PRAGMA journal_mode = WAL")
                dbapi_conn.execute("PRAGMA synchronous = NORMAL")
                dbapi_conn.execute("PRAGMA foreign_keys = ON")

            return engine

        config["system_database_engine"] = tuned_engine(sys_path)
        app_engine = tuned_engine(app_path)

    DBOS(config=config)  # type: ignore[arg-type]
    ds = SQLAlchemyDatasource.create(f"sqlite:///{app_path}", engine=app_engine)

    def sql(text: str, params: tuple[Any, ...]) -> Any:
        return ds.sql_session().connection().exec_driver_sql(text, params)

    @ds.transaction()
    def read_price(item: int) -> int | None:
        row = sql(PRICE_SQL, (item,)).fetchone()
        return None if row is None else int(row[0])

    @ds.transaction()
    def add_to_cart(cart: int, item: int, quantity: int, price: int) -> int:
        return quantity if sql(ADD_TO_CART_SQL, (cart, item, quantity, price)).rowcount == 1 else 0

    @ds.transaction()
    def decrement_stock(item: int, added: int) -> int | None:
        rows = sql(TAKE_STOCK_SQL, (added, item, added)).fetchall()
        return int(rows[0][0]) if rows else None

    @DBOS.workflow()
    def buy(cart: int, item: int, quantity: int) -> int | None:
        price = read_price(item)
        added = add_to_cart(cart, item, quantity, price)
        return decrement_stock(item, added)

    DBOS.launch()
    return (lambda: buy), app_path


def run_timed(runners: list[Runner], seconds: float, seed: int) -> dict[str, Any]:
    """Run workflows on every runner (one thread each) for ``seconds``."""

    def next_call(index: int, rng: random.Random) -> Callable[[], Any]:
        cart, item = rng.randint(1, CARTS), rng.randint(1, ITEMS)
        return lambda: runners[index](cart, item, 1)

    done = run_threads(len(runners), next_call, seconds, seed)
    return {
        "workflows": done.ops,
        "seconds": done.seconds,
        "p50": done.percentile(50),
        "p99": done.percentile(99),
    }


def worker(config: str, root: Path, threads: int) -> None:
    """Serve commands on stdin (``run SECONDS SEED``, ``check``), one JSON answer a line."""
    if config == "plain":
        make, path = plain_worker(root)
    else:
        make, path = dbos_worker(root, tuned=config == "tuned")
    runners = [make() for _ in range(threads)]
    total = 0
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        command, *args = line.split()
        if command == "run":
            result = run_timed(runners, float(args[0]), int(args[1]))
            total += result["workflows"]
            print(json.dumps(result), flush=True)
        elif command == "check":
            print(json.dumps({"checked": check(path, total)}), flush=True)
        else:
            break
    if config != "plain":
        from dbos import DBOS

        DBOS.destroy()


# --------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------


class Worker:
    """A contender's process."""

    def __init__(self, config: str, root: Path, threads: int) -> None:
        folder = root / f"{config}-t{threads}"
        folder.mkdir()
        self.name = CONFIGS[config]
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "benchmarks.dbos_sqlite",
                "--worker",
                config,
                "--dir",
                str(folder),
                "--threads",
                str(threads),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.ask(None)

    def ask(self, command: str | None) -> dict[str, Any]:
        """Send a command (or none) and read the JSON answer."""
        assert self.process.stdin is not None
        assert self.process.stdout is not None
        if command is not None:
            self.process.stdin.write(command + "\n")
            self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"{self.name}: worker exited ({self.process.wait()})")
        answer: dict[str, Any] = json.loads(line)
        return answer

    def close(self) -> None:
        """Stop the process."""
        assert self.process.stdin is not None
        with contextlib.suppress(BrokenPipeError):
            self.process.stdin.write("quit\n")
            self.process.stdin.close()
        self.process.wait(timeout=60)


def dbos_version() -> str:
    """The installed DBOS version, or a note."""
    try:
        from importlib.metadata import version

        return f"dbos {version('dbos')}, SQLAlchemy {version('sqlalchemy')}"
    except Exception:  # pragma: no cover - reported, not fatal
        return "dbos (version unknown)"


def main(argv: list[str] | None = None) -> None:
    """Run every contender at every thread count and print a Markdown table."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.dbos_sqlite", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--seconds", type=float, default=3.0, help="length of a round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per contender")
    parser.add_argument("--warmup", type=float, default=1.0, help="warm-up seconds")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 4], help="thread counts")
    parser.add_argument(
        "--configs", nargs="+", choices=list(CONFIGS), default=list(CONFIGS), help="contenders"
    )
    parser.add_argument("--worker", choices=list(CONFIGS), help=argparse.SUPPRESS)
    parser.add_argument("--dir", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args.worker, Path(args.dir), args.threads[0])
        return

    described = f"{platform.python_version()}, SQLite {sqlite3.sqlite_version}, {dbos_version()}"
    print(f"machine: Python {described}", file=sys.stderr)
    rows: list[tuple[int, str, list[dict[str, Any]], str]] = []
    with tempfile.TemporaryDirectory(prefix="dbos-bench-") as tmp:
        for threads in args.threads:
            workers = [Worker(c, Path(tmp), threads) for c in args.configs]
            try:
                rounds: dict[str, list[dict[str, Any]]] = {w.name: [] for w in workers}
                for w in workers:
                    w.ask(f"run {args.warmup} 0")
                for number in range(1, args.rounds + 1):
                    for w in workers:
                        result = w.ask(f"run {args.seconds} {number}")
                        rounds[w.name].append(result)
                        print(
                            f"  threads={threads} round {number}/{args.rounds} {w.name:<32} "
                            f"{result['workflows'] / result['seconds']:8.1f} workflows/s",
                            file=sys.stderr,
                            flush=True,
                        )
                for w in workers:
                    rows.append((threads, w.name, rounds[w.name], w.ask("check")["checked"]))
            finally:
                for w in workers:
                    w.close()

    print()
    print(f"Machine: Python {described}")
    print(
        f"Workload: read_price -> add_to_cart -> decrement_stock, 3 transactions; "
        f"{ITEMS:,} items, {CARTS:,} carts; {args.rounds} rounds of {args.seconds:g} s, "
        f"interleaved, after {args.warmup:g} s warm-up; medians over rounds."
    )
    print()
    print("| threads | system | workflows/s (median) | min - max | p50 ms | p99 ms |")
    print("|---:|---|---:|---:|---:|---:|")
    for threads, name, results, _ in rows:
        tputs = [r["workflows"] / r["seconds"] for r in results]
        print(
            f"| {threads} | {name} | {statistics.median(tputs):,.1f} "
            f"| {min(tputs):,.1f} - {max(tputs):,.1f} "
            f"| {statistics.median(r['p50'] for r in results):.3f} "
            f"| {statistics.median(r['p99'] for r in results):.3f} |"
        )
    print()
    for threads, name, _, checked in rows:
        print(f"- threads={threads} {name}: {checked}")


if __name__ == "__main__":
    main()
