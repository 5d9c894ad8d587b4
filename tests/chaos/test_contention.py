"""Serializability under contention: eight clients on a few hot accounts.

Eight ``apiary.Client`` threads call one frontend at once. Transfers among three hot
accounts must conserve money, never overdraw, and leave a ledger that explains every
balance. Joint withdrawals (``bank.withdraw_joint``: read two accounts, debit one if their
sum covers it) are the write-skew probe: under snapshot isolation two of them, on either
side of a pair, both pass the check and the pair goes negative; under SERIALIZABLE one is
retried and sees the other. A control experiment shows that the probe does see write skew
where it can happen (plain psycopg at REPEATABLE READ).

On PostgreSQL the test runs its own server, whose log counts the serialization failures
(and deadlocks) that the engine retried; they are printed with the figures. SQLite runs
one writer at a time and has nothing to retry.
"""

from __future__ import annotations

import random
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest

import apiary
from tests.chaos import bank
from tests.chaos.servers import PostgresServer, can_run_postgres
from tests.frontend_support import running_frontend

pytestmark = pytest.mark.chaos

CLIENTS = 8
HOT = 3
OPENING = 1000
TRANSFERS_EACH = 40
PAIRS = 4
PAIR_OPENING = 50
WITHDRAWALS_EACH = 30
CONFLICTS = r"could not serialize access|deadlock detected"


@pytest.fixture(scope="module")
def server() -> Iterator[PostgresServer]:
    reason = can_run_postgres()
    if reason:
        pytest.skip(reason)
    server = PostgresServer()
    try:
        server.start()
        yield server
    finally:
        server.destroy()


@dataclass
class Database:
    engine: str
    url: str
    server: PostgresServer | None = None
    name: str = ""

    def conflicts(self) -> int | None:
        """Serialization failures and deadlocks in this database so far (PostgreSQL)."""
        if self.server is None:
            return None
        return self.server.count_in_log(rf"@{self.name} .*({CONFLICTS})")


@pytest.fixture(params=["postgres-db", "postgres-client", "sqlite"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Database:
    if request.param == "sqlite":
        return Database(request.param, f"sqlite:///{tmp_path / 'bank.db'}")
    server: PostgresServer = request.getfixturevalue("server")
    name = f"contention_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server.url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    plain = server.url.rsplit("/", 1)[0] + f"/{name}"
    with psycopg.connect(plain, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS plpython3u")
    placement = request.param.removeprefix("postgres-")
    return Database(request.param, f"{plain}?placement={placement}", server, name)


@dataclass
class Tally:
    ok: int = 0
    refused: int = 0
    errors: list[BaseException] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


Calls = list[tuple[str, dict[str, Any]]]


def _hammer(url: str, key: str, work: list[Calls]) -> Tally:
    """Each client thread runs its list of (workflow, arguments), all starting together."""
    tally = Tally()
    start = threading.Barrier(len(work))

    def client(calls: Calls) -> None:
        with apiary.Client(url, key, timeout=60) as http:
            start.wait()
            for name, args in calls:
                try:
                    http.run(name, **args)
                except apiary.FunctionError as exc:
                    with tally.lock:
                        if exc.type_name == "InsufficientFundsError":
                            tally.refused += 1
                        else:
                            tally.errors.append(exc)
                    continue
                except Exception as exc:
                    with tally.lock:
                        tally.errors.append(exc)
                    continue
                with tally.lock:
                    tally.ok += 1

    threads = [threading.Thread(target=client, args=(calls,)) for calls in work]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=600)
    return tally


@pytest.mark.timeout(600)
def test_hot_accounts_and_write_skew_under_eight_clients(database: Database) -> None:
    rt = apiary.Runtime(bank.app, database.url, trace_store=None)
    rt.install()
    accounts = HOT + 2 * PAIRS
    rt.call("open_accounts", count=accounts, balance=OPENING)
    # The pairs' accounts hold less, so that withdrawals run into the pair's limit.
    for account in range(HOT, accounts):
        rt.call("deposit", account=account, amount=PAIR_OPENING - OPENING)
    rt.close()
    before = database.conflicts()
    rng = random.Random(11)

    with running_frontend(database.url, bank.app) as served:
        transfers = []
        for _ in range(CLIENTS):
            calls: Calls = []
            for _ in range(TRANSFERS_EACH):
                src, dst = rng.sample(range(HOT), 2)
                transfer_id = f"t{uuid.uuid4().hex}"
                args = {"transfer_id": transfer_id, "src": src, "dst": dst}
                calls.append(("transfer", {**args, "amount": rng.randint(1, 400)}))
            transfers.append(calls)
        hot = _hammer(served.url, served.invoke, transfers)

        withdrawals = []
        for _ in range(CLIENTS):
            calls = []
            for _ in range(WITHDRAWALS_EACH):
                pair = HOT + 2 * rng.randrange(PAIRS)
                side = rng.randrange(2)
                account, partner = pair + side, pair + 1 - side
                amount = rng.randint(5, 30)
                calls.append(
                    ("joint_withdrawal", {"account": account, "partner": partner, "amount": amount})
                )
            withdrawals.append(calls)
        skew = _hammer(served.url, served.invoke, withdrawals)

    assert hot.errors == []
    assert skew.errors == []
    assert hot.ok + hot.refused == CLIENTS * TRANSFERS_EACH
    assert skew.ok + skew.refused == CLIENTS * WITHDRAWALS_EACH
    rt = apiary.Runtime(bank.app, database.url, trace_store=None)
    try:
        balances = {int(a): b for a, b in rt.call("balances").items()}
        ledger = rt.call("ledger")
    finally:
        rt.close()

    # Transfers: conserved, never overdrawn, each once in the ledger, which explains them.
    assert sum(balances[a] for a in range(HOT)) == HOT * OPENING
    assert all(balances[a] >= 0 for a in range(HOT)), balances
    assert len(ledger) == hot.ok
    expected = dict.fromkeys(range(HOT), OPENING)
    for _, src, dst, amount in ledger:
        expected[src] -= amount
        expected[dst] += amount
    assert expected == {a: balances[a] for a in range(HOT)}
    # Withdrawals: no pair ever paid out more than it held together.
    for pair in range(HOT, accounts, 2):
        together = balances[pair] + balances[pair + 1]
        assert together >= 0, f"write skew: accounts {pair}, {pair + 1} hold {together}"
    conflicts = database.conflicts()
    retried = "n/a (one writer at a time)" if conflicts is None else conflicts - (before or 0)
    print(
        f"\n{database.engine}: {CLIENTS} clients; "
        f"{hot.ok} transfers on {HOT} hot accounts ({hot.refused} refused for funds); "
        f"{skew.ok} joint withdrawals ({skew.refused} refused); "
        f"serialization failures and deadlocks retried: {retried}"
    )


def test_the_write_skew_probe_sees_snapshot_isolation(server: PostgresServer) -> None:
    # The control: the same read-check-debit as withdraw_joint, run by hand at REPEATABLE
    # READ (snapshot isolation) in two interleaved transactions, overdraws the pair.
    with psycopg.connect(server.url, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS skew")
        conn.execute("CREATE TABLE skew (id INTEGER PRIMARY KEY, balance INTEGER NOT NULL)")
        conn.execute("INSERT INTO skew VALUES (0, 50), (1, 50)")
    first = psycopg.connect(server.url)
    second = psycopg.connect(server.url)
    try:
        for conn in (first, second):
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        sums = [
            conn.execute("SELECT sum(balance) FROM skew").fetchone() for conn in (first, second)
        ]
        assert sums == [(100,), (100,)]  # each sees enough for 80
        first.execute("UPDATE skew SET balance = balance - 80 WHERE id = 0")
        second.execute("UPDATE skew SET balance = balance - 80 WHERE id = 1")
        first.commit()
        second.commit()
    finally:
        first.close()
        second.close()
    with psycopg.connect(server.url) as conn:
        together = conn.execute("SELECT sum(balance) FROM skew").fetchone()
    assert together == (-60,)  # what SERIALIZABLE prevents in the test above
