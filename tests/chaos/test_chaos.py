"""The short chaos run (the long one: ``python -m tests.chaos --long``; docs/RELIABILITY.md).

Two ``apiary serve`` processes on a private PostgreSQL; eight clients transfer money
through both; frontends are killed with SIGKILL and the database is stopped with
``pg_ctl stop -m immediate`` at random moments. Then money is conserved, every transfer a
client started took effect exactly once, nothing is left ``PENDING``, and every ledger
write is in the DuckDB trace. ``APIARY_CHAOS_SEED`` picks the random choices.
"""

from __future__ import annotations

import os
from pathlib import Path

import psycopg
import pytest

from tests.chaos.harness import ChaosConfig, ChaosRun, Report, run_chaos, verify
from tests.chaos.servers import can_run_postgres

pytestmark = [pytest.mark.chaos, pytest.mark.slow]

SEED = int(os.environ.get("APIARY_CHAOS_SEED", "7"))


@pytest.fixture(autouse=True)
def _needs_postgres() -> None:
    reason = can_run_postgres()
    if reason:
        pytest.skip(reason)


@pytest.mark.timeout(900)
def test_short_chaos_run_loses_nothing_and_duplicates_nothing(tmp_path: Path) -> None:
    report = run_chaos(ChaosConfig(seed=SEED), tmp_path)
    print(report.summary())
    assert report.frontend_kills >= 5
    assert report.database_crashes >= 2
    assert report.succeeded > 100, "too few transfers to prove anything"
    assert report.anomalies == []


@pytest.mark.timeout(600)
def test_the_checks_see_a_transfer_applied_twice_and_a_lost_trace(tmp_path: Path) -> None:
    # The control experiment: without chaos, tamper with the outcome the way a platform
    # bug would, and the same verification must say so.
    config = ChaosConfig(seed=SEED, kills=0, crashes=0, clients=2, abandoners=0, settle=1.5)
    run = ChaosRun(config, tmp_path)
    with run.running():
        assert run.run().anomalies == []
        twice = next(s for s in run.started if s.outcome == "SUCCESS")
        with psycopg.connect(run.db.partition("?")[0]) as conn:
            conn.execute(
                "UPDATE accounts SET balance = balance + %s WHERE id = %s",
                (twice.amount, twice.dst),
            )
            conn.execute(
                "UPDATE accounts SET balance = balance - %s WHERE id = %s",
                (twice.amount, twice.src),
            )
            # A ledger row that no trace saw (as if the trace were lost), and a PENDING one.
            conn.execute("INSERT INTO ledger VALUES ('ghost', 0, 1, 0)")
            conn.execute(
                "INSERT INTO apiary.workflows (workflow_id, name, inputs, status, created_at, "
                "updated_at) VALUES ('stuck', 'nothing', '{}', 'PENDING', 0, 0)"
            )
        report = Report(config.seed, config.placement)
        verify(run, report, pending_wait=3)
    found = "\n".join(report.anomalies)
    assert "balances the ledger does not explain" in found
    assert "ledger rows not in the trace" in found
    assert "ledger rows no client started" in found
    assert "left PENDING" in found
