"""Run the chaos harness on demand: ``.venv/bin/python -m tests.chaos [--long]``.

Prints the run's figures and any anomaly; exit status 1 if there was one. Needs root (or
the postgres user) and PostgreSQL 15 with PL/Python (``scripts/postgres-up`` installs
them): the run starts a private server on a free port and crashes it.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from tests.chaos.harness import ChaosConfig, run_chaos
from tests.chaos.servers import can_run_postgres

#: The long run of docs/RELIABILITY.md (the short one, in the test suite, is the default).
LONG = {"kills": 60, "crashes": 12, "clients": 12, "settle": 5.0}


def main(argv: list[str] | None = None) -> int:
    """Parse the options, run, print the report; 0 if no anomaly."""
    parser = argparse.ArgumentParser(prog="python -m tests.chaos", description=__doc__)
    parser.add_argument("--long", action="store_true", help=f"the long run: {LONG}")
    parser.add_argument("--kills", type=int, help="frontend kills (SIGKILL)")
    parser.add_argument("--crashes", type=int, help="database crashes (pg_ctl stop -m immediate)")
    parser.add_argument("--clients", type=int, help="concurrent clients")
    parser.add_argument("--seed", type=int, default=int(time.time()) % 100_000)
    parser.add_argument("--placement", choices=["db", "client"], default="db")
    parser.add_argument("--workdir", type=Path, help="keep logs, audit files and traces here")
    parser.add_argument("--json", type=Path, help="also write the report as JSON here")
    args = parser.parse_args(argv)
    reason = can_run_postgres()
    if reason:
        print(f"cannot run: {reason}", file=sys.stderr)
        return 2
    config = ChaosConfig(seed=args.seed, placement=args.placement)
    if args.long:
        for name, value in LONG.items():
            setattr(config, name, value)
    for name in ("kills", "crashes", "clients"):
        if getattr(args, name) is not None:
            setattr(config, name, getattr(args, name))
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="apiary-chaos-run-"))
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"chaos run: seed {config.seed}, placement {config.placement}, files in {workdir}")
    report = run_chaos(config, workdir)
    print(report.summary())
    if args.json:
        args.json.write_text(json.dumps(report.__dict__, indent=2) + "\n")
    for anomaly in report.anomalies:
        print(f"ANOMALY: {anomaly}")
    return 1 if report.anomalies else 0


if __name__ == "__main__":
    sys.exit(main())
