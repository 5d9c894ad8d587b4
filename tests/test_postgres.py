"""Tests of the PostgreSQL engine itself, on a real server with PL/Python.

The shared behaviour suite already runs on both placements through ``engine_url``; this
module covers what only PostgreSQL has: function bodies running in a backend process,
redeploying a new app version next to a running one, PL/Python's per-statement
subtransactions (code that swallows errors must not commit half a transaction), install
errors (missing packages on the server, missing privileges, untyped parameters), the
values PostgreSQL's types come back as, and the pool's warm-up.

Every test needs ``APIARY_TEST_POSTGRES_URL`` (the ``postgres_admin`` fixture fails the run
loudly without it) and makes its own database from the template with PL/Python.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import decimal
import gc
import importlib.util
import os
import random
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

import apiary
from apiary import _codec
from apiary._engines.pgpool import AsyncConnectionPool, ConnectionPool, PoolTimeout
from apiary._engines.pgwire import stub_name, system_stub_name
from tests.apps import assert_same, pg_ambiguous, pg_engine, pg_pitfalls, pg_thirdparty, pg_values
from tests.conftest import PREFIX, TEMPLATE

PLACEMENTS = ["db", "client"]
THREADS = 8

MakeRuntime = Callable[..., apiary.Runtime]


# -- fixtures ------------------------------------------------------------------------------


def with_database(url: str, database: str) -> str:
    """``url`` pointing at another database (no query string)."""
    return urlunsplit(urlsplit(url)._replace(path=f"/{database}", query=""))


def with_user(url: str, user: str, password: str) -> str:
    """``url`` logging in as another role."""
    parts = urlsplit(url)
    host = parts.hostname or "127.0.0.1"
    netloc = f"{user}:{password}@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def admin_connect(url: str) -> psycopg.Connection[Any]:
    """A plain autocommit connection (no Apiary) for setup and for looking behind the API."""
    return psycopg.connect(url, autocommit=True)


@pytest.fixture
def pg_database(postgres_admin: str) -> Iterator[str]:
    """URL (no options) of a fresh database made from the template that has PL/Python."""
    name = PREFIX + uuid.uuid4().hex[:12]
    with admin_connect(postgres_admin) as conn:
        # FILE_COPY: a checkpoint at create, but dropping is then fast.
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{TEMPLATE}" STRATEGY FILE_COPY')
    try:
        yield with_database(postgres_admin, name)
    finally:
        with admin_connect(postgres_admin) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def runtimes(pg_database: str) -> Iterator[MakeRuntime]:
    """Make runtimes on the test's database: ``make(app, placement, install=True, **query)``.

    Extra keywords become URL options (``pool_min=2``). All are closed at teardown.
    """
    made: list[apiary.Runtime] = []

    def make(
        app: apiary.App, placement: str = "db", *, install: bool = True, **query: Any
    ) -> apiary.Runtime:
        options = "&".join(
            f"{key}={value}" for key, value in {"placement": placement, **query}.items()
        )
        rt = apiary.Runtime(app, f"{pg_database}?{options}")
        made.append(rt)
        if install:
            rt.install()
        return rt

    yield make
    for rt in made:
        rt.close()


@pytest.fixture(params=PLACEMENTS)
def placement(request: pytest.FixtureRequest) -> str:
    """Each placement: ``db`` (PL/Python in the server) and ``client`` (this process)."""
    return str(request.param)


def hammer(
    threads: int, job: Callable[[random.Random], Any], *, calls: int = 0, seconds: float = 0.0
) -> tuple[int, list[BaseException]]:
    """Run ``job`` on ``threads`` threads released together, each ``calls`` times or for
    ``seconds``; return how many calls returned and the exceptions of the others."""
    start = threading.Barrier(threads, timeout=30)

    def worker(seed: int) -> tuple[int, list[BaseException]]:
        rng = random.Random(seed)
        done, errors = 0, []
        start.wait()
        deadline = time.monotonic() + seconds
        count = 0
        while (count < calls) if calls else (time.monotonic() < deadline):
            count += 1
            try:
                job(rng)
            except Exception as exc:
                errors.append(exc)
            else:
                done += 1
        return done, errors

    with concurrent.futures.ThreadPoolExecutor(max_workers=threads) as pool:
        results = list(pool.map(worker, range(threads)))
    return sum(done for done, _ in results), [exc for _, errors in results for exc in errors]


def only_conflicts(errors: list[BaseException]) -> None:
    """Calls may give up after every retry conflicted; nothing else may go wrong."""
    unexpected = [e for e in errors if not isinstance(e, apiary.TransactionConflictError)]
    assert not unexpected, f"{len(unexpected)} unexpected errors, first: {unexpected[0]!r}"


# -- where the code runs -------------------------------------------------------------------


def test_function_body_runs_in_the_backend_with_placement_db(
    runtimes: MakeRuntime, placement: str
) -> None:
    rt = runtimes(pg_engine.app, placement)
    process, backend = rt.call("whereami")
    if placement == "db":
        assert process == backend
        assert process != os.getpid()
    else:
        assert process == os.getpid()
        assert process != backend


# -- redeploying a new version -------------------------------------------------------------

REDEPLOY_SOURCE = '''
"""Version {version} of an app that is redeployed while an older runtime still runs."""

import apiary

app = apiary.App("pg_redeploy")
app.schema("CREATE TABLE IF NOT EXISTS greetings (who TEXT NOT NULL, version TEXT NOT NULL);")

NOTE = apiary.sql("INSERT INTO greetings (who, version) VALUES (?, ?)")


@app.function
def hello(ctx):
    return "{version}"


@app.function
def note(ctx, who):
    ctx.execute(NOTE, who, "{version}")
    return "{version}:" + who


@app.workflow
def greet(who):
    return note(who)
'''


@pytest.fixture
def redeploy_apps(tmp_path: Path) -> Iterator[tuple[apiary.App, apiary.App]]:
    """Two versions of app ``pg_redeploy``, each its own module file (and module name)."""
    names = []
    apps = []
    for version in ("v1", "v2"):
        name = f"pg_redeploy_{version}_{uuid.uuid4().hex[:8]}"
        path = tmp_path / f"{name}.py"
        path.write_text(REDEPLOY_SOURCE.format(version=version))
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec is not None
        assert spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # install reads the source of the app's modules
        names.append(name)
        spec.loader.exec_module(module)
        apps.append(module.app)
    try:
        yield apps[0], apps[1]
    finally:
        for name in names:
            sys.modules.pop(name, None)


def test_redeploy_one_backend_serves_both_versions(
    pg_database: str, runtimes: MakeRuntime, redeploy_apps: tuple[apiary.App, apiary.App]
) -> None:
    app_v1, app_v2 = redeploy_apps
    rt1 = runtimes(app_v1)
    assert rt1.call("hello") == "v1"
    rt2 = runtimes(app_v2)
    assert rt1.version != rt2.version

    unit = rt1._call_units["hello"]
    assert stub_name(app_v2.name, rt2._call_units["hello"]) == stub_name(app_v1.name, unit)
    sql = f'SELECT apiary."{stub_name(app_v1.name, unit)}"(%s, %s)'
    request = _codec.dumps({"w": None, "p": {}, "i": {}, "s": None, "c": "x/1"})
    with admin_connect(pg_database) as conn:
        backend = conn.execute("SELECT pg_backend_pid()").fetchone()
        seen = []
        for version in (rt1.version, rt2.version, rt1.version):
            row = conn.execute(sql, (version, request)).fetchone()
            assert row is not None
            seen.append(_codec.loads(row[0]))
        assert conn.execute("SELECT pg_backend_pid()").fetchone() == backend
        versions = conn.execute(
            "SELECT DISTINCT version FROM apiary.code WHERE app = %s", (app_v1.name,)
        ).fetchall()
    assert seen == [
        {"o": {"hello": "v1"}, "f": None, "n": False},
        {"o": {"hello": "v2"}, "f": None, "n": False},
        {"o": {"hello": "v1"}, "f": None, "n": False},
    ]
    assert {v for (v,) in versions} == {rt1.version, rt2.version}


def test_redeploy_leaves_a_running_older_runtime_on_its_version(
    pg_database: str, runtimes: MakeRuntime, redeploy_apps: tuple[apiary.App, apiary.App]
) -> None:
    app_v1, app_v2 = redeploy_apps
    rt1 = runtimes(app_v1, pool_min=2)
    rt1._engine.pool().wait()  # type: ignore[attr-defined]
    assert rt1.call("hello") == "v1"
    assert rt1.run("greet", workflow_id="ann", who="ann") == "v1:ann"

    rt2 = runtimes(app_v2)
    assert rt2.call("hello") == "v2"
    assert rt2.run("greet", workflow_id="bob", who="bob") == "v2:bob"
    # The older runtime's warm connections keep passing its own version.
    assert [rt1.call("hello") for _ in range(4)] == ["v1"] * 4
    assert rt1.run("greet", workflow_id="cat", who="cat") == "v1:cat"
    assert rt2.call("hello") == "v2"

    with admin_connect(pg_database) as conn:
        rows = conn.execute("SELECT who, version FROM greetings ORDER BY who").fetchall()
        versions = conn.execute(
            "SELECT DISTINCT version FROM apiary.code WHERE app = %s", (app_v1.name,)
        ).fetchall()
    assert rows == [("ann", "v1"), ("bob", "v2"), ("cat", "v1")]
    assert {v for (v,) in versions} == {rt1.version, rt2.version}


# -- the PL/Python pitfall: swallowed errors never commit a partial transaction --------------


@pytest.mark.parametrize("function", ["bump", "bump_hard"])
def test_swallowing_conflicts_on_a_hot_row_loses_no_write(
    runtimes: MakeRuntime, placement: str, function: str
) -> None:
    rt = runtimes(pg_pitfalls.app, placement)
    rt.call("seed", keys=["hot"], accounts=[], balance=0)

    done, errors = hammer(THREADS, lambda rng: rt.call(function, key="hot"), calls=25)

    only_conflicts(errors)
    assert done > 0
    totals = rt.call("totals", key="hot")
    assert totals["counter"] == totals["hits"] == done
    assert totals["attempts"] >= done


def wait_for_lock_wait(monitor: psycopg.Connection[Any]) -> None:
    """Return once a backend of the monitor's database waits for a lock (fail after 10 s)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        row = monitor.execute(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE datname = current_database() AND wait_event_type = 'Lock'"
        ).fetchone()
        if row and row[0]:
            return
        time.sleep(0.01)
    pytest.fail("no backend ever waited for the row lock")


@pytest.mark.parametrize("function", ["bump", "bump_hard"])
def test_swallowed_serialization_failure_is_retried_not_committed(
    pg_database: str, runtimes: MakeRuntime, placement: str, function: str
) -> None:
    rt = runtimes(pg_pitfalls.app, placement)
    rt.call("seed", keys=["hot"], accounts=[], balance=0)
    with admin_connect(pg_database) as holder, admin_connect(pg_database) as monitor:
        # Hold the hot row's lock; the function's UPDATE waits for it with a snapshot
        # taken before our commit, so it fails with 40001 and its code swallows that.
        holder.execute("BEGIN ISOLATION LEVEL SERIALIZABLE")
        holder.execute("UPDATE pf_counters SET v = v + 1 WHERE k = 'hot'")
        with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
            call = pool.submit(rt.call, function, key="hot")
            wait_for_lock_wait(monitor)
            holder.execute("COMMIT")
            assert call.result(timeout=30) is True
    totals = rt.call("totals", key="hot")
    # The failed attempt committed nothing (no hit without its increment); the retry did.
    assert (totals["counter"], totals["hits"], totals["attempts"]) == (2, 1, 2)


def test_swallowing_conflicts_in_transfers_conserves_money(
    runtimes: MakeRuntime, placement: str
) -> None:
    rt = runtimes(pg_pitfalls.app, placement)
    accounts, opening = [1, 2, 3], 1_000
    rt.call("seed", keys=[], accounts=accounts, balance=opening)

    moved: list[int] = []

    def transfer(rng: random.Random) -> None:
        src, dst = rng.sample(accounts, 2)
        moved.append(rt.call("move", src=src, dst=dst, amount=rng.randint(1, 50)))

    done, errors = hammer(THREADS, transfer, seconds=1.5)

    only_conflicts(errors)
    assert done > 0
    totals = rt.call("totals", key="none")
    assert totals["accounts"] == len(accounts)
    assert totals["money"] == opening * len(accounts)
    assert totals["moves"] == done
    assert totals["moved"] == sum(moved)


def test_swallowed_unique_violation_fails_the_function(
    runtimes: MakeRuntime, placement: str
) -> None:
    rt = runtimes(pg_engine.app, placement)
    with pytest.raises(apiary.FunctionError) as info:
        rt.call("swallow_duplicate", key=7)
    assert info.value.type_name == "UniqueViolation"
    assert info.value.function == "swallow_duplicate"
    assert "duplicate key" in info.value.message
    assert rt.call("counts") == [0, 0]  # the first insert and both side rows rolled back


# -- clear errors --------------------------------------------------------------------------


def unused_port() -> int:
    """A local TCP port where nothing listens."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_unreachable_server_raises_database_unavailable(placement: str) -> None:
    url = (
        f"postgresql://apiary:apiary@127.0.0.1:{unused_port()}/nowhere"
        f"?placement={placement}&pool_timeout=0.5"
    )
    with apiary.Runtime(pg_engine.app, url) as rt:
        with pytest.raises(apiary.DatabaseUnavailableError):
            rt.install()
        with pytest.raises(apiary.DatabaseUnavailableError):
            rt.call("whereami")
        with pytest.raises(apiary.DatabaseUnavailableError):
            rt.run("doubled", tag="x", n=1)
        # From an event loop too (with placement=db, over the loop's own connections).
        with pytest.raises(apiary.DatabaseUnavailableError):
            asyncio.run(rt.call_async("whereami"))
        with pytest.raises(apiary.DatabaseUnavailableError):
            asyncio.run(rt.run_async("doubled", tag="x", n=1))


def test_run_async_gets_past_backends_that_were_terminated(
    pg_database: str, runtimes: MakeRuntime
) -> None:
    # A server restart breaks every pooled connection: a call that is safe to repeat
    # (read-only here) is retried on a new one, and the broken idle ones are dropped.
    rt = runtimes(pg_engine.app, pool_max=4)

    async def main() -> list[int]:
        first = await asyncio.gather(*(rt.call_async("plus_one", n=n) for n in range(4)))
        with admin_connect(pg_database) as conn:
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        later = [await rt.call_async("plus_one", n=n) for n in range(10, 14)]
        return [*first, *later]

    assert asyncio.run(main()) == [1, 2, 3, 4, 11, 12, 13, 14]


def code_rows(url: str, app: str) -> int:
    """Rows of ``app`` in ``apiary.code``."""
    with admin_connect(url) as conn:
        row = conn.execute("SELECT count(*) FROM apiary.code WHERE app = %s", (app,)).fetchone()
    assert row is not None
    return int(row[0])


def test_third_party_import_is_refused_at_install_with_placement_db(
    pg_database: str, runtimes: MakeRuntime
) -> None:
    runtimes(pg_engine.app)  # the system tables exist: the failed install must not touch them
    before = code_rows(pg_database, "pg_engine")

    with pytest.raises(apiary.RegistrationError, match=r"placement=client"):
        runtimes(pg_thirdparty.app, "db")

    assert code_rows(pg_database, "pg_thirdparty") == 0
    assert code_rows(pg_database, "pg_engine") == before
    with admin_connect(pg_database) as conn:
        leftovers = conn.execute(
            "SELECT to_regclass('tp_items') IS NULL, "
            "(SELECT count(*) FROM pg_proc WHERE proname LIKE '%pg_thirdparty%')"
        ).fetchone()
    assert leftovers == (True, 0)

    rt = runtimes(pg_thirdparty.app, "client")
    assert rt.call("which") == ["psycopg", 0]


def test_non_superuser_needs_placement_client(postgres_admin: str, pg_database: str) -> None:
    role = f"{PREFIX}role_{uuid.uuid4().hex[:8]}"
    database = urlsplit(pg_database).path.lstrip("/")
    with admin_connect(postgres_admin) as conn:
        conn.execute(f"CREATE ROLE \"{role}\" LOGIN PASSWORD 'secret'")
    made: list[apiary.Runtime] = []
    try:
        with admin_connect(pg_database) as conn:
            conn.execute(f'GRANT CREATE ON DATABASE "{database}" TO "{role}"')
            # PostgreSQL 15 no longer lets every role create tables in schema public.
            conn.execute(f'GRANT CREATE ON SCHEMA public TO "{role}"')
        url = with_user(pg_database, role, "secret")

        made.append(apiary.Runtime(pg_engine.app, f"{url}?placement=db"))
        with pytest.raises(apiary.NotInstalledError, match=r"superuser"):
            made[-1].install()

        made.append(apiary.Runtime(pg_engine.app, f"{url}?placement=client"))
        made[-1].install()
        assert made[-1].call("make_pairs") == 3
        assert made[-1].call("counts") == [0, 0]
    finally:
        for rt in made:
            rt.close()
        with admin_connect(pg_database) as conn:
            conn.execute(f'DROP OWNED BY "{role}"')
        with admin_connect(postgres_admin) as conn:
            conn.execute(f'DROP ROLE "{role}"')


def test_untyped_parameter_is_refused_with_a_hint(runtimes: MakeRuntime, placement: str) -> None:
    with pytest.raises(apiary.RegistrationError, match=r"CAST\(\? AS"):
        runtimes(pg_ambiguous.app, placement)


def test_two_columns_of_one_name_both_come_back(runtimes: MakeRuntime, placement: str) -> None:
    rt = runtimes(pg_engine.app, placement)
    assert rt.call("make_pairs") == 3
    assert rt.call("pairs") == [[1, 10], [1, 11], [2, 20]]


def test_application_error_keeps_its_type_and_message(
    runtimes: MakeRuntime, placement: str
) -> None:
    rt = runtimes(pg_engine.app, placement)
    with pytest.raises(apiary.FunctionError) as info:
        rt.call("fail", message="no such room: 42 \u00e9")
    assert info.value.type_name == "ValueError"
    assert info.value.message == "no such room: 42 \u00e9"
    assert info.value.function == "fail"


# -- values --------------------------------------------------------------------------------

#: The typed row as both placements return it. PL/Python hands a function the text form of
#: every type it has no Python mapping for, and client placement reads those as text too.
TYPED_ROW: list[Any] = [
    -42,
    9007199254740993,
    decimal.Decimal("12.30"),
    0.1,
    "h\u00e9llo \U0001f41d",
    True,
    b"\x00\xff\x10",
    "2026-02-28",  # date: text
    "2026-01-02 03:04:05.678901",  # timestamp: text
    "2026-01-02 01:04:05.5+00",  # timestamptz: text, in the session's time zone
    '{"a": 1.5, "b": [true, null]}',  # jsonb: text, as jsonb normalizes it
    "12345678-1234-5678-1234-567812345678",  # uuid: text
    [1, None, 3],
]


def utc_sessions(url: str) -> None:
    """Sessions of the database show timestamptz values in UTC, whatever the server's zone."""
    database = urlsplit(url).path.lstrip("/")
    with admin_connect(url) as conn:
        conn.execute(f"ALTER DATABASE \"{database}\" SET TimeZone = 'UTC'")


def test_column_types_come_back_alike_in_both_placements(
    pg_database: str, runtimes: MakeRuntime
) -> None:
    utc_sessions(pg_database)
    by_placement = {}
    for placement in PLACEMENTS:
        rt = runtimes(pg_values.app, placement)
        stored = rt.call("store", key=f"row-{placement}", filled=True)
        nulls = rt.call("store", key=f"nulls-{placement}", filled=False)
        by_placement[placement] = (stored, nulls, rt.call("fetch", key=f"row-{placement}"))
    for placement, (stored, nulls, fetched) in by_placement.items():
        assert_same(stored, TYPED_ROW, f"{placement}: stored")
        assert_same(fetched, TYPED_ROW, f"{placement}: fetched")
        assert nulls == [None] * len(TYPED_ROW), placement
    assert isinstance(by_placement["db"][0][2], decimal.Decimal)


def test_typed_values_replay_identically(
    pg_database: str, runtimes: MakeRuntime, placement: str
) -> None:
    utc_sessions(pg_database)
    rt = runtimes(pg_values.app, placement)
    expected = dict(zip(pg_values.COLUMNS, TYPED_ROW, strict=True))
    first = rt.run("typed_flow", workflow_id="typed-1", key="k1", filled=True)
    assert_same(first, expected)
    again = rt.run("typed_flow", workflow_id="typed-1", key="k1", filled=True)
    assert_same(again, first)
    fresh = runtimes(pg_values.app, placement, install=False)
    assert_same(fresh.run("typed_flow", workflow_id="typed-1", key="k1", filled=True), first)
    assert rt.status("typed-1").status == "SUCCESS"


# -- many writes, async --------------------------------------------------------------------


def test_unit_with_more_writes_than_cached_subtransactions(
    runtimes: MakeRuntime, placement: str
) -> None:
    rt = runtimes(pg_engine.app, placement)
    # A backend caches 64 subtransaction IDs; PL/Python opens one per statement.
    assert rt.call("many_writes", batch="b", n=100) == 100
    assert rt.call("count_many", batch="b") == [100, 100]


def test_a_workflow_ends_under_read_committed_and_its_units_stay_serializable(
    runtimes: MakeRuntime, pg_database: str, placement: str
) -> None:
    # The end of a workflow, in its own transaction after the last step, reads and writes
    # only its status row and recorded outputs, which row locks serialize; under
    # SERIALIZABLE its key lookup locked the index page every new workflow is inserted
    # into, and ends failed and were retried under load. Units keep SERIALIZABLE.
    with admin_connect(pg_database) as conn:
        conn.execute("CREATE TABLE ended_under (workflow_id TEXT, isolation TEXT)")
        conn.execute(
            "CREATE FUNCTION note_end() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            "INSERT INTO ended_under VALUES (NEW.workflow_id, "
            "current_setting('transaction_isolation')); RETURN NULL; END $$"
        )
    rt = runtimes(pg_engine.app, placement)
    with admin_connect(pg_database) as conn:
        conn.execute(
            "CREATE TRIGGER note_end AFTER UPDATE OF status ON apiary.workflows "
            "FOR EACH ROW WHEN (NEW.status <> 'PENDING') EXECUTE FUNCTION note_end()"
        )
    assert rt.run("isolation_then_step", tag="ended", workflow_id="iso-1") == "serializable"
    # The same ID again: the recorded answer, nothing ends twice.
    assert rt.run("isolation_then_step", tag="ended", workflow_id="iso-1") == "serializable"
    assert asyncio.run(rt.run_async("isolation_then_step", tag="ended", workflow_id="iso-2")) == (
        "serializable"
    )
    with admin_connect(pg_database) as conn:
        ended = conn.execute("SELECT * FROM ended_under ORDER BY workflow_id").fetchall()
        assert ended == [("iso-1", "read committed"), ("iso-2", "read committed")]
        tagged = conn.execute("SELECT count(*) FROM pe_side WHERE tag = 'ended'").fetchone()
        assert tagged == (2,)


def test_a_workflow_end_finds_its_status_row_by_key_when_the_table_was_analyzed_empty(
    runtimes: MakeRuntime, pg_database: str
) -> None:
    # A backend keeps its plans. One made while the statistics said the status table was
    # a page (ANALYZE on a new install) read every workflow at each end: a scan that grew
    # with the table until autovacuum analyzed it again. The system procedure plans its
    # keyed lookups with sequential scans off. A trigger in the end's transaction reads
    # that transaction's scan counts.
    rt = runtimes(pg_engine.app, "db", pool_min=1, pool_max=1)
    with admin_connect(pg_database) as conn:
        conn.execute("CREATE TABLE end_scans (workflow_id TEXT, seq_scans BIGINT)")
        conn.execute(
            "CREATE FUNCTION note_scans() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            "INSERT INTO end_scans SELECT NEW.workflow_id, seq_scan "
            "FROM pg_stat_xact_user_tables WHERE relid = 'apiary.workflows'::regclass; "
            "RETURN NULL; END $$"
        )
        conn.execute(
            "CREATE TRIGGER note_scans AFTER UPDATE OF status ON apiary.workflows "
            "FOR EACH ROW WHEN (NEW.status <> 'PENDING') EXECUTE FUNCTION note_scans()"
        )
        conn.execute("ANALYZE apiary.workflows")
    for number in range(8):  # past the five custom plans, to the cached generic one
        assert rt.run("isolation_then_step", tag="scan", workflow_id=f"scan-{number}") == (
            "serializable"
        )
    with admin_connect(pg_database) as conn:
        scans = conn.execute("SELECT workflow_id, seq_scans FROM end_scans").fetchall()
    assert len(scans) == 8
    assert [s for _, s in scans] == [0] * 8, scans


def test_concurrent_ends_of_one_workflow_give_one_answer(
    runtimes: MakeRuntime, pg_database: str, placement: str
) -> None:
    # Under READ COMMITTED, a second end waits for the first one's row lock, then finds
    # the workflow finished: every caller of the ID gets the same answer, the unit ran once.
    rt = runtimes(pg_engine.app, placement, pool_min=4)
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(
            pool.map(
                lambda i: rt.run("isolation_then_step", tag="race", workflow_id=f"race-{i % 4}"),
                range(32),
            )
        )
    assert answers == ["serializable"] * 32
    with admin_connect(pg_database) as conn:
        assert conn.execute("SELECT count(*) FROM pe_side WHERE tag = 'race'").fetchone() == (4,)
        statuses = conn.execute(
            "SELECT status, output, count(*) FROM apiary.workflows GROUP BY status, output"
        ).fetchall()
        assert statuses == [("SUCCESS", '"serializable"', 4)]


def backends_named(url: str, application_name: str) -> int:
    """Backends connected under ``application_name``, once those closing are gone (<= 5 s)."""
    deadline = time.monotonic() + 5
    with admin_connect(url) as conn:
        while True:
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
                (application_name,),
            ).fetchone()
            assert row is not None
            if row[0] == 0 or time.monotonic() > deadline:
                return int(row[0])
            time.sleep(0.02)


@pytest.mark.parametrize("close", ["in_the_loop", "after_the_loop"])
def test_run_async_concurrent_workflows_then_close_cleanly(
    pg_database: str, runtimes: MakeRuntime, close: str
) -> None:
    runtimes(pg_engine.app)  # installed
    name = f"apiary_async_{uuid.uuid4().hex[:8]}"
    rt = apiary.Runtime(pg_engine.app, f"{pg_database}?placement=db&application_name={name}")

    async def main() -> list[Any]:
        try:
            return await asyncio.gather(
                *(
                    rt.run_async("doubled", workflow_id=f"async-{n}", tag="async", n=n)
                    for n in range(16)
                )
            )
        finally:
            if close == "in_the_loop":
                rt.close()

    try:
        results = asyncio.run(main())
    finally:
        if close == "after_the_loop":
            rt.close()
    # Closed means closed: no connection of the runtime is left on the server (before
    # the garbage collector finalizes whatever was left open).
    assert backends_named(pg_database, name) == 0
    gc.collect()  # whatever was left open may warn when collected (-W error)
    assert results == [2 * n + 1 for n in range(16)]

    check = runtimes(pg_engine.app, install=False)
    assert check.call("count_tagged", pattern="async") == 16
    assert {check.status(f"async-{n}").status for n in range(16)} == {"SUCCESS"}


def test_run_async_on_many_loops_keeps_within_the_pool(
    pg_database: str, runtimes: MakeRuntime
) -> None:
    # placement=db calls from an event loop await connections of that loop's pool: more
    # calls at once than pool_max wait their turn, and the connections of loops that
    # have closed are closed when another loop calls.
    runtimes(pg_engine.app)  # installed
    name = f"apiary_loops_{uuid.uuid4().hex[:8]}"
    url = f"{pg_database}?placement=db&pool_min=1&pool_max=2&application_name={name}"
    rt = apiary.Runtime(pg_engine.app, url)

    async def main(round_: int) -> list[Any]:
        return await asyncio.gather(
            *(rt.call_async("plus_one", n=10 * round_ + n) for n in range(6))
        )

    try:
        for round_ in range(8):
            assert asyncio.run(main(round_)) == [10 * round_ + n + 1 for n in range(6)]
            with admin_connect(pg_database) as conn:
                row = conn.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
                    (name,),
                ).fetchone()
            # At most this loop's 2, the last loop's 2 (closed at the next call), and
            # the pool of threads' 1.
            assert row is not None
            assert row[0] <= 5
    finally:
        rt.close()
    assert backends_named(pg_database, name) == 0
    gc.collect()


def test_the_thread_pool_serves_waiting_callers_in_their_order(pg_database: str) -> None:
    # ConnectionPool's twin of the test below, with threads.
    pool = ConnectionPool(
        pg_database, min_size=0, max_size=1, timeout=5, configure=lambda conn: None
    )
    got: dict[str, Any] = {}

    def take(name: str) -> threading.Thread:
        thread = threading.Thread(target=lambda: got.__setitem__(name, pool.take()))
        thread.start()
        return thread

    def waiting(count: int) -> None:
        deadline = time.monotonic() + 5
        while len(pool._waiters) != count:
            assert time.monotonic() < deadline, "the caller never waited"
            time.sleep(0.005)

    try:
        held = pool.take()
        first = take("first")
        waiting(1)
        pool.give(held)  # handed to the first waiter, not left for whoever asks next
        later = take("later")
        first.join(5)
        waiting(1)
        assert got == {"first": held}
        pool.give(got["first"])
        later.join(5)
        assert got["later"] is held
        pool.give(held)
        again = pool.take()
        pool.timeout = 0.2
        with pytest.raises(PoolTimeout):  # a waiter that times out leaves the queue
            pool.take()
        assert not pool._waiters
        pool.give(again)
        assert pool.take() is again
        pool.give(again)
    finally:
        pool.close()


def test_an_event_loops_pool_serves_waiting_callers_in_their_order(pg_database: str) -> None:
    # A connection handed back goes to the caller that has waited longest, not to one
    # that asks after it was handed back. (Woken to compete instead, a waiter under
    # sustained load kept losing to newer callers and gave up after pool_timeout.)
    async def configure(conn: psycopg.AsyncConnection[Any]) -> None:
        return None

    async def main() -> None:
        pool = AsyncConnectionPool(pg_database, max_size=1, timeout=5, configure=configure)
        try:
            held = await pool.take()
            first = asyncio.create_task(pool.take())
            await asyncio.sleep(0.01)  # first waits
            await pool.give(held)
            later = asyncio.create_task(pool.take())
            await asyncio.sleep(0.01)
            assert first.done()
            assert not later.done()
            assert await first is held
            await pool.give(held)
            assert await later is held
            # A waiter that gives up leaves no trace: the next caller is served at once.
            waiting = asyncio.create_task(pool.take())
            await asyncio.sleep(0.01)
            waiting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiting
            await pool.give(held)
            assert await asyncio.wait_for(pool.take(), 1) is held
            await pool.give(held)
        finally:
            await pool.close()

    asyncio.run(main())


# -- warm-up -------------------------------------------------------------------------------


def ping(conn: psycopg.Connection[Any], app: apiary.App, version: str) -> Any:
    """Call the app's system stub with op ``ping``; return its text result."""
    row = conn.execute(
        f'SELECT apiary."{system_stub_name(app.name)}"(%s, %s, %s)',
        (version, "ping", "[[], {}]"),
    ).fetchone()
    assert row is not None
    return row[0]


def test_ping_loads_the_runtime_once_per_backend(pg_database: str, runtimes: MakeRuntime) -> None:
    rt = runtimes(pg_engine.app)
    app, version = pg_engine.app, rt.version
    forget_code = "DELETE FROM apiary.code WHERE app = %s"
    with admin_connect(pg_database) as conn:
        # A fresh backend must read apiary.code to answer a ping: without it, it cannot.
        with conn.transaction(force_rollback=True):
            conn.execute(forget_code, (app.name,))
            with pytest.raises(psycopg.Error) as info:
                ping(conn, app, version)
        assert info.value.sqlstate == "AP003"
        assert ping(conn, app, version) == "null"
        # Loaded now: a second ping (and a unit) no longer reads apiary.code.
        with conn.transaction(force_rollback=True):
            conn.execute(forget_code, (app.name,))
            assert ping(conn, app, version) == "null"


def test_pool_connections_are_warmed_up(pg_database: str, runtimes: MakeRuntime) -> None:
    runtimes(pg_engine.app)
    rt = runtimes(pg_engine.app, install=False, pool_min=2)
    pool = rt._engine.pool()  # type: ignore[attr-defined]
    pool.wait()
    with pool.connection() as first, pool.connection() as second:
        backends = set()
        for conn in (first, second):
            backends.add(conn.execute("SELECT pg_backend_pid()").fetchone())
            # The pool's configure step loaded the runtime: it no longer needs apiary.code.
            with conn.transaction(force_rollback=True):
                conn.execute("DELETE FROM apiary.code WHERE app = %s", (pg_engine.app.name,))
                assert ping(conn, pg_engine.app, rt.version) == "null"
        assert len(backends) == 2
    assert rt.call("plus_one", n=1) == 2
