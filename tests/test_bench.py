"""``apiary bench`` in smoke mode: every workload, tiny data, rounds of a fraction of a second.

Timings are never asserted (the machine is shared); the tests check that the reports are
written, that their figures are sane and that every database's invariants held.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from apiary._bench import cli
from apiary._bench.direct import run_now
from apiary._bench.runner import _settled, run_timed
from apiary._bench.systems import SYSTEMS, VARIANTS, ApiarySystem, SqliteDatabase
from apiary._bench.workloads import WORKLOADS
from apiary._cli import main
from apiary._tracing.store import TraceStore
from tests.conftest import ENGINES, POSTGRES_URL

SMOKE = ["--clients", "2", "--duration", "0.3", "--rounds", "1", "--warmup", "0.1"]


def bench(tmp_path: Path, *options: str) -> dict[str, Any]:
    """Run ``apiary bench`` in this process; return its JSON report."""
    out = tmp_path / "out"
    status = main(["bench", "--scale", "tiny", *SMOKE, "--out", str(out), *options])
    data: dict[str, Any] = json.loads((out / "results.json").read_text())
    assert status == (0 if all(c["ok"] for c in data["checks"]) else 1)
    markdown = (out / "results.md").read_text()
    for result in data["results"]:
        assert f"| {result['system']} |" in markdown
    if importlib.util.find_spec("matplotlib") is not None:
        for workload in data["settings"]["workloads"]:
            assert (out / f"{workload}.png").stat().st_size > 0
    return data


def assert_sane(data: dict[str, Any], systems: list[str]) -> None:
    """Every system ran every workload, completed operations, and every check held."""
    ran = {(r["workload"], r["system"]) for r in data["results"]}
    assert ran == {(w, s) for w in data["settings"]["workloads"] for s in systems}
    for r in data["results"]:
        assert r["throughput"] > 0, r
        assert 0 < r["p50_ms"] <= r["p99_ms"], r
        assert not r["errors"], r
    failed = [c for c in data["checks"] if not c["ok"]]
    assert not failed
    assert {c["workload"] for c in data["checks"]} == set(data["settings"]["workloads"])


def test_cli_names_match_the_package() -> None:
    assert tuple(WORKLOADS) == cli.WORKLOADS
    assert cli.SYSTEMS == SYSTEMS
    assert tuple(VARIANTS) == cli.VARIANTS


#: The systems each engine under test runs in smoke mode: tracing off, and manual logging.
ENGINE_SYSTEMS = {
    "sqlite": ["apiary-sqlite:trace-off", "apiary-sqlite:manual-log"],
    "postgres-db": ["apiary-pg:trace-off", "apiary-pg:manual-log"],
    "postgres-client": ["apiary-pg-client:trace-off"],
}
#: SQLite, and PostgreSQL with the placements selected (both share one database per run).
ENGINE_GROUPS = [["sqlite"]] if "sqlite" in ENGINES else []
ENGINE_GROUPS += [[e for e in ENGINES if e.startswith("postgres")]] if POSTGRES_URL else []
CASES = [(group, w) for group in ENGINE_GROUPS if group for w in WORKLOADS]


@pytest.mark.parametrize(
    ("engines", "workload"), CASES, ids=[f"{'+'.join(g)}-{w}" for g, w in CASES]
)
def test_smoke(
    tmp_path: Path,
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
    engines: list[str],
    workload: str,
) -> None:
    monkeypatch.setenv("APIARY_BENCH_DBOS_PYTHON", str(tmp_path / "no-such-python"))
    systems = [s for engine in engines for s in ENGINE_SYSTEMS[engine]]
    if engines != ["sqlite"]:
        systems.append("direct")  # the conventional code in this process, on PostgreSQL
    options = ["--workload", workload, "--systems", *systems, "dbos"]
    if engines != ["sqlite"]:
        options += ["--db-url", request.getfixturevalue("postgres_admin")]
    data = bench(tmp_path, *options)
    assert_sane(data, systems)
    # Reported with the reason (no PostgreSQL, or no DBOS here), not silently dropped.
    reason = data["skipped"]["dbos"]
    assert ("--db-url" if engines == ["sqlite"] else "DBOS Transact not found") in reason
    assert f"- dbos: {reason}" in (tmp_path / "out" / "results.md").read_text()
    assert any(e["comparison"] == "manual logging" for e in data["ratios"])
    # Each SQLite system has a database file; the PostgreSQL systems share one database,
    # checked once against all their operations.
    checked = sorted(sorted(c["systems"]) for c in data["checks"])
    if engines == ["sqlite"]:
        assert checked == sorted([s] for s in systems)
    else:
        assert checked == [sorted(systems)]


def test_direct_calls_run_the_service_handlers_without_an_event_loop() -> None:
    async def no_wait(x: int) -> int:
        return x + 1

    async def waits() -> None:
        await asyncio.sleep(0)

    assert run_now(no_wait(1)) == 2
    with pytest.raises(RuntimeError, match=r"waits.*cannot run directly"):
        run_now(waits())


def test_fault_tolerance_variants(tmp_path: Path) -> None:
    data = bench(
        tmp_path,
        "--workload",
        "counter",
        "--systems",
        "apiary-sqlite",
        "--variants",
        "record-none",
        "record-sfr",
        "record-all",
    )
    assert_sane(
        data, ["apiary-sqlite:record-none", "apiary-sqlite:record-sfr", "apiary-sqlite:record-all"]
    )
    compared = {e["comparison"] for e in data["ratios"]}
    assert {"SFR recording", "recording everything"} <= compared


def test_smoke_sqlite_traced(tmp_path: Path) -> None:
    # As a user gets it: tracing on, spooled into DuckDB by the runtime.
    data = bench(tmp_path, "--workload", "hotel", "--systems", "apiary-sqlite")
    assert_sane(data, ["apiary-sqlite"])


def test_a_traced_systems_round_ends_with_its_traces_spooled(tmp_path: Path) -> None:
    # Settling moves what the round staged into the trace store before the next system's
    # round starts, and the round's time counts it; a system without tracing has nothing
    # to settle.
    workload = WORKLOADS["hotel"]
    params = workload.params("tiny")
    database = SqliteDatabase(tmp_path / "hotel.db")
    traced = ApiarySystem("apiary-sqlite", database, workload, tmp_path)
    untraced = ApiarySystem("apiary-sqlite:trace-off", database, workload, tmp_path)
    traced.install()
    database.load(workload, params)
    try:
        for system in (traced, untraced):
            system.open(1)
        measured = [
            _settled(s, run_timed([s.runner()], workload, params, s.tally, 0.3, 1, s.name))
            for s in (traced, untraced)
        ]
        assert measured[0].ops > 0
        assert measured[0].settled > 0
        assert measured[1].settled < 0.05  # nothing to do but return
        staged = database.query("SELECT count(*) FROM apiary_trace_staging")[0][0]
        assert staged == 0
        with TraceStore(traced.trace_store, {}, read_only=True) as store:
            rows = store.sql("SELECT count(DISTINCT workflow_id) FROM function_invocations")[1]
        assert rows[0][0] == measured[0].ops  # every workflow of the round, traced and stored
    finally:
        for system in (traced, untraced):
            system.close()


def test_postgres_without_url_is_skipped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("APIARY_BENCH_DB_URL", raising=False)
    data = bench(
        tmp_path, "--workload", "counter", "--systems", "apiary-sqlite:trace-off", "apiary-pg"
    )
    assert_sane(data, ["apiary-sqlite:trace-off"])
    assert "--db-url" in data["skipped"]["apiary-pg"]


def test_unknown_names_are_refused(tmp_path: Path) -> None:
    assert main(["bench", "--workload", "nope", "--out", str(tmp_path)]) == 2
    assert main(["bench", "--systems", "apiary-sqlite:fast", "--out", str(tmp_path)]) == 2
    assert main(["bench", "--systems", "apiary-http:record-all", "--out", str(tmp_path)]) == 2


PG_GROUPS = [g for g in ENGINE_GROUPS if g != ["sqlite"]]


@pytest.mark.parametrize("engines", PG_GROUPS, ids=["+".join(g) for g in PG_GROUPS])
def test_http_systems(tmp_path: Path, postgres_admin: str, engines: list[str]) -> None:
    # apiary serve and the RPC service baseline, each a server process, over HTTP.
    systems = ["apiary-http", "apiary-http:trace-off", "rpc-baseline"]
    data = bench(tmp_path, "--workload", "hotel", "--systems", *systems, "--db-url", postgres_admin)
    assert_sane(data, systems)
    (ratio,) = [e for e in data["ratios"] if e["comparison"] == "end to end over HTTP"]
    assert ratio["target"] == 2.0


def _descendants(pid: int) -> set[int]:
    """The processes below ``pid``, read from /proc."""
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            children = (task / "children").read_text().split()
        except OSError:
            continue  # the thread ended
        for child in map(int, children):
            found |= {child} | _descendants(child)
    return found


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (an exited process not yet reaped is a zombie: not alive)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


@pytest.mark.skipif(not POSTGRES_URL, reason="needs APIARY_TEST_POSTGRES_URL")
def test_a_terminated_run_stops_its_server_processes(tmp_path: Path, postgres_admin: str) -> None:
    # SIGTERM ends a run as Ctrl-C does: apiary serve (with its spooler process) and the
    # RPC service are stopped, not left running without their parent.
    progress = tmp_path / "progress.txt"
    with progress.open("w") as sink:
        bench = subprocess.Popen(
            [sys.executable, "-m", "apiary._cli", "bench", "--workload", "counter", "--systems",
             "apiary-http", "rpc-baseline", "--scale", "tiny", "--clients", "1", "--warmup",
             "0.1", "--duration", "60", "--rounds", "1", "--db-url", postgres_admin,
             "--out", str(tmp_path / "out")],
            stdout=sink, stderr=sink, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        # Both servers are up once the second one's warm-up is reported; the first one's
        # 60 s round is then running.
        while "warm-up rpc-baseline" not in progress.read_text() and bench.poll() is None:
            assert time.monotonic() < deadline, progress.read_text()
            time.sleep(0.2)
        servers = _descendants(bench.pid)
        commands = [Path(f"/proc/{p}/cmdline").read_bytes() for p in servers]
        assert any(b"rpc_service" in c for c in commands), commands
        assert any(b"spool_process" in c for c in commands), commands
        bench.send_signal(signal.SIGTERM)
        assert bench.wait(timeout=60) == 130
    finally:
        if bench.poll() is None:
            bench.kill()
    assert "interrupted" in progress.read_text()
    left = [p for p in servers if _alive(p)]
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert not left


def test_a_failed_operation_is_reported_with_its_message() -> None:
    # A round that fails counts errors by type; the report says what went wrong, not only
    # how often (an HTTP system answering 401 to every request showed "47974 RuntimeError").
    from apiary._bench.report import to_json, to_markdown
    from apiary._bench.runner import Outcome, Result, Settings
    from apiary._bench.workloads import Tally

    workload = WORKLOADS["counter"]
    params = workload.params("tiny")
    calls = [0]

    def failing(workflow: str, args: dict[str, Any]) -> Any:
        calls[0] += 1
        if calls[0] % 2:
            raise RuntimeError(f"HTTP 401: no key for call {calls[0]}\n`detail`")
        raise KeyError("output")

    measured = run_timed([failing], workload, params, Tally(), 0.1, 1, "f")
    assert measured.ops == 0
    assert sum(measured.errors.values()) == calls[0]
    assert measured.messages == {
        "RuntimeError": "HTTP 401: no key for call 1\n`detail`",
        "KeyError": "'output'",
    }
    result = Result("counter", "rpc-baseline", 1, [measured, measured])
    settings = Settings(["counter"], ["rpc-baseline"], [1], scale="tiny")
    outcome = Outcome(settings, [result], params={"counter": params})
    data = to_json(outcome, "apiary bench", "test machine")
    assert data["results"][0]["error_messages"] == measured.messages
    assert data["results"][0]["rounds"][0]["error_messages"] == measured.messages
    markdown = to_markdown(data)
    runtime_errors = measured.errors["RuntimeError"] * 2
    assert (
        f"- counter, rpc-baseline, 1 client: {runtime_errors} RuntimeError: "
        "`HTTP 401: no key for call 1 'detail'`"
    ) in markdown
