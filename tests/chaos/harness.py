"""The chaos run: bank transfers through two frontends while frontends and the database die.

Clients (threads, each an ``apiary.Client`` given both frontends' URLs) transfer money
between accounts. Each takes a workflow ID, writes it in its own log, then calls until it
has a final answer (a run that outlasts the client's retry window is called again with the
same ID: the caller never gives up on a transfer it started). Other threads send requests
to one frontend and abandon them (a client that gave up): those must be finished by the
frontends' server-side recovery, or never have reached the database.

Meanwhile a chaos thread, in a random order and at random moments, kills a frontend with
SIGKILL (sometimes both) and starts it again, or stops PostgreSQL with
``pg_ctl stop -m immediate`` and starts it again.

Afterwards (:func:`verify`), read straight from PostgreSQL and DuckDB, not through the
platform:

- money is conserved, and no balance is negative;
- every balance is explained by the ledger (opening balance + credits - debits);
- every transfer a client started is in the ledger exactly once if it succeeded and not
  at all if it was refused, with the arguments the client sent; the ledger holds nothing
  else but abandoned transfers that reached the database;
- no workflow is left ``PENDING``, and the status rows agree with the clients' answers;
- every successful transfer was audited (its step ran at least once);
- every ledger row written is in the DuckDB trace (``ledger_events``), exactly once.

Any breach is an *anomaly*; a run is good when there are none.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import random
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import httpx
import psycopg

import apiary
from apiary._frontend.keys import KeyStore
from tests.chaos import bank
from tests.chaos.servers import ROOT, FrontendProcess, PostgresServer

#: Seconds a client keeps calling for one transfer before it is an anomaly.
FINISH_WITHIN = 300.0


@dataclass
class ChaosConfig:
    """How hard and how long to shake the system."""

    kills: int = 5
    crashes: int = 2
    clients: int = 8
    abandoners: int = 2
    accounts: int = 20
    opening_balance: int = 1000
    max_amount: int = 120
    seed: int = 7
    #: Seconds between two chaos events (uniform in this range).
    pause: tuple[float, float] = (0.5, 2.0)
    #: Seconds a killed frontend or a crashed database stays down.
    down: tuple[float, float] = (0.0, 1.5)
    #: Chance that a frontend kill takes both frontends down at once.
    both: float = 0.15
    #: Seconds of load after the last event, before the clients stop.
    settle: float = 2.0
    placement: str = "db"


@dataclass
class Started:
    """One transfer a client started: the client's own log entry and its answer."""

    workflow_id: str
    src: int
    dst: int
    amount: int
    outcome: str = "UNFINISHED"  # SUCCESS | ERROR | UNFINISHED
    calls: int = 0


@dataclass
class Report:
    """What a run did and what it found."""

    seed: int
    placement: str
    seconds: float = 0.0
    frontend_kills: int = 0
    frontend_restarts: int = 0
    database_crashes: int = 0
    transfers: int = 0
    succeeded: int = 0
    refused: int = 0
    client_recalls: int = 0
    abandoned: int = 0
    abandoned_reached: int = 0
    workflows: int = 0
    audit_executions: int = 0
    audit_reexecutions: int = 0
    trace_ledger_inserts: int = 0
    serialization_failures: int = 0
    anomalies: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """The figures, one per line."""
        lines = [f"{name}: {value}" for name, value in dataclasses.asdict(self).items()]
        return "\n".join(lines)


class ChaosRun:
    """One run: a private PostgreSQL, two frontends, clients, chaos, verification."""

    def __init__(self, config: ChaosConfig, workdir: Path) -> None:
        self.config = config
        self.workdir = workdir
        self.rng = random.Random(config.seed)
        self.server = PostgresServer()
        self.audit_dir = workdir / "audit"
        self.trace_store = workdir / "trace.duckdb"
        self.frontends: list[FrontendProcess] = []
        self.key = ""
        self.db = ""
        self.started: list[Started] = []
        self.abandoned: list[tuple[str, int, int, int]] = []
        self.anomalies: list[str] = []
        self.recalls = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()

    # -- setting up -----------------------------------------------------------------------

    @contextlib.contextmanager
    def running(self) -> Iterator[ChaosRun]:
        """The database and both frontends, up for the block, torn down after it."""
        self.audit_dir.mkdir(parents=True, exist_ok=True)
        try:
            url = self.server.start()
            self.db = f"{url}?placement={self.config.placement}"
            rt = apiary.Runtime(bank.app, self.db, trace_store=None)
            try:
                rt.install()
                self.key = KeyStore(rt).create("invoke", "chaos").key
                rt.call("open_accounts", count=self.config.accounts, balance=self.opening)
            finally:
                rt.close()
            env = {bank.AUDIT_ENV: str(self.audit_dir)}
            self.frontends = [
                FrontendProcess(
                    self.db, trace_store=self.trace_store, log_dir=self.workdir, env=env
                )
                for _ in range(2)
            ]
            for frontend in self.frontends:
                frontend.start()
            yield self
        finally:
            for frontend in self.frontends:
                frontend.stop()
            self.server.destroy()

    @property
    def opening(self) -> int:
        return self.config.opening_balance

    # -- load ---------------------------------------------------------------------------

    def _client_loop(self, index: int) -> None:
        rng = random.Random(self.config.seed * 1000 + index)
        urls = [f.url for f in self.frontends]
        urls = urls[index % 2 :] + urls[: index % 2]
        with apiary.Client(urls, self.key, timeout=10, retry_for=20) as client:
            while not self._stop.is_set():
                workflow_id = self._call_until_answered(client.new_workflow_id)
                if workflow_id is None:
                    return
                src, dst = rng.sample(range(self.config.accounts), 2)
                entry = Started(workflow_id, src, dst, rng.randint(1, self.config.max_amount))
                with self._lock:
                    self.started.append(entry)  # logged before the first call
                self._finish(client, entry)

    def _call_until_answered(self, call: Any) -> Any:
        deadline = time.monotonic() + FINISH_WITHIN
        while time.monotonic() < deadline:
            try:
                return call()
            except apiary.DatabaseUnavailableError:
                with self._lock:
                    self.recalls += 1
        self._anomaly(f"no client ID within {FINISH_WITHIN} s")
        return None

    def _finish(self, client: apiary.Client, entry: Started) -> None:
        deadline = time.monotonic() + FINISH_WITHIN
        while time.monotonic() < deadline:
            entry.calls += 1
            try:
                client.run(
                    "transfer",
                    workflow_id=entry.workflow_id,
                    transfer_id=entry.workflow_id,
                    src=entry.src,
                    dst=entry.dst,
                    amount=entry.amount,
                )
            except apiary.FunctionError as exc:
                if exc.type_name != "InsufficientFundsError":
                    self._anomaly(f"{entry.workflow_id}: unexpected application error {exc}")
                entry.outcome = "ERROR"
                return
            except apiary.DatabaseUnavailableError:
                with self._lock:
                    self.recalls += 1  # past the client's retry window: call again, same ID
                continue
            except apiary.ApiaryError as exc:
                self._anomaly(f"{entry.workflow_id}: {type(exc).__name__}: {exc}")
                time.sleep(0.5)
                continue
            entry.outcome = "SUCCESS"
            return
        self._anomaly(f"{entry.workflow_id}: no answer within {FINISH_WITHIN} s")

    def _abandoning_loop(self, index: int) -> None:
        # A client that gives up: one attempt at one frontend, cut after a short wait.
        rng = random.Random(self.config.seed * 2000 + index)
        target = self.frontends[index % 2]
        number = 0
        with httpx.Client() as http:
            while not self._stop.is_set():
                number += 1
                workflow_id = f"abandoned-{index}-{number}"
                src, dst = rng.sample(range(self.config.accounts), 2)
                amount = rng.randint(1, self.config.max_amount)
                with self._lock:
                    self.abandoned.append((workflow_id, src, dst, amount))
                args = {"transfer_id": workflow_id, "src": src, "dst": dst, "amount": amount}
                with contextlib.suppress(httpx.HTTPError):
                    http.post(
                        f"{target.url}/v1/workflows/transfer",
                        json=args,
                        headers={
                            "Authorization": f"Bearer {self.key}",
                            "Idempotency-Key": workflow_id,
                        },
                        timeout=rng.uniform(0.01, 0.3),
                    )
                time.sleep(rng.uniform(0.05, 0.3))

    def _anomaly(self, text: str) -> None:
        with self._lock:
            self.anomalies.append(text)

    # -- chaos --------------------------------------------------------------------------

    def _chaos(self) -> None:
        config = self.config
        events = ["kill"] * config.kills + ["crash"] * config.crashes
        self.rng.shuffle(events)
        for event in events:
            time.sleep(self.rng.uniform(*config.pause))
            if event == "kill":
                victims = (
                    list(self.frontends)
                    if self.rng.random() < config.both
                    else [self.rng.choice(self.frontends)]
                )
                for victim in victims:
                    victim.kill()
                time.sleep(self.rng.uniform(*config.down))
                for victim in victims:
                    victim.start()
            else:
                self.server.crash()
                time.sleep(self.rng.uniform(*config.down))
                self.server.start()
        time.sleep(config.settle)

    def run(self) -> Report:
        """Load and chaos until every event happened; then stop the load and verify."""
        began = time.monotonic()
        threads = [
            threading.Thread(target=self._client_loop, args=(i,), name=f"client-{i}")
            for i in range(self.config.clients)
        ]
        threads += [
            threading.Thread(target=self._abandoning_loop, args=(i,), name=f"abandon-{i}")
            for i in range(self.config.abandoners)
        ]
        for thread in threads:
            thread.start()
        try:
            self._chaos()
        finally:
            self._stop.set()
            for thread in threads:
                thread.join(timeout=FINISH_WITHIN + 60)
        report = Report(self.config.seed, self.config.placement)
        report.seconds = round(time.monotonic() - began, 1)
        verify(self, report)
        return report


# -- verification ---------------------------------------------------------------------------


def _plain(db: str) -> str:
    """The libpq URL of an Apiary database URL (without ``?placement=``)."""
    return db.partition("?")[0]


def _wait_no_pending(db: str, within: float) -> list[str]:
    deadline = time.monotonic() + within
    while True:
        with psycopg.connect(_plain(db)) as conn:
            pending = [
                row[0]
                for row in conn.execute(
                    "SELECT workflow_id FROM apiary.workflows WHERE status = 'PENDING'"
                )
            ]
        if not pending or time.monotonic() > deadline:
            return pending
        time.sleep(0.3)


def _spool(run: ChaosRun) -> None:
    """Stop the frontends (each spools what is staged) and spool any rest with the CLI."""
    for frontend in run.frontends:
        frontend.stop()
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "apiary._cli",
            "trace",
            "spool",
            "tests.chaos.bank:app",
            "--db",
            run.db,
            "--store",
            str(run.trace_store),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    if done.returncode != 0:
        run.anomalies.append(f"apiary trace spool failed: {done.stderr[-2000:]}")


def verify(run: ChaosRun, report: Report, *, pending_wait: float = 120.0) -> None:
    """Check every invariant of the module docstring; fill ``report``.

    Recovery gets ``pending_wait`` seconds to finish the workflows dead frontends left.
    """
    config = run.config
    anomalies = report.anomalies
    anomalies.extend(run.anomalies)
    report.frontend_kills = sum(f.kills for f in run.frontends)
    report.frontend_restarts = sum(f.starts - 1 for f in run.frontends)
    report.database_crashes = run.server.crashes
    report.transfers = len(run.started)
    report.succeeded = sum(1 for s in run.started if s.outcome == "SUCCESS")
    report.refused = sum(1 for s in run.started if s.outcome == "ERROR")
    report.client_recalls = run.recalls
    report.abandoned = len(run.abandoned)

    # Every frontend up again: recovery finishes what the dead ones left.
    for frontend in run.frontends:
        if not frontend.healthy():
            frontend.start()
    pending = _wait_no_pending(run.db, pending_wait)
    if pending:
        anomalies.append(f"{len(pending)} workflows left PENDING: {pending[:10]}")
    _spool(run)

    with psycopg.connect(_plain(run.db)) as conn:
        balances: dict[int, int] = dict(conn.execute("SELECT id, balance FROM accounts"))
        ledger = {
            row[0]: (row[1], row[2], row[3])
            for row in conn.execute("SELECT transfer_id, src, dst, amount FROM ledger")
        }
        statuses: dict[str, str] = dict(
            conn.execute("SELECT workflow_id, status FROM apiary.workflows")
        )
        staged = conn.execute("SELECT count(*) FROM apiary.trace_staging").fetchone()
    report.workflows = len(statuses)

    # Money: conserved, never negative, and explained by the ledger.
    total = config.accounts * config.opening_balance
    if sum(balances.values()) != total:
        anomalies.append(f"money not conserved: {sum(balances.values())} != {total}")
    negative = {a: b for a, b in balances.items() if b < 0}
    if negative:
        anomalies.append(f"negative balances: {negative}")
    expected = dict.fromkeys(range(config.accounts), config.opening_balance)
    for src, dst, amount in ledger.values():
        expected[src] -= amount
        expected[dst] += amount
    unexplained = {a: (balances.get(a), b) for a, b in expected.items() if balances.get(a) != b}
    if unexplained:
        anomalies.append(f"balances the ledger does not explain: {unexplained}")

    # Exactly once, against the clients' own log.
    logged: set[str] = set()
    for entry in run.started:
        logged.add(entry.workflow_id)
        row = ledger.get(entry.workflow_id)
        status = statuses.get(entry.workflow_id)
        if entry.outcome == "SUCCESS":
            if row != (entry.src, entry.dst, entry.amount):
                anomalies.append(f"{entry.workflow_id}: succeeded but ledger has {row}")
        elif entry.outcome == "ERROR" and row is not None:
            anomalies.append(f"{entry.workflow_id}: refused but in the ledger: {row}")
        if status != entry.outcome:
            anomalies.append(f"{entry.workflow_id}: client saw {entry.outcome}, status {status}")
    if len(logged) != len(run.started):
        anomalies.append("a workflow ID was issued to two transfers")
    reached = 0
    abandoned_ids: set[str] = set()
    for workflow_id, src, dst, amount in run.abandoned:
        abandoned_ids.add(workflow_id)
        status = statuses.get(workflow_id)
        row = ledger.get(workflow_id)
        if status is None:
            if row is not None:
                anomalies.append(f"{workflow_id}: in the ledger without a status row")
            continue
        reached += 1
        if (status == "SUCCESS") != (row is not None):
            anomalies.append(f"abandoned {workflow_id}: status {status}, ledger {row}")
        if row is not None and row != (src, dst, amount):
            anomalies.append(f"abandoned {workflow_id}: ledger {row} != {(src, dst, amount)}")
    report.abandoned_reached = reached
    strangers = set(ledger) - logged - abandoned_ids
    if strangers:
        anomalies.append(f"ledger rows no client started: {sorted(strangers)[:10]}")

    # The audit step ran for every transfer that succeeded (at least once).
    audited: Counter[str] = Counter()
    for path in run.audit_dir.iterdir():
        if not path.name.startswith("."):  # a write cut by a kill
            audited[json.loads(path.read_text())["transfer"]] += 1
    report.audit_executions = sum(audited.values())
    report.audit_reexecutions = sum(n - 1 for n in audited.values())
    unaudited = [t for t in ledger if audited[t] == 0]
    if unaudited:
        anomalies.append(f"{len(unaudited)} transfers never audited: {unaudited[:10]}")

    # Every committed ledger write is in the trace store, once.
    if staged is not None and staged[0]:
        anomalies.append(f"{staged[0]} traces still staged after spooling")
    with duckdb.connect(str(run.trace_store), read_only=True) as trace:
        inserts = Counter(
            dict(
                trace.execute(
                    "SELECT transfer_id, count(*) FROM ledger_events WHERE op = 'insert' "
                    "GROUP BY transfer_id"
                ).fetchall()
            )
        )
    report.trace_ledger_inserts = sum(inserts.values())
    missing = set(ledger) - set(inserts)
    if missing:
        anomalies.append(f"{len(missing)} ledger rows not in the trace: {sorted(missing)[:10]}")
    twice = {t: n for t, n in inserts.items() if n != 1}
    if twice:
        anomalies.append(f"ledger inserts traced more than once: {dict(list(twice.items())[:10])}")
    ghosts = set(inserts) - set(ledger)
    if ghosts:
        anomalies.append(f"traced ledger inserts that never committed: {sorted(ghosts)[:10]}")

    report.serialization_failures = run.server.count_in_log(
        r"could not serialize access|deadlock detected"
    )
    for frontend in run.frontends:
        for path in frontend.logs():
            text = path.read_text(errors="replace")
            if "unexpected error" in text:
                anomalies.append(f"{path.name}: the frontend answered 500 (see its log)")


def run_chaos(config: ChaosConfig, workdir: Path) -> Report:
    """Set up, run and verify one chaos run; ``workdir`` keeps logs, audit files, traces."""
    run = ChaosRun(config, workdir)
    with run.running():
        return run.run()
