"""Shared fixtures: every behaviour test runs once per engine.

``engine_url`` is parametrized by the engines under test; a test that takes it (or
``make_runtime``) is written once and proven on each. Each test gets a fresh database:
a new SQLite file in ``tmp_path``, or a new PostgreSQL database made from a template
that already has PL/Python.

Engines: ``APIARY_TEST_ENGINES`` (comma-separated: ``sqlite``, ``postgres-db``,
``postgres-client``, ``cluster``: a cluster of one partition). Without it: SQLite, plus
the PostgreSQL ones when ``APIARY_TEST_POSTGRES_URL`` names a server (``scripts/test``
starts one and sets it).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest

import apiary

POSTGRES_URL = os.environ.get("APIARY_TEST_POSTGRES_URL", "")
_default = "sqlite,postgres-db,postgres-client,cluster" if POSTGRES_URL else "sqlite"
ENGINES = [e for e in os.environ.get("APIARY_TEST_ENGINES", _default).split(",") if e]
TEMPLATE = "apiary_test_template"
# Test databases are named apiary_t_<pid>_<random>: a session drops the leftovers of
# sessions that are gone, never those of a session still running beside it.
_PREFIX_ALL = "apiary_t_"
PREFIX = f"{_PREFIX_ALL}{os.getpid()}_"


def _gone(name: str) -> bool:
    """Whether the test session that made database ``name`` has ended."""
    pid = name[len(_PREFIX_ALL) :].partition("_")[0]
    if not pid.isdigit():
        return True  # an older naming
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _with_database(url: str, database: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path=f"/{database}"))


@pytest.fixture(scope="session")
def postgres_admin() -> str:
    """The test server's URL; a template database with PL/Python is made once."""
    if not POSTGRES_URL:
        raise pytest.UsageError(
            "PostgreSQL engines selected but APIARY_TEST_POSTGRES_URL is not set; run "
            "scripts/test, or start a server with scripts/postgres-up"
        )
    import psycopg

    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        leftovers = conn.execute(
            "SELECT datname FROM pg_database WHERE starts_with(datname, %s)", (_PREFIX_ALL,)
        ).fetchall()
        for (name,) in leftovers:
            if _gone(name):
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (TEMPLATE,))
        if exists.fetchone() is None:
            conn.execute(f'CREATE DATABASE "{TEMPLATE}"')
            with psycopg.connect(_with_database(POSTGRES_URL, TEMPLATE), autocommit=True) as t:
                t.execute("CREATE EXTENSION IF NOT EXISTS plpython3u")
    return POSTGRES_URL


@pytest.fixture(params=ENGINES)
def engine_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A URL of a fresh, empty database on one of the engines under test."""
    engine = request.param
    if engine == "sqlite":
        yield f"sqlite:///{tmp_path / 'apiary.db'}"
        return
    if engine not in ("postgres-db", "postgres-client", "cluster"):
        raise pytest.UsageError(f"unknown engine {engine!r} in APIARY_TEST_ENGINES")
    import psycopg

    admin = request.getfixturevalue("postgres_admin")
    name = PREFIX + uuid.uuid4().hex[:12]
    with psycopg.connect(admin, autocommit=True) as conn:
        # FILE_COPY: a checkpoint at create, but dropping is then fast.
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{TEMPLATE}" STRATEGY FILE_COPY')
    placement = engine.removeprefix("postgres-")
    if engine == "cluster":
        # A cluster of one partition: the cluster engine's routing and bookkeeping (status
        # rows apart from units, recovery and spooling per partition) under the whole
        # suite; tests/test_cluster.py runs partitioned apps on four partitions.
        config = tmp_path / "cluster.toml"
        config.write_text(f'partitions = ["{_with_database(admin, name)}"]\n')
    try:
        if engine == "cluster":
            yield f"cluster:{config}"
        else:
            yield f"{_with_database(admin, name)}?placement={placement}"
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def make_runtime(engine_url: str) -> Iterator[Callable[..., apiary.Runtime]]:
    """Build installed runtimes on the test's database; all are closed at teardown."""
    made: list[apiary.Runtime] = []

    def make(app: apiary.App, *, install: bool = True, **options: Any) -> apiary.Runtime:
        rt = apiary.Runtime(app, engine_url, **options)
        made.append(rt)
        if install:
            rt.install()
        return rt

    yield make
    for rt in made:
        rt.close()
