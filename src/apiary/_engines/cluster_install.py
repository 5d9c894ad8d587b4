"""Installing a partitioned cluster: each partition's number and ``CHECK`` constraints,
and the proxy database's PL/Proxy routing functions (:mod:`apiary._engines.cluster`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg.conninfo import make_conninfo

from apiary._app import AppInfo
from apiary._engines.cluster_config import identity, libpq_params
from apiary._engines.pgwire import SYSTEM_SCHEMA, stub_name
from apiary._errors import NotInstalledError
from apiary._partitioning import HASH_SQL
from apiary._units import UnitSpec

#: The PL/Proxy cluster (an SQL/MED server in the proxy database).
PROXY_CLUSTER = "apiary_cluster"

_PARTITION_DDL = """
CREATE TABLE IF NOT EXISTS apiary.partition (
    only_row   BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (only_row),
    index      INTEGER NOT NULL,
    count      INTEGER NOT NULL
)
"""


def install_partition(
    conn: psycopg.Connection[Any], app: AppInfo, index: int, count: int, url: str
) -> None:
    """Record the partition's number and admit only its keys into partitioned tables."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(hashtext('apiary.install'))")
        conn.execute(HASH_SQL)
        conn.execute(_PARTITION_DDL)
        row = conn.execute("SELECT index, count FROM apiary.partition").fetchone()
        if row is None:
            conn.execute(
                "INSERT INTO apiary.partition (index, count) VALUES (%s, %s)", (index, count)
            )
        elif tuple(row) != (index, count):
            raise NotInstalledError(
                f"database {_where(url)} was installed as partition {row[0]} of {row[1]}; the "
                f"cluster configuration lists it as partition {index} of {count}. Keep the "
                "order of 'partitions'; changing their number means moving rows between "
                "databases, which Apiary does not do"
            )
        for table, column in app.partitioning:
            if column is None:
                continue
            name = f"apiary_partition_{table}"[:63]
            found = conn.execute(
                "SELECT 1 FROM pg_constraint WHERE conname = %s AND conrelid = %s::regclass",
                (name, table),
            ).fetchone()
            if found is None:
                conn.execute(
                    f'ALTER TABLE "{table}" ADD CONSTRAINT "{name}" CHECK '
                    f'((apiary.partition_hash(("{column}")::text) & {count - 1}) = {index})'
                )


def _where(url: str) -> str:
    host, port, dbname = identity(url)
    return f"{dbname!r} on {host}:{port}"


def install_proxy(
    conn: psycopg.Connection[Any],
    app: AppInfo,
    units: Sequence[UnitSpec],
    partitions: Sequence[str],
) -> None:
    """The PL/Proxy cluster (an SQL/MED server) and one routing function per unit."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(hashtext('apiary.install'))")
        conn.execute("CREATE EXTENSION IF NOT EXISTS plproxy")
        conn.execute(f"CREATE SCHEMA IF NOT EXISTS {SYSTEM_SCHEMA}")
        conn.execute(HASH_SQL)
        # The proxy's connections to the partitions run serializable, like every other.
        options = {f"p{i}": _proxy_conninfo(url) for i, url in enumerate(partitions)}
        exists = conn.execute(
            "SELECT srvoptions FROM pg_foreign_server WHERE srvname = %s", (PROXY_CLUSTER,)
        ).fetchone()
        if exists is None:
            listed = ", ".join(f"{k} {_literal(v)}" for k, v in options.items())
            conn.execute(
                f"CREATE SERVER {PROXY_CLUSTER} FOREIGN DATA WRAPPER plproxy OPTIONS ({listed})"
            )
            conn.execute(f"CREATE USER MAPPING IF NOT EXISTS FOR PUBLIC SERVER {PROXY_CLUSTER}")
        else:
            current = dict(opt.split("=", 1) for opt in exists[0] or [])
            changes = [
                f"{'SET' if k in current else 'ADD'} {k} {_literal(v)}"
                for k, v in options.items()
                if current.get(k) != v
            ]
            changes += [
                f"DROP {k}"
                for k in current
                if k.startswith("p") and k[1:].isdigit() and k not in options
            ]
            if changes:
                conn.execute(f"ALTER SERVER {PROXY_CLUSTER} OPTIONS ({', '.join(changes)})")
        done: set[str] = set()
        for unit in units:
            name = stub_name(app.name, unit)
            if name in done or unit.route is None:
                continue
            done.add(name)
            target = f'{SYSTEM_SCHEMA}."{name}"'
            if unit.route.kind == "all":
                conn.execute(
                    f"CREATE OR REPLACE FUNCTION {target}(version text, request text) "
                    f"RETURNS SETOF text LANGUAGE plproxy AS $$ CLUSTER '{PROXY_CLUSTER}'; "
                    f"RUN ON ALL; SELECT {target}(version, request); $$"
                )
            else:
                conn.execute(
                    f"CREATE OR REPLACE FUNCTION {target}(version text, request text, key text) "
                    f"RETURNS text LANGUAGE plproxy AS $$ CLUSTER '{PROXY_CLUSTER}'; "
                    f"RUN ON apiary.partition_hash(key); SELECT {target}(version, request); $$"
                )


def _proxy_conninfo(url: str) -> str:
    """A partition's connection string for PL/Proxy: serializable, like every other."""
    params = libpq_params(url)
    serializable = "-c default_transaction_isolation=serializable"
    params["options"] = (
        f"{params['options']} {serializable}" if params.get("options") else serializable
    )
    return make_conninfo(**params)


def _literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"
