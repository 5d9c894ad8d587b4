"""PostgreSQL benchmark: a partitioned app on one database, or on a 4-partition cluster
routed directly or through PL/Proxy.

One partitioned app (``counters`` partitioned by ``k``, ``accounts`` by ``id``, 10,000 rows
each) runs three workloads::

    incr      rt.call("incr", key=k)   UPDATE counters SET n = n + 1 WHERE k = ? RETURNING n
    read      rt.call("get", key=k)    SELECT n FROM counters WHERE k = ?
    transfer  rt.run("transfer", src=a, dst=b, amount=1): a workflow of two partitioned
              functions, debit(a) then credit(b), each its own transaction; a != b, so on
              the cluster they usually run on two partitions

with uniformly random keys, tracing on (the default), plus ``incr/notrace`` and
``read/notrace``: the same calls on Runtimes made with ``trace=False``. Three systems:

* ``single``: a :class:`apiary.Runtime` on one ``postgresql://`` database (placement=db);
  there the partitioning declarations are only checked;
* ``direct``: ``cluster:PATH?routing=direct`` over four partition databases, two on each
  of two PostgreSQL servers (``--url`` and ``--url2``): this process computes a unit's
  partition and calls its stored procedure there;
* ``proxy``: the same cluster with ``?routing=proxy``: every partitioned unit is called
  through its PL/Proxy function in a proxy database (on the first server), which hashes
  the key in SQL and calls the partition.

The benchmark creates its databases afresh (``apiary_bench_cluster_*``), loads them once
and drops them at the end, also on failure or Ctrl-C. For each client count and workload
the systems get a warm-up, then their rounds are interleaved (the order rotating from
round to round), so that drift of the machine hits every system alike; the tables show
medians over rounds, the ratios to ``single`` and the routing cost (proxy p50 minus direct
p50, the median of the per-round differences) come from the same run. Run::

    .venv/bin/python -m benchmarks.cluster_routing [--json PATH] [--smoke]

Both servers run on this machine, so the cluster has no more CPUs than the single
database: the figures measure what routing costs, not how a cluster scales.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import apiary
from apiary._bench.cli import sigterm_as_interrupt
from benchmarks._harness import Round, RoundStats, run_threads

KEYS = 10_000
ACCOUNTS = 10_000
BALANCE = 1_000_000
PARTITIONS = 4
DEFAULT_URL = os.environ.get(
    "APIARY_TEST_POSTGRES_URL", "postgresql://apiary:apiary@127.0.0.1:55432/apiary_test"
)
DEFAULT_URL2 = os.environ.get(
    "APIARY_TEST_POSTGRES_URL2", "postgresql://apiary:apiary@127.0.0.1:55433/apiary_test"
)
PREFIX = "apiary_bench_cluster"

SCHEMA = """
CREATE TABLE IF NOT EXISTS counters (
    k INTEGER PRIMARY KEY,
    n INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS accounts (
    id      INTEGER PRIMARY KEY,
    balance BIGINT NOT NULL
);
"""

# --------------------------------------------------------------------------------------
# The app
# --------------------------------------------------------------------------------------

app = apiary.App("cluster_routing_bench")
app.schema(SCHEMA)
app.partition("counters", by="k")
app.partition("accounts", by="id")

INCR = apiary.sql("UPDATE counters SET n = n + 1 WHERE k = ? RETURNING n")
GET = apiary.sql("SELECT n FROM counters WHERE k = ?")
DEBIT = apiary.sql("UPDATE accounts SET balance = balance - ? WHERE id = ? RETURNING balance")
CREDIT = apiary.sql("UPDATE accounts SET balance = balance + ? WHERE id = ? RETURNING balance")


@app.function(partition="key")
def incr(ctx: apiary.TxContext, key: int) -> int | None:
    """Count one more on ``key``; its new count."""
    row = ctx.query_one(INCR, key)
    return None if row is None else int(row[0])


@app.function(partition="key")
def get(ctx: apiary.TxContext, key: int) -> int | None:
    """The count of ``key`` (read-only)."""
    row = ctx.query_one(GET, key)
    return None if row is None else int(row[0])


@app.function(partition="acct")
def debit(ctx: apiary.TxContext, acct: int, amount: int) -> int | None:
    """Take ``amount`` from an account; its new balance."""
    row = ctx.query_one(DEBIT, amount, acct)
    return None if row is None else int(row[0])


@app.function(partition="acct")
def credit(ctx: apiary.TxContext, acct: int, amount: int) -> int | None:
    """Give ``amount`` to an account; its new balance."""
    row = ctx.query_one(CREDIT, amount, acct)
    return None if row is None else int(row[0])


@app.workflow
def transfer(src: int, dst: int, amount: int):  # type: ignore[no-untyped-def]
    """Move ``amount`` from ``src`` to ``dst``: two transactions, on their own partitions."""
    taken = debit(src, amount)  # type: ignore[call-arg]
    given = credit(dst, amount)  # type: ignore[call-arg]
    return [taken, given]


# --------------------------------------------------------------------------------------
# Workloads and systems
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Workload:
    """One kind of call, and whether the Runtimes running it trace."""

    name: str
    trace: bool
    units: int  # partitioned units routed per call

    @property
    def kind(self) -> str:
        """incr, read or transfer."""
        return self.name.split("/")[0]


WORKLOADS = {
    w.name: w
    for w in (
        Workload("incr", True, 1),
        Workload("read", True, 1),
        Workload("transfer", True, 2),
        Workload("incr/notrace", False, 1),
        Workload("read/notrace", False, 1),
    )
}

SINGLE, DIRECT, PROXY = "single", "direct", "proxy"
SYSTEMS = (SINGLE, DIRECT, PROXY)


@dataclass
class Databases:
    """The benchmark's databases: their URLs, and how to reach each server as admin."""

    single: str
    partitions: list[str]
    proxy: str
    admins: dict[str, str]  # database name -> the admin URL of its server
    workdir: str

    def toml(self, clients: int) -> str:
        """A cluster file whose pools open a connection per client thread up front."""
        path = os.path.join(self.workdir, f"cluster-{clients}.toml")
        options = f"?placement=db&pool_min={clients}"
        parts = ", ".join(json.dumps(url + options) for url in self.partitions)
        with open(path, "w") as out:
            out.write(f"partitions = [{parts}]\nproxy = {json.dumps(self.proxy + options)}\n")
        return path

    def url(self, system: str, clients: int) -> str:
        """The Runtime URL of a system."""
        if system == SINGLE:
            return f"{self.single}?placement=db&pool_min={clients}"
        return f"cluster:{self.toml(clients)}?routing={system}"


def with_database(url: str, database: str) -> str:
    """``url`` pointing at another database on the same server, without a query string."""
    return urlunsplit(urlsplit(url)._replace(path=f"/{database}", query=""))


def runner(runtime: apiary.Runtime, workload: Workload) -> Callable[[random.Random], Any]:
    """Draws one call's arguments (outside the timed part) and returns the call."""
    if workload.kind == "transfer":
        run = runtime.run

        def transfer_call(rng: random.Random) -> Callable[[], Any]:
            src = rng.randint(1, ACCOUNTS)
            dst = rng.randint(1, ACCOUNTS - 1)
            dst += dst >= src
            return lambda: run("transfer", src=src, dst=dst, amount=1)

        return transfer_call
    call = runtime.call
    function = "incr" if workload.kind == "incr" else "get"

    def keyed_call(rng: random.Random) -> Callable[[], Any]:
        key = rng.randint(1, KEYS)
        return lambda: call(function, key=key)

    return keyed_call


def timed(
    runtime: apiary.Runtime, workload: Workload, threads: int, seconds: float, seed: int
) -> Round:
    """Run ``workload`` from ``threads`` threads for ``seconds``."""
    make = runner(runtime, workload)
    return run_threads(threads, lambda index, rng: make(rng), seconds, seed)


# --------------------------------------------------------------------------------------
# Databases
# --------------------------------------------------------------------------------------


def create_databases(url: str, url2: str, prefix: str, workdir: str) -> Databases:
    """Name the databases (partitions 0, 1 and the proxy and single on the first server,
    partitions 2, 3 on the second) and create them afresh, empty."""
    import psycopg

    admin1, admin2 = with_database(url, "postgres"), with_database(url2, "postgres")
    admins = {f"{prefix}_single": admin1, f"{prefix}_proxy": admin1}
    for index in range(PARTITIONS):
        admins[f"{prefix}_p{index}"] = admin1 if index < PARTITIONS // 2 else admin2
    dbs = Databases(
        single=with_database(url, f"{prefix}_single"),
        partitions=[
            with_database(url if index < PARTITIONS // 2 else url2, f"{prefix}_p{index}")
            for index in range(PARTITIONS)
        ],
        proxy=with_database(url, f"{prefix}_proxy"),
        admins=admins,
        workdir=workdir,
    )
    for database, admin in admins.items():
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{database}"')
    return dbs


def drop_databases(dbs: Databases) -> None:
    """Drop every database of the benchmark (the proxy first: its PL/Proxy backends hold
    connections to the partitions); report, but survive, a failure."""
    import psycopg

    for database, admin in sorted(dbs.admins.items(), key=lambda item: "proxy" not in item[0]):
        for attempt in range(3):
            try:
                with psycopg.connect(admin, autocommit=True) as conn:
                    conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
                break
            except psycopg.Error as exc:
                if attempt == 2:
                    print(f"could not drop database {database}: {exc}", file=sys.stderr)
                time.sleep(0.5)


def load(dbs: Databases) -> None:
    """Install the app on the single database and on the cluster (its proxy included),
    then load every partition with the rows it owns (its CHECK constraint admits no other)."""
    import psycopg

    with apiary.Runtime(app, dbs.url(SINGLE, 1), trace_store=None) as runtime:
        runtime.install()
    with apiary.Runtime(app, dbs.url(PROXY, 1), trace_store=None) as runtime:
        runtime.install()
    targets = [(dbs.single, "TRUE")] + [
        (url, f"apiary.partition_hash(g::text) & {PARTITIONS - 1} = {index}")
        for index, url in enumerate(dbs.partitions)
    ]
    for url, owned in targets:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(
                f"INSERT INTO counters (k, n) SELECT g, 0 FROM generate_series(1, {KEYS}) AS g "
                f"WHERE {owned}"
            )
            conn.execute(
                f"INSERT INTO accounts (id, balance) SELECT g, {BALANCE} "
                f"FROM generate_series(1, {ACCOUNTS}) AS g WHERE {owned}"
            )
            conn.execute("VACUUM ANALYZE counters")
            conn.execute("VACUUM ANALYZE accounts")


def totals(urls: list[str]) -> dict[str, int]:
    """Rows, counts, money and finished workflows summed over some databases."""
    import psycopg

    found = {"counters": 0, "incr": 0, "accounts": 0, "money": 0, "workflows": 0}
    for url in urls:
        with psycopg.connect(url, autocommit=True) as conn:
            row = conn.execute("SELECT count(*), coalesce(sum(n), 0) FROM counters").fetchone()
            assert row is not None
            found["counters"] += int(row[0])
            found["incr"] += int(row[1])
            row = conn.execute(
                "SELECT count(*), coalesce(sum(balance), 0) FROM accounts"
            ).fetchone()
            assert row is not None
            found["accounts"] += int(row[0])
            found["money"] += int(row[1])
            row = conn.execute(
                "SELECT count(*) FROM apiary.workflows WHERE name = 'transfer' "
                "AND status = 'SUCCESS'"
            ).fetchone()
            assert row is not None
            found["workflows"] += int(row[0])
    return found


def check_answers(runtimes: dict[str, apiary.Runtime], dbs: Databases) -> int:
    """``get`` of every system reads what the owning database holds, and ``incr`` adds one
    to it; returns the incr calls made per system."""
    import psycopg

    rng = random.Random(7)
    keys = [rng.randint(1, KEYS) for _ in range(8)]
    for system, runtime in runtimes.items():
        urls = [dbs.single] if system == SINGLE else dbs.partitions
        for key in keys:
            held = []
            for url in urls:
                with psycopg.connect(url, autocommit=True) as conn:
                    row = conn.execute("SELECT n FROM counters WHERE k = %s", (key,)).fetchone()
                    if row is not None:
                        held.append(int(row[0]))
            if len(held) != 1:
                raise AssertionError(f"key {key} is held by {len(held)} databases of {system}")
            got = runtime.call("get", key=key)
            if got != held[0]:
                raise AssertionError(f"{system} get({key}) = {got}, the database holds {held[0]}")
            bumped = runtime.call("incr", key=key)
            if bumped != held[0] + 1:
                raise AssertionError(f"{system} incr({key}) = {bumped}, expected {held[0] + 1}")
    return len(keys)


# --------------------------------------------------------------------------------------
# Measuring
# --------------------------------------------------------------------------------------


@dataclass
class Result(RoundStats):
    """All rounds of one system at one workload and client count."""

    workload: str
    clients: int
    system: str
    rounds: list[Round] = field(default_factory=list)


@dataclass
class Counted:
    """Calls that committed on each data set (single database, cluster), to check against
    what the tables hold at the end."""

    incr: dict[str, int] = field(default_factory=lambda: {SINGLE: 0, "cluster": 0})
    transfers: dict[str, int] = field(default_factory=lambda: {SINGLE: 0, "cluster": 0})

    def add(self, system: str, workload: Workload, calls: int) -> None:
        data = SINGLE if system == SINGLE else "cluster"
        if workload.kind == "incr":
            self.incr[data] += calls
        elif workload.kind == "transfer":
            self.transfers[data] += calls


def bench_group(
    dbs: Databases,
    workloads: list[Workload],
    clients: int,
    seconds: float,
    rounds: int,
    warmup: float,
    counted: Counted,
) -> list[Result]:
    """Benchmark the three systems on workloads that share a trace setting."""
    trace = workloads[0].trace
    runtimes: dict[str, apiary.Runtime] = {}
    results: list[Result] = []
    try:
        for system in SYSTEMS:
            runtimes[system] = apiary.Runtime(
                app, dbs.url(system, clients), trace=trace, trace_store=None
            )
        checked = check_answers(runtimes, dbs)
        for system in SYSTEMS:
            counted.add(system, WORKLOADS["incr"], checked)
        for workload in workloads:
            group = {system: Result(workload.name, clients, system) for system in SYSTEMS}
            for system in SYSTEMS:
                done = timed(runtimes[system], workload, clients, warmup, seed=0).ops
                counted.add(system, workload, done)
            for number in range(1, rounds + 1):
                shift = (number - 1) % len(SYSTEMS)
                for system in SYSTEMS[shift:] + SYSTEMS[:shift]:
                    measured = timed(runtimes[system], workload, clients, seconds, seed=number)
                    group[system].rounds.append(measured)
                    counted.add(system, workload, measured.ops)
                    print(
                        f"  {workload.name} clients={clients} round {number}/{rounds} "
                        f"{system:<7} {measured.throughput:8.0f} calls/s "
                        f"p50 {measured.percentile(50):.3f} ms",
                        file=sys.stderr,
                        flush=True,
                    )
            results += group.values()
        return results
    finally:
        for runtime in runtimes.values():
            runtime.close()


def routing_cost(results: list[Result], workload: str, clients: int) -> float | None:
    """Median over rounds of proxy p50 minus direct p50 (round by round), in µs."""
    by_system = {r.system: r for r in results if r.workload == workload and r.clients == clients}
    direct, proxy = by_system.get(DIRECT), by_system.get(PROXY)
    if direct is None or proxy is None:
        return None
    deltas = [
        p.percentile(50) - d.percentile(50)
        for p, d in zip(proxy.rounds, direct.rounds, strict=True)
    ]
    return statistics.median(deltas) * 1000


def configs(results: list[Result]) -> list[tuple[str, int]]:
    """(workload, clients) in the order of WORKLOADS, then clients."""
    return sorted(
        {(r.workload, r.clients) for r in results},
        key=lambda c: (list(WORKLOADS).index(c[0]), c[1]),
    )


def table(results: list[Result]) -> str:
    """Throughput, latency and the ratio to ``single``, as a Markdown table."""
    lines = [
        "| workload | clients | system | calls/s (median) | min - max | p50 ms | p99 ms "
        "| calls/s vs single | p50 vs single |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    by_key = {(r.workload, r.clients, r.system): r for r in results}
    for workload, clients in configs(results):
        base = by_key.get((workload, clients, SINGLE))
        for system in SYSTEMS:
            r = by_key.get((workload, clients, system))
            if r is None:
                continue
            low = min(x.throughput for x in r.rounds)
            high = max(x.throughput for x in r.rounds)
            ratio = "-" if base is None else f"{r.throughput / base.throughput:.2f}x"
            slower = "-" if base is None else f"{r.p50 / base.p50:.2f}x"
            lines.append(
                f"| {workload} | {clients} | {system} | {r.throughput:,.0f} "
                f"| {low:,.0f} - {high:,.0f} | {r.p50:.3f} | {r.p99:.3f} | {ratio} | {slower} |"
            )
    return "\n".join(lines)


def cost_table(results: list[Result]) -> str:
    """What routing through PL/Proxy costs per call and per routed unit."""
    lines = [
        "| workload | clients | proxy - direct p50, µs/call | routed units/call | µs/unit "
        "| proxy / direct calls/s |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    by_key = {(r.workload, r.clients, r.system): r for r in results}
    for workload, clients in configs(results):
        cost = routing_cost(results, workload, clients)
        direct = by_key.get((workload, clients, DIRECT))
        proxy = by_key.get((workload, clients, PROXY))
        if cost is None or direct is None or proxy is None:
            continue
        units = WORKLOADS[workload].units
        lines.append(
            f"| {workload} | {clients} | {cost:,.0f} | {units} | {cost / units:,.0f} "
            f"| {proxy.throughput / direct.throughput:.2f}x |"
        )
    return "\n".join(lines)


def as_json(results: list[Result]) -> list[dict[str, Any]]:
    """Every result with its rounds and ratios, for ``--json``."""
    by_key = {(r.workload, r.clients, r.system): r for r in results}
    found = []
    for r in results:
        base = by_key.get((r.workload, r.clients, SINGLE))
        found.append(
            {
                "workload": r.workload,
                "trace": WORKLOADS[r.workload].trace,
                "clients": r.clients,
                "system": r.system,
                "throughput": r.throughput,
                "p50_ms": r.p50,
                "p99_ms": r.p99,
                "throughput_vs_single": None if base is None else r.throughput / base.throughput,
                "p50_vs_single": None if base is None else r.p50 / base.p50,
                "routing_cost_us": routing_cost(results, r.workload, r.clients)
                if r.system == PROXY
                else None,
                "rounds": [
                    {
                        "ops": x.ops,
                        "seconds": x.seconds,
                        "throughput": x.throughput,
                        "p50_ms": x.percentile(50),
                        "p99_ms": x.percentile(99),
                    }
                    for x in r.rounds
                ],
            }
        )
    return found


def machine(dbs: Databases) -> str:
    """One line describing the machine and versions."""
    import psycopg

    servers = []
    for url in (dbs.partitions[0], dbs.partitions[-1]):
        with psycopg.connect(url, autocommit=True) as conn:
            version = conn.execute("SHOW server_version").fetchone()
            assert version is not None
            servers.append(f"{urlsplit(url).port}: {version[0]}")
    plproxy = "?"
    with psycopg.connect(dbs.proxy, autocommit=True) as conn:
        row = conn.execute(
            "SELECT extversion FROM pg_extension WHERE extname = 'plproxy'"
        ).fetchone()
        if row is not None:
            plproxy = row[0]
    return (
        f"{os.cpu_count()} CPUs, {platform.system()} {platform.release()}, Python "
        f"{platform.python_version()} (client), PostgreSQL servers {', '.join(servers)} "
        f"(PL/Proxy {plproxy}), psycopg {psycopg.__version__}, apiary {apiary.__version__}"
    )


def load_average() -> str:
    """The 1, 5 and 15 minute load averages."""
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main(argv: list[str] | None = None) -> None:
    """Parse arguments, build the databases, run the benchmark, print the tables, clean up."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.cluster_routing", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--duration", type=float, default=1.5, help="seconds of a round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per system")
    parser.add_argument("--warmup", type=float, default=0.8, help="warm-up seconds per system")
    parser.add_argument(
        "--clients", type=int, nargs="+", default=[1, 4], help="concurrent client threads"
    )
    parser.add_argument(
        "--workloads",
        nargs="+",
        choices=list(WORKLOADS),
        default=list(WORKLOADS),
        help="workloads to run (/notrace: Runtimes with trace=False)",
    )
    parser.add_argument(
        "--smoke", action="store_true", help="a quick check: 1 round of 0.2 s, 0.1 s warm-up"
    )
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    parser.add_argument(
        "--url",
        default=DEFAULT_URL,
        help=f"any database on the first server, as a superuser (default {DEFAULT_URL}): "
        "the single database, partitions 0-1 and the proxy",
    )
    parser.add_argument(
        "--url2",
        default=DEFAULT_URL2,
        help=f"any database on the second server (default {DEFAULT_URL2}): partitions 2-3",
    )
    parser.add_argument(
        "--prefix", default=PREFIX, help=f"names of the benchmark's databases (default {PREFIX})"
    )
    args = parser.parse_args(argv)
    if args.smoke:
        args.duration, args.rounds, args.warmup = 0.2, 1, 0.1
    if args.rounds < 1 or min(args.clients) < 1:
        parser.error("--rounds and --clients must be at least 1")

    load_before = load_average()
    began = time.perf_counter()
    workdir = tempfile.mkdtemp(prefix="apiary-cluster-bench-")
    dbs: Databases | None = None
    results: list[Result] = []
    counted = Counted()
    try:
        with sigterm_as_interrupt():  # the databases are dropped on SIGTERM too
            dbs = create_databases(args.url, args.url2, args.prefix, workdir)
            load(dbs)
            described = machine(dbs)
            print(f"machine: {described}", file=sys.stderr)
            chosen = [WORKLOADS[name] for name in args.workloads]
            for clients in args.clients:
                for trace in (True, False):
                    group = [w for w in chosen if w.trace == trace]
                    if group:
                        results += bench_group(
                            dbs, group, clients, args.duration, args.rounds, args.warmup, counted
                        )
            single = totals([dbs.single])
            cluster = totals(dbs.partitions)
    finally:
        if dbs is not None:
            drop_databases(dbs)
        shutil.rmtree(workdir, ignore_errors=True)

    problems = []
    for name, found in ((SINGLE, single), ("cluster", cluster)):
        if found["counters"] != KEYS or found["accounts"] != ACCOUNTS:
            problems.append(f"{name}: {found['counters']} counters, {found['accounts']} accounts")
        if found["incr"] != counted.incr[name]:
            problems.append(
                f"{name}: {counted.incr[name]} incr calls, counts sum to {found['incr']}"
            )
        if found["money"] != ACCOUNTS * BALANCE:
            problems.append(f"{name}: money is {found['money']}, not {ACCOUNTS * BALANCE}")
        if found["workflows"] != counted.transfers[name]:
            problems.append(
                f"{name}: {counted.transfers[name]} transfers ran, "
                f"{found['workflows']} SUCCESS rows"
            )
    if problems:
        raise AssertionError("; ".join(problems))
    load_after = load_average()
    elapsed = time.perf_counter() - began

    print()
    print(f"Machine: {described}")
    print(f"Load average before: {load_before}; after: {load_after}; took {elapsed:.0f} s")
    print(
        f"Cluster: {PARTITIONS} partitions, 2 per server, proxy on the first; single database on "
        f"the first server. Keys uniform over {KEYS:,} counters / {ACCOUNTS:,} accounts; "
        f"SERIALIZABLE; {args.rounds} rounds of {args.duration:g} s, interleaved, after "
        f"{args.warmup:g} s warm-up; medians over rounds."
    )
    print()
    print(table(results))
    print()
    print(cost_table(results))
    print()
    print(
        f"Checked: get/incr answers match the owning database; counts sum to the incr calls "
        f"({counted.incr[SINGLE]:,} single, {counted.incr['cluster']:,} cluster); money is "
        f"conserved and every transfer ({counted.transfers[SINGLE]:,} single, "
        f"{counted.transfers['cluster']:,} cluster) left one SUCCESS row."
    )
    if args.json:
        with open(args.json, "w") as out:
            json.dump(
                {
                    "machine": described,
                    "load_before": load_before,
                    "load_after": load_after,
                    "settings": {
                        "duration": args.duration,
                        "rounds": args.rounds,
                        "warmup": args.warmup,
                        "clients": args.clients,
                        "partitions": PARTITIONS,
                        "keys": KEYS,
                    },
                    "results": as_json(results),
                },
                out,
                indent=2,
            )


if __name__ == "__main__":
    # placement=db ships the module defining the app into the database under its import
    # name, and "__main__" is none: run the app from this module's importable twin.
    from benchmarks.cluster_routing import main as run_main

    run_main()
