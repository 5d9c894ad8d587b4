"""The ``apiary`` command line: ``demo``, ``install``, ``run``, ``explain``."""

from __future__ import annotations

import argparse
import inspect
import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from apiary import _codec
from apiary._errors import ApiaryError, FunctionError
from apiary._loading import load_app
from apiary._plan import RECORD_MODES, compile_plan, explain
from apiary._runtime import Runtime

DEFAULT_DB = "sqlite:///apiary.db"


def _db_default() -> str:
    return os.environ.get("APIARY_DB", DEFAULT_DB)


def _add_db(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--db",
        default=_db_default(),
        metavar="URL",
        help="database URL: sqlite:///relative.db or sqlite:////absolute.db "
        f"(default: $APIARY_DB or {DEFAULT_DB})",
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="apiary",
        description="Transactional functions and workflows that run inside the database.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    demo = commands.add_parser(
        "demo",
        help="run the hotel example on SQLite: concurrent bookings, replay, explain",
        description="Install the hotel app of examples/hotel.py on a SQLite file, book rooms "
        "for several concurrent customers, show that nothing is overbooked, replay a "
        "workflow ID to show the booking is not repeated, and print the workflow's DAG.",
    )
    demo.add_argument(
        "--db", metavar="URL", help="database URL (default: a new file in a temporary folder)"
    )
    demo.add_argument("--customers", type=int, default=8, help="concurrent customers (default: 8)")
    demo.add_argument("--rooms", type=int, default=3, help="rooms per day (default: 3)")

    install = commands.add_parser(
        "install",
        help="create system tables and the app's schema in a database",
        description="Create Apiary's system tables and the app's schema, and check that "
        "every statement compiles. Safe to run again.",
    )
    install.add_argument("app", metavar="MODULE:APP", help="e.g. examples/hotel.py:app")
    _add_db(install)

    run = commands.add_parser(
        "run",
        help="run a workflow and print its result as JSON",
        usage="apiary run MODULE:APP WORKFLOW [--db URL] [options]\n"
        "       apiary run WORKFLOW --url URL --key KEY [options]",
        description="Run a workflow to completion and print "
        '{"workflow_id", "status", "output"} (or "error") as JSON: in this process on a '
        "database (MODULE:APP WORKFLOW --db URL), or through a frontend (WORKFLOW --url "
        "URL --key KEY, with retries until it answers). Exit status 1 if the workflow "
        "ended in an application error, 2 for other errors.",
    )
    run.add_argument(
        "targets",
        nargs="+",
        metavar="[MODULE:APP] WORKFLOW",
        help="the app (with --db) and the workflow's name",
    )
    _add_db(run)
    run.add_argument(
        "--url",
        action="append",
        metavar="URL",
        help="run through the frontend at URL (repeat for fallbacks) instead of --db",
    )
    run.add_argument(
        "--key",
        default=os.environ.get("APIARY_KEY"),
        metavar="KEY",
        help="API key for --url (default: $APIARY_KEY)",
    )
    run.add_argument(
        "--arg",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an argument; VALUE is read as JSON unless the parameter is annotated str "
        "(repeat for each argument)",
    )
    run.add_argument(
        "--workflow-id", metavar="ID", help="name the run: the same ID never runs twice"
    )
    run.add_argument(
        "--record", choices=RECORD_MODES, default="sfr", help="what to record (default: sfr)"
    )

    exp = commands.add_parser(
        "explain",
        help="show a workflow's DAG, transaction groups and recorded nodes",
        description="Print each node of a workflow: id, function, parents, transaction "
        "group, read-only, step, and whether selective function recording records it.",
    )
    exp.add_argument("app", metavar="MODULE:APP", help="e.g. examples/hotel.py:app")
    exp.add_argument("workflow", metavar="WORKFLOW", help="workflow name")
    exp.add_argument("--json", action="store_true", help="print JSON instead of a table")
    exp.add_argument(
        "--record", choices=RECORD_MODES, default="sfr", help="record mode (default: sfr)"
    )

    from apiary._bench.cli import add_bench_command
    from apiary._frontend.cli import add_frontend_commands
    from apiary._frontend.keys_cli import add_keys_commands
    from apiary._tracing.cli import add_trace_commands

    add_frontend_commands(commands, _db_default())
    add_keys_commands(commands)
    add_trace_commands(commands, _db_default())
    add_bench_command(commands)
    return parser


def parse_pairs(pairs: Sequence[str], is_string: Callable[[str], bool]) -> dict[str, Any]:
    """``--arg KEY=VALUE`` pairs: VALUE is JSON, unless ``is_string(KEY)`` or not JSON."""
    args: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise ApiaryError(f"--arg {pair!r}: expected KEY=VALUE")
        if is_string(key):
            args[key] = raw
            continue
        try:
            args[key] = json.loads(raw)
        except json.JSONDecodeError:
            args[key] = raw  # a bare word is a string
    return args


def _parse_args(workflow: Any, pairs: Sequence[str]) -> dict[str, Any]:
    params = workflow.signature.parameters

    def is_string(key: str) -> bool:
        annotation = params[key].annotation if key in params else inspect.Parameter.empty
        return annotation in (str, "str")

    return parse_pairs(pairs, is_string)


def render_explain(data: dict[str, Any]) -> str:
    """A workflow's plan as a table."""
    header = ("id", "function", "parents", "group", "read_only", "step", "recorded")
    rows = [header]
    for node in data["nodes"]:
        rows.append(
            (
                node["id"],
                node["function"],
                ",".join(node["parents"]) or "-",
                "-" if node["group"] is None else str(node["group"]),
                "yes" if node["read_only"] else "no",
                "yes" if node["step"] else "no",
                "yes" if node["recorded"] else "no",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = [
        f"workflow {data['workflow']}({', '.join(data['params'])})  record={data['record']}  "
        f"status row: {'yes' if data['status_row'] else 'no (nothing to record)'}"
    ]
    lines += [
        "  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]
    lines.append(f"  output: {_describe_template(data['output'])}")
    return "\n".join(lines)


def _describe_template(template: list[Any]) -> str:
    tag, value = template
    if tag == "n":
        return str(value)
    if tag == "p":
        return f"parameter {value}"
    if tag == "c":
        return json.dumps(value)
    if tag == "l":
        return "[" + ", ".join(_describe_template(t) for t in value) + "]"
    return "{" + ", ".join(f"{k}: {_describe_template(t)}" for k, t in value.items()) + "}"


def _explain(args: argparse.Namespace) -> int:
    app = load_app(args.app)
    workflow = app.workflows.get(args.workflow)
    if workflow is None:
        known = ", ".join(sorted(app.workflows)) or "none"
        raise ApiaryError(f"app {app.name!r} has no workflow {args.workflow!r} (known: {known})")
    data = explain(compile_plan(app, workflow, args.record))
    print(json.dumps(data, indent=2) if args.json else render_explain(data))
    return 0


def _install(args: argparse.Namespace) -> int:
    app = load_app(args.app)
    with Runtime(app, args.db) as rt:
        rt.install()
    print(
        f"installed app {app.name!r} ({len(app.workflows)} workflows, "
        f"{len(app.functions)} functions) into {args.db}"
    )
    return 0


def _run(args: argparse.Namespace) -> int:
    if args.url:
        if len(args.targets) != 1:
            raise ApiaryError("with --url, give only the WORKFLOW name")
        from apiary._frontend.cli import run_remote

        return run_remote(args.url, args.key, args.targets[0], args.arg, args.workflow_id)
    if len(args.targets) != 2:
        raise ApiaryError("give MODULE:APP WORKFLOW (or WORKFLOW --url URL --key KEY)")
    args.app, args.workflow = args.targets
    app = load_app(args.app)
    workflow = app.workflows.get(args.workflow)
    if workflow is None:
        known = ", ".join(sorted(app.workflows)) or "none"
        raise ApiaryError(f"app {app.name!r} has no workflow {args.workflow!r} (known: {known})")
    call_args = _parse_args(workflow, args.arg)
    with Runtime(app, args.db, record=args.record) as rt:
        workflow_id = args.workflow_id or rt._next_id()
        try:
            output = rt.run(args.workflow, workflow_id=workflow_id, **call_args)
        except FunctionError as exc:
            print(
                json.dumps({"workflow_id": workflow_id, "status": "ERROR", "error": exc.to_json()})
            )
            return 1
    result = {"workflow_id": workflow_id, "status": "SUCCESS", "output": output}
    print(json.dumps(json.loads(_codec.dumps(result))))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``apiary`` command."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "demo":
            from apiary._demo import run_demo

            return run_demo(db=args.db, customers=args.customers, rooms=args.rooms)
        if args.command == "install":
            return _install(args)
        if args.command == "run":
            return _run(args)
        if args.command == "explain":
            return _explain(args)
        if args.command == "keys":
            from apiary._frontend.keys_cli import run_keys_command

            return run_keys_command(args)
        if args.command == "trace":
            from apiary._tracing.cli import run_trace_command

            return run_trace_command(args)
        if args.command == "bench":
            from apiary._bench.cli import run_bench

            return run_bench(args)
        from apiary._frontend.cli import run_frontend_command

        return run_frontend_command(args)
    except (ApiaryError, ValueError) as exc:
        print(f"apiary {args.command}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        # Ctrl-C (and SIGTERM for `apiary bench`): what was started is stopped on the way out.
        print(f"apiary {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`apiary trace ... | head`): stop quietly, as Unix tools do.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
