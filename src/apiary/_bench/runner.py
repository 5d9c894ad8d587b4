"""Timed rounds: client threads running a workload's operations against each system.

For each workload: the databases are made and loaded; then for each client count every
system gets a warm-up, and ``rounds`` timed rounds are interleaved across the systems
(A, B, C, A, B, C, ...), so that drift of a shared machine hits every system alike.
Within a round, N client threads each run operations back to back; every thread draws
its own seeded sequence, the same for every system. Afterwards the invariants of every
database are checked against what the operations answered.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from apiary._bench.systems import (
    APIARY_SYSTEMS,
    ApiarySystem,
    PostgresDatabase,
    SkipSystem,
    SqliteDatabase,
    System,
    databases_of,
    pg_available,
    split_name,
)
from apiary._bench.workloads import Tally, Workload


@dataclass
class Round:
    """One timed round of one system: operations completed, latencies, failures."""

    ops: int
    seconds: float
    latencies: list[float]
    errors: Counter[str] = field(default_factory=Counter)
    by_op: dict[str, list[float]] = field(default_factory=dict)
    #: The first message of each error type in ``errors`` (cut to :data:`MESSAGE_CHARS`).
    messages: dict[str, str] = field(default_factory=dict)
    #: Seconds the system took after the round to finish what the round left running in
    #: the background (see :meth:`System.settle`); counted in ``seconds``.
    settled: float = 0.0

    @property
    def throughput(self) -> float:
        """Operations completed per second, all clients together."""
        return self.ops / self.seconds if self.seconds else 0.0

    def percentile(self, q: float, latencies: Sequence[float] | None = None) -> float:
        """Latency percentile ``q`` (0-100) in milliseconds, nearest rank."""
        ordered = sorted(self.latencies if latencies is None else latencies)
        if not ordered:
            return 0.0
        return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))] * 1000


#: How much of a failed operation's error message a round keeps.
MESSAGE_CHARS = 300


def _first(messages: dict[str, str]) -> str:
    kind, message = next(iter(messages.items()))
    return f"{kind}: {message}"


@dataclass
class Result:
    """All rounds of one system on one workload at one client count."""

    workload: str
    system: str
    clients: int
    rounds: list[Round] = field(default_factory=list)

    def median(self, metric: Callable[[Round], float]) -> float:
        """Median of a metric over rounds."""
        return statistics.median(metric(r) for r in self.rounds) if self.rounds else 0.0

    @property
    def throughput(self) -> float:
        """Median operations per second."""
        return self.median(lambda r: r.throughput)

    @property
    def errors(self) -> Counter[str]:
        """Failed operations by error type, all rounds."""
        total: Counter[str] = Counter()
        for r in self.rounds:
            total.update(r.errors)
        return total

    @property
    def messages(self) -> dict[str, str]:
        """The first message of each error type, all rounds."""
        found: dict[str, str] = {}
        for r in self.rounds:
            for kind, message in r.messages.items():
                found.setdefault(kind, message)
        return found

    def _op_percentile(self, op: str, q: float) -> float:
        """Median over rounds of one operation's latency percentile."""
        return self.median(lambda r: r.percentile(q, r.by_op.get(op, [])))

    def to_json(self) -> dict[str, Any]:
        """Medians and every round's figures."""
        ops = sorted({op for r in self.rounds for op in r.by_op})
        return {
            "workload": self.workload,
            "system": self.system,
            "clients": self.clients,
            "throughput": self.throughput,
            "throughput_min": min((r.throughput for r in self.rounds), default=0.0),
            "throughput_max": max((r.throughput for r in self.rounds), default=0.0),
            "p50_ms": self.median(lambda r: r.percentile(50)),
            "p99_ms": self.median(lambda r: r.percentile(99)),
            "errors": dict(self.errors),
            "error_messages": self.messages,
            "by_operation": {
                op: {
                    "p50_ms": self._op_percentile(op, 50),
                    "p99_ms": self._op_percentile(op, 99),
                    "ops": sum(len(r.by_op.get(op, [])) for r in self.rounds),
                }
                for op in ops
            },
            "rounds": [
                {
                    "ops": r.ops,
                    "seconds": r.seconds,
                    "settled_seconds": r.settled,
                    "throughput": r.throughput,
                    "p50_ms": r.percentile(50),
                    "p99_ms": r.percentile(99),
                    "errors": dict(r.errors),
                    "error_messages": r.messages,
                }
                for r in self.rounds
            ],
        }


@dataclass
class Settings:
    """What to run (the ``apiary bench`` options)."""

    workloads: list[str]
    systems: list[str]
    clients: list[int]
    duration: float = 5.0
    rounds: int = 3
    warmup: float = 1.0
    scale: str = "default"
    db_url: str | None = None
    work_dir: Path | None = None


@dataclass
class Outcome:
    """Everything a run produced."""

    settings: Settings
    results: list[Result] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    checks: list[dict[str, Any]] = field(default_factory=list)
    params: dict[str, dict[str, int]] = field(default_factory=dict)


def run_timed(
    runners: Sequence[Callable[[str, dict[str, Any]], Any]],
    workload: Workload,
    params: dict[str, int],
    tally: Tally,
    seconds: float,
    seed: int,
    prefix: str,
) -> Round:
    """Every runner (one thread each) runs operations back to back for ``seconds``."""
    start_line = threading.Barrier(len(runners) + 1)
    counts = [0] * len(runners)
    latencies: list[list[float]] = [[] for _ in runners]
    by_op: list[dict[str, list[float]]] = [{} for _ in runners]
    tallies = [Tally() for _ in runners]
    errors: list[Counter[str]] = [Counter() for _ in runners]
    messages: dict[str, str] = {}
    crashed: list[BaseException] = []
    deadline = 0.0

    def work(index: int) -> None:
        # Same operations for every system: seeded by round and thread.
        ops = workload.operations(params, seed * 1_000 + index, f"{prefix}.{index}")
        run, own, mine, counted, failed = (
            runners[index],
            latencies[index],
            by_op[index],
            tallies[index],
            errors[index],
        )
        clock = time.perf_counter
        start_line.wait()
        done = 0
        try:
            for op, workflow, args in ops:
                begun = clock()
                if begun >= deadline:
                    break
                try:
                    output = run(workflow, args)
                except Exception as exc:
                    kind = type(exc).__name__
                    failed[kind] += 1
                    if kind not in messages:  # the first of its type says what went wrong
                        messages.setdefault(kind, str(exc)[:MESSAGE_CHARS])
                    continue
                took = clock() - begun
                own.append(took)
                mine.setdefault(op, []).append(took)
                counted.add(op, output)
                done += 1
        except BaseException as exc:
            crashed.append(exc)
        counts[index] = done

    threads = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(len(runners))]
    for thread in threads:
        thread.start()
    began = time.perf_counter()
    deadline = began + seconds
    start_line.wait()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - began
    if crashed:
        raise crashed[0]
    merged_ops: dict[str, list[float]] = {}
    for own_ops in by_op:
        for op, values in own_ops.items():
            merged_ops.setdefault(op, []).extend(values)
    total_errors: Counter[str] = Counter()
    for own_errors in errors:
        total_errors.update(own_errors)
    for own_tally in tallies:
        tally.merge(own_tally)
    return Round(
        sum(counts),
        elapsed,
        [x for own in latencies for x in own],
        total_errors,
        merged_ops,
        messages=messages,
    )


def _timed(
    runners: Sequence[Callable[[str, dict[str, Any]], Any]],
    system: System,
    workload: Workload,
    params: dict[str, int],
    seconds: float,
    number: int,
    prefix: str,
) -> Round:
    """Round ``number`` (0: the warm-up) of ``system``, settled."""
    measured = run_timed(
        runners, workload, params, system.tally, seconds, seed=number, prefix=f"{prefix}.{number}"
    )
    return _settled(system, measured)


def _settled(system: System, measured: Round) -> Round:
    """``measured``, with the time ``system`` then takes to settle added to the round.

    An Apiary system with tracing on leaves staged traces that its spooler process is
    still moving into DuckDB when the round ends. Left alone, that work ran during the
    next system's round, charging tracing's cost to another system: settling does it
    now, and the round's throughput counts it.
    """
    began = time.perf_counter()
    system.settle()
    measured.settled = time.perf_counter() - began
    measured.seconds += measured.settled
    return measured


class Progress:
    """Progress on stderr: a bar of steps done, with the last round's figures."""

    def __init__(self, total: int, stream: TextIO = sys.stderr) -> None:
        self.total = max(total, 1)
        self.done = 0
        self.stream = stream

    def note(self, message: str) -> None:
        """A line of its own."""
        print(f"bench: {message}", file=self.stream, flush=True)

    def step(self, message: str) -> None:
        """One round done."""
        self.done += 1
        width = 20
        filled = round(width * self.done / self.total)
        bar = "#" * filled + "." * (width - filled)
        print(f"[{bar}] {self.done}/{self.total} {message}", file=self.stream, flush=True)


def make_systems(
    settings: Settings, workload: Workload, work_dir: Path, outcome: Outcome
) -> list[System]:
    """The systems of one workload, with their databases made, installed and loaded."""
    from apiary._bench import peers

    params = outcome.params[workload.name]
    systems: list[System] = []
    pg_database: PostgresDatabase | None = None

    def shared_database() -> PostgresDatabase:
        nonlocal pg_database
        pg_available(settings.db_url)
        assert settings.db_url is not None
        if pg_database is None:
            pg_database = PostgresDatabase(settings.db_url, f"apiary_bench_{workload.name}")
            pg_database.create()
        return pg_database

    for name in settings.systems:
        if name in outcome.skipped:
            continue
        base, _ = split_name(name)
        try:
            if base not in APIARY_SYSTEMS:
                systems.append(peers.make(name, settings, workload, work_dir, shared_database()))
            elif base == "apiary-sqlite":
                slug = name.replace(":", "-")
                database = SqliteDatabase(work_dir / f"{workload.name}-{slug}.db")
                systems.append(ApiarySystem(name, database, workload, work_dir))
            else:
                systems.append(ApiarySystem(name, shared_database(), workload, work_dir))
        except SkipSystem as exc:
            outcome.skipped[name] = str(exc)
    loaded: set[str] = set()
    for system in systems:
        system.install()
    for system in systems:
        if system.database.key not in loaded:
            loaded.add(system.database.key)
            system.database.load(workload, params)
    return systems


def check_databases(workload: Workload, systems: list[System], outcome: Outcome) -> None:
    """Check every database's invariants against what its systems' operations answered."""
    params = outcome.params[workload.name]
    for _, (database, users) in databases_of(systems).items():
        tally = Tally()
        for system in users:
            tally.merge(system.tally)
        names = [s.name for s in users]
        entry: dict[str, Any] = {"workload": workload.name, "systems": names}
        try:
            summary = workload.check(database.query, params, tally)
            pending = database.pending() if isinstance(users[0], ApiarySystem) else 0
            if pending:
                raise AssertionError(f"{pending} workflows left PENDING")
            entry.update(ok=True, summary=summary)
        except AssertionError as exc:
            entry.update(ok=False, summary=str(exc))
        outcome.checks.append(entry)


def bench(settings: Settings, progress: Progress | None = None) -> Outcome:
    """Run every workload on every system at every client count."""
    from apiary._bench.workloads import WORKLOADS

    outcome = Outcome(settings)
    for name in settings.workloads:
        outcome.params[name] = WORKLOADS[name].params(settings.scale)
    steps = len(settings.workloads) * len(settings.clients) * len(settings.systems)
    progress = progress or Progress(steps * (settings.rounds + 1))
    with tempfile.TemporaryDirectory(prefix="apiary-bench-") as tmp:
        work_dir = settings.work_dir or Path(tmp)
        work_dir.mkdir(parents=True, exist_ok=True)
        for name in settings.workloads:
            _bench_workload(settings, WORKLOADS[name], work_dir, outcome, progress)
    return outcome


def _bench_workload(
    settings: Settings, workload: Workload, work_dir: Path, outcome: Outcome, progress: Progress
) -> None:
    params = outcome.params[workload.name]
    progress.note(f"{workload.name}: loading {params}")
    systems = make_systems(settings, workload, work_dir, outcome)
    # Skipped systems run no rounds.
    progress.total -= (
        (len(settings.systems) - len(systems)) * len(settings.clients) * (settings.rounds + 1)
    )
    for name in settings.systems:
        if name in outcome.skipped and name not in [s.name for s in systems]:
            progress.note(f"{workload.name}: skipping {name}: {outcome.skipped[name]}")
    try:
        for clients in settings.clients:
            results = {s.name: Result(workload.name, s.name, clients) for s in systems}
            runners: dict[str, list[Callable[[str, dict[str, Any]], Any]]] = {}
            for position, system in enumerate(systems):
                system.open(clients)
                runners[system.name] = [system.runner() for _ in range(clients)]
                warm = _timed(
                    runners[system.name], system, workload, params, settings.warmup, 0,
                    f"{position}.{clients}",
                )  # fmt: skip
                progress.step(
                    f"{workload.name} clients={clients} warm-up {system.name}: "
                    f"{warm.throughput:,.0f} ops/s"
                )
            for number in range(1, settings.rounds + 1):
                for position, system in enumerate(systems):
                    measured = _timed(
                        runners[system.name], system, workload, params, settings.duration,
                        number, f"{position}.{clients}",
                    )  # fmt: skip
                    results[system.name].rounds.append(measured)
                    failed = sum(measured.errors.values())
                    progress.step(
                        f"{workload.name} clients={clients} round {number}/{settings.rounds} "
                        f"{system.name}: {measured.throughput:,.0f} ops/s, "
                        f"p50 {measured.percentile(50):.2f} ms, "
                        f"p99 {measured.percentile(99):.2f} ms"
                        + (f", {failed} failed ({_first(measured.messages)})" if failed else "")
                    )
            for system in systems:
                system.close()
            outcome.results += results.values()
    finally:
        for system in systems:
            system.close()
    check_databases(workload, systems, outcome)
    for entry in outcome.checks:
        if entry["workload"] == workload.name:
            verdict = "ok" if entry["ok"] else "FAILED"
            names = ", ".join(entry["systems"])
            progress.note(f"{workload.name} check {verdict} ({names}): {entry['summary']}")
    if any(isinstance(s.database, PostgresDatabase) for s in systems):
        for system in systems:
            if isinstance(system.database, PostgresDatabase):
                system.database.drop()
                break
