"""A partitioned deployment: four partition databases on two real PostgreSQL servers.

Partitions 0 and 1 live on the test server (``APIARY_TEST_POSTGRES_URL``), 2 and 3 on a
second one (``APIARY_TEST_POSTGRES_URL2``, started by ``scripts/pg-cluster-up``); the
PL/Proxy database on the first. Every routing test runs with both routings: directly
from this process, and through PL/Proxy.
"""

from __future__ import annotations

import concurrent.futures
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import apiary
from apiary._engines.cluster import ClusterConfig, ClusterConfigError
from apiary._partitioning import partition_of
from tests.apps import partitioned
from tests.conftest import PREFIX, TEMPLATE, _with_database

ROOT = Path(__file__).resolve().parent.parent
URL1 = os.environ.get("APIARY_TEST_POSTGRES_URL", "")
URL2 = os.environ.get("APIARY_TEST_POSTGRES_URL2", "")
PARTITIONS = 4

needs_cluster = pytest.mark.skipif(
    not (URL1 and URL2),
    reason="needs two PostgreSQL servers: run scripts/test (or scripts/postgres-up and "
    "scripts/pg-cluster-up and export both URLs)",
)


def _admin(url: str) -> Any:
    import psycopg

    return psycopg.connect(url, autocommit=True)


def _ensure_template(url: str) -> None:
    import psycopg

    with _admin(url) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (TEMPLATE,)).fetchone():
            return
        conn.execute(f'CREATE DATABASE "{TEMPLATE}"')
    with psycopg.connect(_with_database(url, TEMPLATE), autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS plpython3u")


class Cluster:
    """Four fresh partition databases (two per server) and a proxy database."""

    def __init__(self, tmp_path: Path) -> None:
        tag = uuid.uuid4().hex[:8]
        self.servers = [URL1, URL1, URL2, URL2]
        self.names = [f"{PREFIX}c{tag}_p{i}" for i in range(PARTITIONS)]
        self.proxy_name = f"{PREFIX}c{tag}_proxy"
        for url in (URL1, URL2):
            _ensure_template(url)
        for server, name in [*zip(self.servers, self.names, strict=True), (URL1, self.proxy_name)]:
            with _admin(server) as conn:
                conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{TEMPLATE}" STRATEGY FILE_COPY')
        self.urls = [_with_database(s, n) for s, n in zip(self.servers, self.names, strict=True)]
        self.proxy = _with_database(URL1, self.proxy_name)
        self.path = tmp_path / "cluster.toml"
        listed = ", ".join(f'"{u}"' for u in self.urls)
        self.path.write_text(f'partitions = [{listed}]\nproxy = "{self.proxy}"\n')

    def url(self, routing: str) -> str:
        return f"cluster:{self.path}?routing={routing}"

    def query(self, index: int, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        """Ask partition ``index`` directly."""
        with _admin(self.urls[index]) as conn:
            cursor = conn.execute(sql, params)
            return [tuple(r) for r in cursor.fetchall()] if cursor.description else []

    def drop(self) -> None:
        for server, name in [*zip(self.servers, self.names, strict=True), (URL1, self.proxy_name)]:
            try:
                with _admin(server) as conn:
                    conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            except Exception:  # the second server may be the one a test stopped
                pass


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    made = Cluster(tmp_path)
    try:
        yield made
    finally:
        made.drop()


@pytest.fixture(params=["direct", "proxy"])
def routing(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def make_rt(cluster: Cluster, routing: str) -> Iterator[Callable[..., apiary.Runtime]]:
    made: list[apiary.Runtime] = []

    def make(**options: Any) -> apiary.Runtime:
        rt = apiary.Runtime(partitioned.app, cluster.url(routing), trace_store=None, **options)
        made.append(rt)
        rt.install()
        return rt

    yield make
    for rt in made:
        rt.close()


def _open(rt: apiary.Runtime, accounts: range, balance: int = 100) -> None:
    for account in accounts:
        rt.call("open_account", account=account, owner=f"o{account}", balance=balance)


def _money(cluster: Cluster) -> int:
    return sum(
        int(cluster.query(i, "SELECT COALESCE(SUM(balance), 0) FROM accounts")[0][0])
        for i in range(PARTITIONS)
    )


# --------------------------------------------------------------------------------------
# Routing and placement of rows
# --------------------------------------------------------------------------------------


@needs_cluster
def test_each_key_lives_only_on_its_partition(cluster: Cluster, make_rt: Any) -> None:
    rt = make_rt()
    _open(rt, range(64))
    seen: list[int] = []
    for index in range(PARTITIONS):
        assert cluster.query(index, "SELECT index, count FROM apiary.partition") == [
            (index, PARTITIONS)
        ]
        ids = [row[0] for row in cluster.query(index, "SELECT id FROM accounts")]
        assert ids, f"partition {index} holds no account"
        assert all(partition_of(i, PARTITIONS) == index for i in ids)
        seen += ids
    assert sorted(seen) == list(range(64))
    # Each partition refuses a row it does not own, whoever writes it.
    stranger = next(i for i in range(100, 200) if partition_of(i, PARTITIONS) != 0)
    import psycopg

    with pytest.raises(psycopg.errors.CheckViolation):
        cluster.query(0, "INSERT INTO accounts VALUES (%s, 'x', 1)", stranger)


@needs_cluster
def test_python_and_sql_agree_on_every_keys_partition(cluster: Cluster) -> None:
    rt = apiary.Runtime(partitioned.app, cluster.url("direct"), trace_store=None)
    try:
        rt.install()
    finally:
        rt.close()
    keys = [str(i) for i in range(-50, 250)] + ["", "ann", "héllo", "日本語", "🐝", "a'b", "t\tab"]
    found = cluster.query(
        0,
        "SELECT k, apiary.partition_hash(k) & %s FROM unnest(%s::text[]) AS k",
        PARTITIONS - 1,
        keys,
    )
    assert dict(found) == {k: partition_of(k, PARTITIONS) for k in keys}


# --------------------------------------------------------------------------------------
# Workflows across partitions
# --------------------------------------------------------------------------------------


@needs_cluster
def test_concurrent_transfers_keep_the_money_and_retries_run_nothing_twice(
    cluster: Cluster, make_rt: Any
) -> None:
    rt = make_rt()
    _open(rt, range(16), balance=1000)
    transfers = [(f"t{n}", n % 16, (n * 7 + 3) % 16, 1 + n % 5) for n in range(80)]

    def run(item: tuple[str, int, int, int]) -> Any:
        name, src, dst, amount = item
        return rt.run("transfer", workflow_id=name, src=src, dst=dst, amount=amount, transfer=name)

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        # Every transfer twice at the same time (one workflow ID), then once more.
        first = list(pool.map(run, [t for t in transfers for _ in range(2)]))
        again = list(pool.map(run, transfers))  # exactly once: the recorded answers
    assert first[0::2] == first[1::2] == again
    assert _money(cluster) == 16 * 1000
    assert rt.call("total") == 16 * 1000
    for name, src, dst, amount in transfers:
        rows = [
            (row, index)
            for index in range(PARTITIONS)
            for row in cluster.query(
                index, "SELECT account, amount FROM ledger WHERE transfer = %s", name
            )
        ]
        assert sorted(rows) == sorted(
            [
                ((src, -amount), partition_of(src, PARTITIONS)),
                ((dst, amount), partition_of(dst, PARTITIONS)),
            ]
        )
        home = partition_of(name, PARTITIONS)
        assert cluster.query(
            home, "SELECT status FROM apiary.workflows WHERE workflow_id = %s", name
        ) == [("SUCCESS",)]
        assert rt.status(name).status == "SUCCESS"


@needs_cluster
def test_an_application_error_rolls_back_and_is_the_stable_answer(
    cluster: Cluster, make_rt: Any
) -> None:
    rt = make_rt()
    _open(rt, range(4), balance=10)
    for _ in range(2):
        with pytest.raises(apiary.FunctionError) as info:
            rt.run("transfer", workflow_id="big", src=1, dst=2, amount=50, transfer="big")
        assert info.value.type_name == "InsufficientFundsError"
        assert "cannot pay 50" in str(info.value)
    assert rt.status("big").status == "ERROR"
    assert _money(cluster) == 40


@needs_cluster
def test_one_partition_transactions_fan_out_reads_and_replicated_tables(
    cluster: Cluster, make_rt: Any
) -> None:
    rt = make_rt()
    _open(rt, range(12))
    rt.run("transfer", src=3, dst=5, amount=7, transfer="x1")
    assert rt.run("audit", account=3) == [93, [["x1", -7]]]
    for index in range(PARTITIONS):  # a replicated table: loaded on every partition
        cluster.query(index, "INSERT INTO fees VALUES ('wire', 25)")
    total, ids, wire = rt.run("overview", kind="wire")
    assert total == 1200
    assert sorted(ids) == list(range(12))
    assert wire == 25
    assert rt.call("fee", kind="none") is None


@needs_cluster
def test_finished_workflows_outputs_on_other_partitions_are_forgotten_later(
    cluster: Cluster, make_rt: Any
) -> None:
    rt = make_rt()
    _open(rt, range(16), balance=100)
    calls = {
        f"f{i}": {"src": i % 16, "dst": (i + 5) % 16, "amount": 1, "transfer": f"f{i}"}
        for i in range(24)
    }
    answers = {n: rt.run("transfer", workflow_id=n, **args) for n, args in calls.items()}

    def left() -> int:
        return sum(
            int(cluster.query(i, "SELECT count(*) FROM apiary.outputs")[0][0])
            for i in range(PARTITIONS)
        )

    before = left()
    assert before > 0  # units off their workflow's partition keep their outputs a while
    assert rt.forget_outputs() == 0  # kept for an hour by default
    assert rt.forget_outputs(retention=0) == before
    assert left() == 0
    for n, args in calls.items():  # finished workflows still answer from their status rows
        assert rt.run("transfer", workflow_id=n, **args) == answers[n]


# --------------------------------------------------------------------------------------
# Crashes and outages
# --------------------------------------------------------------------------------------

CRASH_CHILD = """
import sys, itertools
import apiary
from tests.apps import partitioned
rt = apiary.Runtime(partitioned.app, sys.argv[1], trace_store=None)
print("ready", flush=True)
for n in itertools.count():
    rt.run("transfer", workflow_id=f"k{n}", src=n % 16, dst=(n * 5 + 1) % 16, amount=1,
           transfer=f"k{n}")
    if n == 20:
        print("going", flush=True)
"""


@needs_cluster
def test_a_process_killed_mid_transfers_is_finished_by_recover(
    cluster: Cluster, make_rt: Any, routing: str
) -> None:
    rt = make_rt()
    _open(rt, range(16), balance=1000)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    child = subprocess.Popen(
        [sys.executable, "-c", CRASH_CHILD, cluster.url(routing)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "ready"
        assert child.stdout.readline().strip() == "going"
        time.sleep(0.3)
    finally:
        child.kill()  # SIGKILL, mid-workflow
        child.wait()
        if child.stdout is not None:
            child.stdout.close()
    rt.recover()
    pending = [
        row
        for i in range(PARTITIONS)
        for row in cluster.query(
            i, "SELECT workflow_id FROM apiary.workflows WHERE status = 'PENDING'"
        )
    ]
    assert pending == []
    assert _money(cluster) == 16 * 1000
    done = [
        row[0]
        for i in range(PARTITIONS)
        for row in cluster.query(i, "SELECT workflow_id FROM apiary.workflows")
    ]
    assert len(done) > 20
    for name in done:  # every started transfer booked exactly once on each side
        rows = [
            row
            for i in range(PARTITIONS)
            for row in cluster.query(i, "SELECT amount FROM ledger WHERE transfer = %s", name)
        ]
        assert sorted(rows) == [(-1,), (1,)], name


def _server2(*args: str) -> None:
    subprocess.run(
        [str(ROOT / "scripts" / "pg-cluster-up"), *args],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        timeout=120,
    )


@needs_cluster
def test_a_stopped_server_makes_only_its_keys_unavailable_until_it_returns(
    cluster: Cluster, make_rt: Any
) -> None:
    rt = make_rt()
    _open(rt, range(16), balance=100)
    on = {k: partition_of(k, PARTITIONS) for k in range(16)}
    near = [k for k in range(16) if on[k] < 2]  # server 1
    far = [k for k in range(16) if on[k] >= 2]  # server 2
    name = next(f"o{n}" for n in range(100) if partition_of(f"o{n}", PARTITIONS) < 2)
    _server2("--stop")
    try:
        for key in near:
            assert rt.call("balance", account=key) == 100
        for key in far:
            with pytest.raises(apiary.DatabaseUnavailableError):
                rt.call("balance", account=key)
        # Its status row on a live partition, its credit on the stopped one: it stays PENDING.
        with pytest.raises(apiary.DatabaseUnavailableError):
            rt.run("transfer", workflow_id=name, src=near[0], dst=far[0], amount=5, transfer=name)
        assert rt.status(name).status == "PENDING"
    finally:
        _server2()
    for _ in range(50):  # the partition's connections come back
        try:
            assert rt.call("balance", account=far[0]) == 100
            break
        except apiary.DatabaseUnavailableError:
            time.sleep(0.2)
    assert name in rt.recover()
    assert rt.status(name).status == "SUCCESS"
    assert _money(cluster) == 1600


@needs_cluster
def test_a_frontend_serves_a_cluster_and_answers_503_only_for_a_stopped_partition(
    cluster: Cluster, tmp_path: Path
) -> None:
    import duckdb
    import httpx

    from tests.frontend_support import running_frontend

    store = tmp_path / "trace.duckdb"
    far = next(k for k in range(16) if partition_of(k, PARTITIONS) >= 2)
    near = next(k for k in range(16) if partition_of(k, PARTITIONS) < 2)
    with running_frontend(
        cluster.url("direct"),
        partitioned.app,
        trace_store=str(store),
        heartbeat=0.2,
        orphan_after=1.0,
    ) as served:
        cli = str(Path(sys.executable).parent / "apiary")
        made = subprocess.run(  # a key made with the CLI, on the cluster's control partition
            [cli, "keys", "create", "--role", "invoke", "--db", cluster.url("direct")],
            capture_output=True,
            text=True,
            check=True,
            cwd=ROOT,
        )
        headers = {"Authorization": f"Bearer {made.stdout.strip()}"}
        with httpx.Client(base_url=served.url, timeout=30, headers=headers) as client:

            def post(name: str, body: dict[str, Any], key: str | None = None) -> httpx.Response:
                extra = {"Idempotency-Key": key} if key else {}
                return client.post(f"/v1/workflows/{name}", json=body, headers=extra)

            for account in range(8):
                body = {"account": account, "owner": "o", "balance": 50}
                assert post("new_account", body).status_code == 200
            move = {"src": near, "dst": far, "amount": 5, "transfer": "h1"}
            first = post("transfer", move, key="h1")
            assert first.status_code == 200, first.text
            assert post("transfer", move, key="h1").json() == first.json()
            assert client.get("/v1/workflows/h1").json()["status"] == "SUCCESS"
            # A transfer whose status row is on a live partition and whose credit is not.
            stuck = next(f"h{n}" for n in range(2, 200) if partition_of(f"h{n}", PARTITIONS) < 2)
            _server2("--stop")
            try:
                down = post("audit", {"account": far})
                assert down.status_code == 503, down.text
                assert post("audit", {"account": near}).status_code == 200
                move = {"src": near, "dst": far, "amount": 7, "transfer": stuck}
                assert post("transfer", move, key=stuck).status_code == 503
                assert client.get(f"/v1/workflows/{stuck}").json()["status"] == "PENDING"
            finally:
                _server2()
            for _ in range(50):
                answer = post("audit", {"account": far})
                if answer.status_code != 503:
                    break
                time.sleep(0.2)
            assert answer.status_code == 200, answer.text
            # No client retries it: the frontend finishes its own stalled workflow.
            for _ in range(100):
                if client.get(f"/v1/workflows/{stuck}").json()["status"] != "PENDING":
                    break
                time.sleep(0.1)
            assert client.get(f"/v1/workflows/{stuck}").json()["status"] == "SUCCESS"
            assert post("audit", {"account": far}).json()["output"][0] == 50 + 5 + 7
    # Traces of every partition reached the frontend's trace store.
    with duckdb.connect(str(store), read_only=True) as db:
        functions = dict(
            db.execute("SELECT function, count(*) FROM function_invocations GROUP BY 1").fetchall()
        )
    assert functions["open_account"] == 8
    assert functions["debit"] == functions["credit"] == 2


# --------------------------------------------------------------------------------------
# Registration: what a partitioned app may not do (no database needed)
# --------------------------------------------------------------------------------------


def _bank(**declared: str | None) -> apiary.App:
    app = apiary.App("refused")
    app.schema("CREATE TABLE IF NOT EXISTS a (id INTEGER PRIMARY KEY, v INTEGER)")
    app.schema("CREATE TABLE IF NOT EXISTS r (k TEXT PRIMARY KEY, v INTEGER)")
    for table, column in declared.items():
        if column is None:
            app.replicate(table)
        else:
            app.partition(table, by=column)
    return app


SET_A = apiary.sql("UPDATE a SET v = ? WHERE id = ?")
GET_A = apiary.sql("SELECT v FROM a WHERE id = ?")
SET_R = apiary.sql("UPDATE r SET v = ? WHERE k = ?")


def _refused(app: apiary.App, *needles: str, tmp_path: Path) -> None:
    with pytest.raises(apiary.RegistrationError) as info:
        apiary.Runtime(app, f"sqlite:///{tmp_path / 'x.db'}", trace_store=None).close()
    for needle in needles:
        assert needle in str(info.value)


def test_a_write_without_partition_key_is_refused(tmp_path: Path) -> None:
    app = _bank(a="id", r=None)

    @app.function
    def put(ctx: apiary.TxContext, id: int, v: int) -> int:
        return ctx.execute(SET_A, v, id)

    _refused(app, "'put'", "writes partitioned table", "partition=", tmp_path=tmp_path)


def test_a_transaction_over_two_keys_is_refused(tmp_path: Path) -> None:
    app = _bank(a="id", r=None)

    @app.function(partition="id")
    def put(ctx: apiary.TxContext, id: int, v: int) -> int:
        return ctx.execute(SET_A, v, id)

    @app.workflow
    def swap(x: int, y: int) -> Any:
        with apiary.transaction():
            first = put(x, 1)
            put(y, first)

    _refused(app, "would span partitions", "'x'", "'y'", tmp_path=tmp_path)


def test_a_write_to_a_replicated_table_is_refused(tmp_path: Path) -> None:
    app = _bank(a="id", r=None)

    @app.function(partition="k")
    def put(ctx: apiary.TxContext, k: str, v: int) -> int:
        return ctx.execute(SET_R, v, k)

    _refused(app, "writes replicated table 'r'", tmp_path=tmp_path)


def test_undeclared_tables_and_unknown_columns_are_refused(tmp_path: Path) -> None:
    _refused(_bank(a="id"), "'r'", "neither partitioned", tmp_path=tmp_path)
    _refused(_bank(a="nope", r=None), "'nope'", "not one of its columns", tmp_path=tmp_path)


def test_a_keyless_read_of_partitioned_data_needs_combine(tmp_path: Path) -> None:
    app = _bank(a="id", r=None)

    @app.function
    def peek(ctx: apiary.TxContext, id: int) -> Any:
        return ctx.query_one(GET_A, id)

    _refused(app, "'peek'", "neither partition=", "combine=", tmp_path=tmp_path)


def test_a_key_computed_inside_the_transaction_is_refused(tmp_path: Path) -> None:
    app = _bank(a="id", r=None)

    @app.function(partition="id")
    def get(ctx: apiary.TxContext, id: int) -> Any:
        return ctx.query_one(GET_A, id)

    @app.function(partition="id")
    def put(ctx: apiary.TxContext, id: int, v: int) -> int:
        return ctx.execute(SET_A, v, id)

    @app.workflow
    def chain(x: int) -> Any:
        with apiary.transaction():
            found = get(x)
            put(found, 1)

    _refused(app, "same transaction", tmp_path=tmp_path)


def test_combine_and_partition_exclude_each_other() -> None:
    app = _bank(a="id", r=None)
    with pytest.raises(apiary.RegistrationError, match="exclude each other"):

        @app.function(partition="id", combine="sum")
        def both(ctx: apiary.TxContext, id: int) -> int:
            return 0

    with pytest.raises(apiary.RegistrationError, match="combine='avg'"):

        @app.function(combine="avg")
        def avg(ctx: apiary.TxContext) -> int:
            return 0


def test_an_unpartitioned_app_is_refused_on_a_cluster(tmp_path: Path) -> None:
    from tests.apps import bank

    path = tmp_path / "c.toml"
    path.write_text(
        'partitions = ["postgresql://u@127.0.0.1:1/a", "postgresql://u@127.0.0.1:1/b"]\n'
    )
    with pytest.raises(apiary.RegistrationError, match="declares no partitioning"):
        apiary.Runtime(bank.app, f"cluster:{path}")


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        (
            'partitions = ["postgresql://h/a", "postgresql://h/b", "postgresql://h/c"]',
            "power of two",
        ),
        ("partitions = []", "non-empty list"),
        ('partitions = ["mysql://h/a"]', "partitions[0]"),
        ('partitions = ["postgresql://h/a", "postgresql://h/a"]', "twice"),
        ('partitions = ["postgresql://h/a"]\nrouting = "proxy"', "needs a 'proxy'"),
        ('partitions = ["postgresql://h/a"]\nrouting = "magic"', "'routing'"),
        ('partitions = ["postgresql://h/a"]\nnodes = 3', "unknown field(s) nodes"),
        ("partitions = [", "cluster configuration"),
    ],
)
def test_a_wrong_cluster_configuration_names_what_is_wrong(
    tmp_path: Path, text: str, needle: str
) -> None:
    path = tmp_path / "c.toml"
    path.write_text(text + "\n")
    with pytest.raises(ClusterConfigError) as info:
        ClusterConfig.from_url(f"cluster:{path}")
    assert needle in str(info.value)
    with pytest.raises(ClusterConfigError, match="does not exist"):
        ClusterConfig.from_url(f"cluster:{tmp_path / 'missing.toml'}")
