"""``apiary bench``: run the paper's workloads against several systems; tables and charts.

Examples::

    apiary bench --workload hotel --clients 1 4 --duration 5 --rounds 3
    apiary bench --workload all --systems apiary-sqlite apiary-pg apiary-pg-client \\
        --db-url postgresql://apiary:apiary@127.0.0.1:55434/apiary_test
    apiary bench --workload hotel retwis --systems apiary-sqlite apiary-pg \\
        --variants trace-off trace-on manual-log --db-url URL       # the cost of tracing
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

DEFAULT_OUT = "bench-results"
# The names for the help text, without importing the workloads (the apiary command starts
# faster): tests check that they match WORKLOADS, SYSTEMS and VARIANTS.
WORKLOADS = ("hotel", "shop", "retwis", "counter")
SYSTEMS = (
    "apiary-sqlite",
    "apiary-pg",
    "apiary-pg-client",
    "apiary-http",
    "rpc-baseline",
    "direct",
    "dbos",
)
VARIANTS = ("record-none", "record-sfr", "record-all", "trace-off", "trace-on", "manual-log")


def add_bench_command(commands: Any) -> None:
    """Add ``apiary bench`` to the CLI's subcommands."""
    bench = commands.add_parser(
        "bench",
        help="benchmark the paper's workloads (hotel, shop, retwis, counter)",
        description="Run the workloads against each system with N client threads: warm-up, "
        "then rounds interleaved across systems; medians of throughput and p50/p99 "
        "latency, then the invariants of every database are checked. Writes results.md, "
        "results.json and one PNG chart per workload (with matplotlib: "
        "pip install 'apiary[bench]'). Systems that cannot run are listed as skipped.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f"systems: {', '.join(SYSTEMS)}; a system may carry a variant, "
        f"e.g. apiary-pg:trace-off. Variants: {', '.join(VARIANTS)}.",
    )
    add_arguments(bench)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``apiary bench``."""
    parser.add_argument(
        "--workload",
        nargs="+",
        default=["all"],
        metavar="NAME",
        help=f"{' | '.join(WORKLOADS)} | all (default: all)",
    )
    parser.add_argument(
        "--systems",
        nargs="+",
        default=["apiary-sqlite", "apiary-pg", "apiary-pg-client"],
        metavar="SYSTEM",
        help="systems to run (default: apiary-sqlite apiary-pg apiary-pg-client)",
    )
    parser.add_argument(
        "--variants",
        nargs="+",
        default=[],
        metavar="VARIANT",
        help="run apiary-sqlite and apiary-pg in these variants instead: " + ", ".join(VARIANTS),
    )
    parser.add_argument(
        "--clients", type=int, nargs="+", default=[1, 4], metavar="N", help="client threads"
    )
    parser.add_argument(
        "--duration", type=float, default=5.0, metavar="S", help="seconds per round (default 5)"
    )
    parser.add_argument("--rounds", type=int, default=3, help="rounds per system (default 3)")
    parser.add_argument(
        "--warmup", type=float, default=1.0, metavar="S", help="warm-up seconds (default 1)"
    )
    parser.add_argument(
        "--scale",
        choices=["tiny", "default"],
        default="default",
        help="data size: default (as the paper's workloads) or tiny (smoke tests)",
    )
    parser.add_argument(
        "--db-url",
        default=os.environ.get("APIARY_BENCH_DB_URL"),
        metavar="URL",
        help="a PostgreSQL database reached as a superuser; the benchmark creates its own "
        "databases (apiary_bench_<workload>) on that server, dropping them first. Use a "
        "server of its own: see docs/BENCHMARKS.md (default: $APIARY_BENCH_DB_URL)",
    )
    parser.add_argument(
        "--out", default=DEFAULT_OUT, metavar="DIR", help=f"output folder (default {DEFAULT_OUT})"
    )
    parser.add_argument(
        "--keep-db",
        action="store_true",
        help="keep the SQLite and trace files in DIR/db (default: a temporary folder)",
    )


def run_bench(args: argparse.Namespace) -> int:
    """Run ``apiary bench`` with parsed arguments; exit status 1 if a check failed."""
    from apiary._bench.report import write
    from apiary._bench.runner import Settings, bench
    from apiary._bench.systems import check_name, expand

    workloads = list(WORKLOADS) if "all" in args.workload else list(dict.fromkeys(args.workload))
    unknown = [w for w in workloads if w not in WORKLOADS]
    if unknown:
        raise ValueError(f"unknown workload {unknown[0]!r} (known: {', '.join(WORKLOADS)}, all)")
    for variant in args.variants:
        if variant not in VARIANTS:
            raise ValueError(f"unknown variant {variant!r} (known: {', '.join(VARIANTS)})")
    systems = list(dict.fromkeys(expand(args.systems, args.variants)))
    for name in systems:
        check_name(name)
    if min(args.clients) < 1 or args.rounds < 1 or args.duration <= 0:
        raise ValueError("--clients and --rounds must be at least 1, --duration above 0")
    out = Path(args.out)
    settings = Settings(
        workloads=workloads,
        systems=systems,
        clients=list(dict.fromkeys(args.clients)),
        duration=args.duration,
        rounds=args.rounds,
        warmup=args.warmup,
        scale=args.scale,
        db_url=args.db_url,
        work_dir=out / "db" if args.keep_db else None,
    )
    with sigterm_as_interrupt():
        outcome = bench(settings)
    command = shlex.join(
        [
            "apiary",
            "bench",
            "--workload",
            *workloads,
            "--systems",
            *args.systems,
            *(["--variants", *args.variants] if args.variants else []),
            "--clients",
            *map(str, settings.clients),
            "--duration",
            f"{args.duration:g}",
            "--rounds",
            str(args.rounds),
            "--warmup",
            f"{args.warmup:g}",
            "--scale",
            args.scale,
            "--out",
            str(out),
        ]
    )
    if args.db_url:  # the URL may hold a password: not in the reports
        command += " --db-url $APIARY_BENCH_DB_URL"
    data, written, missing = write(outcome, out, command)
    print(data_summary(data))
    for path in written:
        print(f"wrote {path}")
    if missing:
        print(f"apiary bench: {missing}", file=sys.stderr)
    return 0 if all(c["ok"] for c in data["checks"]) else 1


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Take SIGTERM as Ctrl-C (``KeyboardInterrupt``) in the block, so that cleanup runs:
    ``apiary bench`` stops its server processes (apiary serve, the RPC service, DBOS's
    worker) instead of dying and leaving them running. In another thread than the main
    one (which alone gets signals), it does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers belong to the main thread
        return

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def data_summary(data: dict[str, Any]) -> str:
    """The Markdown report, for the terminal."""
    from apiary._bench.report import to_markdown

    return to_markdown(data)


def main(argv: list[str] | None = None) -> int:
    """``python -m apiary._bench.cli``: the same as ``apiary bench``."""
    parser = argparse.ArgumentParser(prog="apiary bench", description=__doc__)
    add_arguments(parser)
    args = parser.parse_args(argv)
    return run_bench(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
