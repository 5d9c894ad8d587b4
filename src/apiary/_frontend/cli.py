"""Commands of the frontend: ``apiary serve``, ``apiary deploy``, and ``apiary run --url``.

The HTTP server and client packages are optional (``pip install 'apiary[server]'``), so
they are imported only when one of these commands runs.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from apiary import _codec
from apiary._errors import ApiaryError, FunctionError


def add_frontend_commands(commands: Any, db_default: str) -> None:
    """Add ``serve`` and ``deploy`` to the ``apiary`` command's subcommands."""
    serve = commands.add_parser(
        "serve",
        help="serve an app over HTTP (frontend: keys, scheduler, registrar, recovery)",
        description="Serve an app's workflows over HTTP (see docs/FRONTEND.md): installs "
        "the app if this version is new, then serves the newest deployed version, "
        "finishes workflows of frontends that died, and takes deploys.",
    )
    serve.add_argument(
        "app",
        nargs="?",
        metavar="MODULE:APP",
        help="the app to serve; without it, the newest version deployed as --app-name",
    )
    serve.add_argument(
        "--db",
        default=db_default,
        metavar="URL",
        help=f"database URL (default: $APIARY_DB or {db_default})",
    )
    serve.add_argument("--app-name", help="serve this app's newest deployed version")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on")
    serve.add_argument("--port", type=int, default=8080, help="port (default: 8080)")
    serve.add_argument(
        "--workers", type=int, default=1, help="processes, each a frontend (default: 1)"
    )
    serve.add_argument(
        "--max-body",
        type=int,
        default=1 << 20,
        metavar="BYTES",
        help="largest request body (default: 1 MiB; larger gets 413)",
    )
    serve.add_argument(
        "--key-ttl",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="how long a checked key is cached (revocation delay; default: 5)",
    )
    serve.add_argument(
        "--heartbeat",
        type=float,
        default=2.0,
        metavar="SECONDS",
        help="heartbeat and recovery interval (default: 2)",
    )
    serve.add_argument(
        "--expiry",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="a frontend silent this long is dead: others finish its workflows (default: 10)",
    )
    serve.add_argument(
        "--trace-store",
        metavar="PATH",
        help="DuckDB file to spool traces into (default: <database>-trace.duckdb beside a "
        "SQLite database, ./apiary-trace.duckdb for PostgreSQL)",
    )
    serve.add_argument(
        "--no-spool",
        action="store_true",
        help="do not spool traces here (another process does: apiary trace spool)",
    )
    serve.add_argument(
        "--no-trace",
        action="store_true",
        help="do not trace: functions run their statements as declared, nothing is staged "
        "or spooled (for benchmarks, or apps that need no provenance)",
    )
    serve.add_argument(
        "--log-level",
        default="info",
        choices=["critical", "error", "warning", "info", "debug"],
        help="server log level",
    )

    deploy = commands.add_parser(
        "deploy",
        help="upload an app module to a running frontend",
        description="Upload FILE.py to a frontend: it is registered and installed, and "
        "served from the next request. Invalid code changes nothing (HTTP 400).",
    )
    deploy.add_argument("file", metavar="FILE.py", help="the module defining the app")
    deploy.add_argument("--url", required=True, help="a frontend's URL")
    deploy.add_argument("--key", required=True, help="an admin API key")


def run_frontend_command(args: argparse.Namespace) -> int:
    """Run ``serve`` or ``deploy``."""
    if args.command == "serve":
        return _serve(args)
    return _deploy(args)


def _serve(args: argparse.Namespace) -> int:
    if not args.app and not args.app_name:
        raise ApiaryError("give MODULE:APP, or --app-name to serve an app deployed before")
    from apiary._frontend.server import serve

    options = {
        "app": args.app,
        "app_name": args.app_name,
        "db": args.db,
        "max_body": args.max_body,
        "key_ttl": args.key_ttl,
        "heartbeat": args.heartbeat,
        "expiry": args.expiry,
    }
    if args.no_trace:
        options["trace"] = False
    if args.no_spool:
        options["trace_store"] = None
    elif args.trace_store:
        options["trace_store"] = args.trace_store
    serve(options, host=args.host, port=args.port, workers=args.workers, log_level=args.log_level)
    return 0


def _deploy(args: argparse.Namespace) -> int:
    from apiary._client import Client

    path = Path(args.file)
    if not path.is_file():
        raise ApiaryError(f"no such file: {path}")
    with Client(args.url, args.key) as client:
        answer = client.deploy(path.read_text(), path.stem)
    print(json.dumps(answer))
    return 0


def run_remote(
    urls: Sequence[str],
    key: str | None,
    workflow: str,
    pairs: Sequence[str],
    workflow_id: str | None,
) -> int:
    """``apiary run WORKFLOW --url URL --key KEY``: through the client library."""
    from apiary._cli import parse_pairs
    from apiary._client import Client

    if not key:
        raise ApiaryError("--url needs --key (or $APIARY_KEY)")
    with Client(list(urls), key) as client:
        strings = _string_parameters(client, workflow)
        args = parse_pairs(pairs, lambda name: name in strings)
        try:
            output = client.run(workflow, workflow_id=workflow_id, **args)
            result: dict[str, Any] = {"status": "SUCCESS", "output": output}
        except FunctionError as exc:
            print(
                json.dumps(
                    {"workflow_id": exc.workflow_id, "status": "ERROR", "error": exc.to_json()}
                )
            )
            return 1
    result = {"workflow_id": client.last_workflow_id, **result}
    print(json.dumps(json.loads(_codec.dumps(result))))
    return 0


def _string_parameters(client: Any, workflow: str) -> set[str]:
    """Parameters the frontend's OpenAPI document types as strings (kept verbatim)."""
    try:
        document = client.openapi()
    except ApiaryError:
        return set()
    path = document.get("paths", {}).get(f"/v1/workflows/{workflow}", {})
    body = path.get("post", {}).get("requestBody", {})
    schema = body.get("content", {}).get("application/json", {}).get("schema", {})
    properties = schema.get("properties", {})
    return {name for name, prop in properties.items() if prop.get("type") == "string"}
