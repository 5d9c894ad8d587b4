"""The ``apiary keys`` command: create, list and revoke API keys in a database."""

from __future__ import annotations

import argparse
import builtins
import json
import os
import sys
from datetime import UTC, datetime
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from apiary._app import App
from apiary._frontend.keys import ROLES, KeyInfo, KeyStore
from apiary._runtime import Runtime

# --------------------------------------------------------------------------------------
# The `apiary keys` command
# --------------------------------------------------------------------------------------


def add_keys_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``keys create|list|revoke`` to the ``apiary`` command's subcommands.

    :func:`run_keys_command` runs the parsed arguments.
    """
    keys = subparsers.add_parser(
        "keys",
        help="create, list and revoke the API keys of the HTTP frontend",
        description="Manage API keys. A key is shown once, when it is created; the "
        "database keeps only a SHA-256 digest of its secret.",
    )
    commands = keys.add_subparsers(dest="keys_command", metavar="SUBCOMMAND", required=True)

    create = commands.add_parser(
        "create",
        help="create a key and print it (once)",
        description="Create a key and print it on standard output: it is shown only "
        "this once. invoke keys run workflows and read their status; admin keys may "
        "also deploy apps and manage keys.",
    )
    create.add_argument("--role", required=True, choices=ROLES, help="what the key may do")
    create.add_argument("--label", metavar="L", help="a note on what the key is for")
    _add_db(create)
    create.add_argument(
        "--json",
        action="store_true",
        help='print {"key_id", "role", "label", "created_at", "key"} as JSON',
    )

    listing = commands.add_parser(
        "list",
        help="list the keys (never their secrets)",
        description="List every key, revoked ones included, oldest first.",
    )
    _add_db(listing)
    listing.add_argument("--json", action="store_true", help="print JSON instead of a table")

    revoke = commands.add_parser(
        "revoke",
        help="revoke a key",
        description="Revoke a key. Running frontends stop accepting it within their "
        "--key-ttl. Exit status 1 if there is no such key or it was revoked already.",
    )
    revoke.add_argument("key_id", metavar="KEY_ID", help="the 12 hex digits after apk_")
    _add_db(revoke)


def _add_db(parser: argparse.ArgumentParser) -> None:
    # The same option as every other `apiary` command's (apiary._cli imports this
    # module, so the helper there cannot be imported here).
    default = os.environ.get("APIARY_DB", "sqlite:///apiary.db")
    parser.add_argument(
        "--db",
        default=default,
        metavar="URL",
        help="database URL: sqlite:///relative.db, sqlite:////absolute.db or "
        "postgresql://user:password@host:port/database (default: $APIARY_DB or "
        "sqlite:///apiary.db)",
    )


def run_keys_command(args: argparse.Namespace) -> int:
    """Run ``apiary keys ...`` parsed by :func:`add_keys_commands`; return the exit status.

    :class:`~apiary.ApiaryError` (an unreachable database, ...) propagates to the caller,
    which reports it like any other command's.
    """
    # A runtime only for its engine: an app with no functions. Installing it creates the
    # system tables (so `keys create` works on a fresh database) and an empty app
    # schema, and changes nothing that exists.
    with Runtime(App("apiary_keys"), admin_url(args.db)) as rt:
        rt.install()
        store = KeyStore(rt, ttl=0)
        if args.keys_command == "create":
            return _create(store, args)
        if args.keys_command == "list":
            return _list(store, args)
        if args.keys_command == "revoke":
            return _revoke(store, args)
    raise ValueError(f"unknown keys subcommand {args.keys_command!r}")


def admin_url(url: str) -> str:
    """The database URL the ``keys`` command opens: PostgreSQL in client placement (a
    cluster's partition 0).

    Key management runs only ``engine.transact``, which runs in this process in either
    placement; client placement installs only the system tables. In ``placement=db``,
    installing would also need PL/Python and a superuser, and fails for an app that no
    module defines (the server loads an app from its modules), as this command's is.
    """
    parts = urlsplit(url)
    if parts.scheme.lower() == "cluster":
        # A cluster keeps the frontend's tables (keys included) on its partition 0.
        from apiary._engines.cluster import ClusterConfig

        return admin_url(ClusterConfig.from_url(url).partitions[0])
    if parts.scheme.lower() not in ("postgresql", "postgres"):
        return url
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != "placement"]
    query.append(("placement", "client"))
    return urlunsplit(parts._replace(query=urlencode(query)))


def _create(store: KeyStore, args: argparse.Namespace) -> int:
    created = store.create(args.role, args.label)
    if args.json:
        print(json.dumps(created.to_json()))
    else:
        print(created.key)
    # On standard error, so that KEY=$(apiary keys create ...) captures only the key.
    label = f" ({created.label})" if created.label else ""
    print(
        f"created {created.role} key {created.key_id}{label}. It is shown only this once: "
        "store it now (the database keeps only a digest).",
        file=sys.stderr,
    )
    return 0


def _list(store: KeyStore, args: argparse.Namespace) -> int:
    keys = store.list()
    if args.json:
        print(json.dumps([key.to_json() for key in keys]))
        return 0
    print(render_keys(keys))
    return 0


def render_keys(keys: builtins.list[KeyInfo]) -> str:
    """Keys as a table: ID, role, created, revoked, label (times in UTC)."""
    header = ("key_id", "role", "created (UTC)", "revoked (UTC)", "label")
    rows = [header]
    rows += [
        (
            key.key_id,
            key.role,
            _when(key.created_at),
            "-" if key.revoked_at is None else _when(key.revoked_at),
            key.label or "",
        )
        for key in keys
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]
    if not keys:
        lines.append("(no keys)")
    return "\n".join(lines)


def _when(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, tz=UTC).strftime("%Y-%m-%d %H:%M:%S")


def _revoke(store: KeyStore, args: argparse.Namespace) -> int:
    if store.revoke(args.key_id):
        print(f"revoked key {args.key_id}")
        return 0
    print(f"apiary keys revoke: no active key {args.key_id!r}", file=sys.stderr)
    return 1
