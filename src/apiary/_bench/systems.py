"""The systems under test, and the databases they run on.

Every system hands each client thread a *runner*: a callable that runs one operation,
``runner(workflow, arguments) -> output``. Systems here run Apiary in this process through
:class:`apiary.Runtime`:

* ``apiary-sqlite``: the embedded SQLite engine, on a database file of its own;
* ``apiary-pg``: PostgreSQL with ``placement=db`` (each transaction unit is one call of
  its PL/Python stored procedure);
* ``apiary-pg-client``: the same code with ``placement=client`` (the functions run here,
  one round trip per statement).

A system name may carry a *variant* (``apiary-pg:trace-off``), see :data:`VARIANTS`:
the cost of fault tolerance is measured with ``record-none`` / ``record-sfr`` /
``record-all`` (tracing off in all three), the cost of tracing with ``trace-off`` /
``trace-on`` / ``manual-log`` (the app logging its own accesses, tracing off). Without a
variant a system runs as a user gets it: ``record="sfr"``, tracing on.

The PostgreSQL systems of one workload share one database, made afresh
(``apiary_bench_<workload>`` on the server of ``--db-url``); each SQLite system has a file
of its own. The invariants are checked per database.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from apiary._bench.workloads import Tally, Workload
from apiary._plan import RecordMode
from apiary._runtime import Runtime

#: Runs one operation: ``runner(workflow, arguments) -> output``.
Runner = Callable[[str, dict[str, Any]], Any]

APIARY_SYSTEMS = ("apiary-sqlite", "apiary-pg", "apiary-pg-client")
#: Every system ``--systems`` accepts, in the order the tables show them.
SYSTEMS = (*APIARY_SYSTEMS, "apiary-http", "rpc-baseline", "direct", "dbos")
#: Systems that take ``--variants``.
VARIANT_SYSTEMS = ("apiary-sqlite", "apiary-pg")


@dataclass(frozen=True)
class Variant:
    """How an Apiary system is configured."""

    record: RecordMode = "sfr"
    trace: bool = True
    logged: bool = False


VARIANTS: dict[str, Variant] = {
    "record-none": Variant(record="none", trace=False),
    "record-sfr": Variant(record="sfr", trace=False),
    "record-all": Variant(record="all", trace=False),
    "trace-off": Variant(trace=False),
    "trace-on": Variant(trace=True),
    "manual-log": Variant(trace=False, logged=True),
}


class SkipSystem(Exception):
    """A system cannot run here; the message says why (reported, not fatal)."""


def split_name(name: str) -> tuple[str, str | None]:
    """``"apiary-pg:trace-off"`` -> ``("apiary-pg", "trace-off")``."""
    base, _, variant = name.partition(":")
    return base, variant or None


def check_name(name: str) -> None:
    """Refuse an unknown system or variant (``ValueError``)."""
    base, variant = split_name(name)
    if base not in SYSTEMS:
        raise ValueError(f"unknown system {base!r} (known: {', '.join(SYSTEMS)})")
    if variant is not None and base == "apiary-http":
        if variant not in ("trace-on", "trace-off"):
            raise ValueError(f"unknown variant {name!r}: apiary-http takes trace-on, trace-off")
    elif variant is not None and (base not in APIARY_SYSTEMS or variant not in VARIANTS):
        raise ValueError(
            f"unknown variant {name!r}: variants ({', '.join(VARIANTS)}) apply to "
            f"{', '.join(APIARY_SYSTEMS)} (and trace-on, trace-off to apiary-http)"
        )


#: Seconds a system's settling waits for its trace store (held by its spooler process
#: for a round of its own).
SETTLE_WAIT = 120.0


def with_database(url: str, database: str, query: str = "") -> str:
    """``url`` pointing at another database on the same server, with a query string."""
    return urlunsplit(urlsplit(url)._replace(path=f"/{database}", query=query))


# --------------------------------------------------------------------------------------
# Databases
# --------------------------------------------------------------------------------------


class Database:
    """A database the benchmark loads, and checks after the run."""

    key = ""
    url = ""

    def load(self, workload: Workload, params: dict[str, int]) -> None:
        """Insert the workload's initial rows (the schema is installed already)."""
        raise NotImplementedError

    def query(self, sql: str) -> list[tuple[Any, ...]]:
        """Run a query, for the checks."""
        raise NotImplementedError

    def pending(self) -> int:
        """Workflows left ``PENDING`` (none after a clean run)."""
        raise NotImplementedError


class SqliteDatabase(Database):
    """A SQLite file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.key = str(path)
        self.url = f"sqlite:///{path}"

    def load(self, workload: Workload, params: dict[str, int]) -> None:
        conn = sqlite3.connect(self.path, isolation_level=None)
        try:
            conn.execute("BEGIN IMMEDIATE")
            for table, columns, rows in workload.data(params):
                marks = ", ".join("?" for _ in columns)
                conn.executemany(
                    f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})", rows
                )
            conn.execute("COMMIT")
            conn.execute("ANALYZE")
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            conn.close()

    def query(self, sql: str) -> list[tuple[Any, ...]]:
        conn = sqlite3.connect(self.path)
        try:
            return conn.execute(sql).fetchall()
        finally:
            conn.close()

    def pending(self) -> int:
        rows = self.query("SELECT count(*) FROM apiary_workflows WHERE status = 'PENDING'")
        return int(rows[0][0])


class PostgresDatabase(Database):
    """A database on a PostgreSQL server, dropped and created afresh."""

    def __init__(self, server_url: str, name: str) -> None:
        self.server_url = server_url
        self.url = with_database(server_url, name)
        self.key = self.url
        self.name = name

    def create(self) -> None:
        """Drop and create the database, with PL/Python."""
        import psycopg

        with psycopg.connect(self.server_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{self.name}"')

    def load(self, workload: Workload, params: dict[str, int]) -> None:
        import psycopg

        with psycopg.connect(self.url, autocommit=True) as conn:
            with conn.cursor() as cur:
                for table, columns, rows in workload.data(params):
                    copy_sql = f"COPY {table} ({', '.join(columns)}) FROM STDIN"
                    with cur.copy(copy_sql) as copy:
                        for row in rows:
                            copy.write_row(row)
            conn.execute("VACUUM ANALYZE")

    def query(self, sql: str) -> list[tuple[Any, ...]]:
        import psycopg

        with psycopg.connect(self.url, autocommit=True) as conn:
            return conn.execute(sql).fetchall()

    def pending(self) -> int:
        rows = self.query("SELECT count(*) FROM apiary.workflows WHERE status = 'PENDING'")
        return int(rows[0][0])

    def drop(self) -> None:
        """Drop the database."""
        import psycopg

        with psycopg.connect(self.server_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')


# --------------------------------------------------------------------------------------
# Systems
# --------------------------------------------------------------------------------------


class System:
    """One contender on one workload; opened once per client count."""

    def __init__(self, name: str, database: Database) -> None:
        self.name = name
        self.database = database
        self.tally = Tally()

    def install(self) -> None:
        """Install the app (before the data are loaded)."""

    def open(self, clients: int) -> None:
        """Get ready for ``clients`` concurrent client threads."""

    def runner(self) -> Runner:
        """A runner for one client thread."""
        raise NotImplementedError

    def settle(self) -> None:
        """Finish, after a round, the work it left running in the background (an Apiary
        runtime's traces still to be spooled), so that it counts in this system's round
        and does not run during the next system's."""

    def close(self) -> None:
        """Release connections and threads."""


class ApiarySystem(System):
    """An :class:`apiary.Runtime` in this process, shared by the client threads."""

    def __init__(self, name: str, database: Database, workload: Workload, trace_dir: Path) -> None:
        super().__init__(name, database)
        base, variant = split_name(name)
        self.variant = VARIANTS[variant] if variant else Variant()
        self.app = workload.logged_app if self.variant.logged else workload.app
        self.placement = {"apiary-pg": "db", "apiary-pg-client": "client"}.get(base)
        # Traces spool into a DuckDB file per system (a frontend would do this for
        # PostgreSQL); the spooler runs in this process, so its cost is measured too.
        slug = re.sub(r"[^a-z0-9]+", "-", f"{workload.name}-{name}")
        self.trace_store = str(trace_dir / f"{slug}-trace.duckdb")
        self.runtime: Runtime | None = None

    def _url(self, clients: int) -> str:
        if self.placement is None:
            return self.database.url
        size = max(clients, 1)
        query = f"placement={self.placement}&pool_min={size}&pool_max={max(size, 16)}"
        return f"{self.database.url}?{query}"

    def _runtime(self, clients: int) -> Runtime:
        return Runtime(
            self.app,
            self._url(clients),
            record=self.variant.record,
            trace=self.variant.trace,
            trace_store=self.trace_store if self.variant.trace else None,
            max_workers=max(8, clients),
        )

    def install(self) -> None:
        with self._runtime(1) as runtime:
            runtime.install()

    def open(self, clients: int) -> None:
        self.runtime = self._runtime(clients)
        self.runtime.install()

    def runner(self) -> Runner:
        if self.runtime is None:
            raise RuntimeError(f"{self.name} is not open")
        run = self.runtime.run
        return lambda workflow, args: run(workflow, **args)

    def settle(self) -> None:
        if self.runtime is not None and self.variant.trace:
            self.runtime.spool(wait=SETTLE_WAIT)

    def close(self) -> None:
        runtime, self.runtime = self.runtime, None
        if runtime is not None:
            runtime.close()


def pg_available(db_url: str | None) -> None:
    """Raise :class:`SkipSystem` unless PostgreSQL systems can run."""
    if not db_url:
        raise SkipSystem("no PostgreSQL server: give --db-url (a superuser's URL)")
    try:
        import psycopg
    except ImportError:
        raise SkipSystem("psycopg is not installed (pip install 'apiary[postgres]')") from None
    try:
        with psycopg.connect(db_url, autocommit=True, connect_timeout=5) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
        raise SkipSystem(f"cannot reach PostgreSQL at --db-url: {exc}") from None


def databases_of(systems: Iterable[System]) -> dict[str, tuple[Database, list[System]]]:
    """Each database, with the systems that ran on it."""
    found: dict[str, tuple[Database, list[System]]] = {}
    for system in systems:
        found.setdefault(system.database.key, (system.database, []))[1].append(system)
    return found


def expand(systems: Sequence[str], variants: Sequence[str]) -> list[str]:
    """Systems with ``--variants`` applied to those that take them."""
    if not variants:
        return list(systems)
    names: list[str] = []
    for name in systems:
        base, variant = split_name(name)
        if variant is None and base in VARIANT_SYSTEMS:
            names += [f"{base}:{v}" for v in variants]
        else:
            names.append(name)
    return names
