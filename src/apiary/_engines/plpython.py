"""Installing an app in PostgreSQL and compiling its units into PL/Python procedures.

``install`` runs in one transaction (under an advisory lock, so concurrent installs wait
for each other), so a failure leaves the database as it was:

1. ``CREATE EXTENSION plpython3u`` (placement ``db`` only; an untrusted language, so
   this needs a superuser) and the system tables in schema ``apiary``;
2. the app's schema;
3. every statement is prepared once (``PREPARE``) so that PostgreSQL infers its parameter
   types (``pg_prepared_statements.parameter_types``), which ``plpy.prepare`` needs;
   a query whose result has two columns of one name is wrapped so each gets its own
   (PL/Python returns rows as dicts);
4. the execution core, the in-database runtime, the app's modules and the compiled
   statements are stored in ``apiary.code`` under the app's version;
5. every transaction unit becomes its own ``plpython3u`` function (a stub that loads the
   runtime once per backend into ``GD`` and runs its unit), plus one system function for
   workflow bookkeeping; the runtime is then loaded once, to report any error now.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import sys
import sysconfig
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import FunctionType, ModuleType
from typing import Any

import psycopg
import sqlglot
import sqlglot.errors

from apiary import _bookkeeping, _capture, _codec, _database, _errors, _execution, _indb, _units
from apiary._app import AppInfo
from apiary._bookkeeping import SYSTEM_STATEMENTS
from apiary._capture import STAGE_TRACE, CapturePlan
from apiary._database import Statement
from apiary._engines._base import DeclaredStatement
from apiary._errors import NotInstalledError, RegistrationError
from apiary._sql import info_of, placeholder_forms
from apiary._units import UnitSpec

SYSTEM_DDL = """
CREATE SCHEMA IF NOT EXISTS apiary;
CREATE TABLE IF NOT EXISTS apiary.workflows (
    workflow_id TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    inputs      TEXT NOT NULL,
    status      TEXT NOT NULL CHECK (status IN ('PENDING', 'SUCCESS', 'ERROR')),
    output      TEXT,
    error       TEXT,
    owner       TEXT,
    version     TEXT,
    created_at  DOUBLE PRECISION NOT NULL,
    updated_at  DOUBLE PRECISION NOT NULL
);
CREATE INDEX IF NOT EXISTS workflows_pending
    ON apiary.workflows (created_at) WHERE status = 'PENDING';
CREATE TABLE IF NOT EXISTS apiary.outputs (
    workflow_id   TEXT NOT NULL,
    invocation_id TEXT NOT NULL,
    output        TEXT NOT NULL,
    PRIMARY KEY (workflow_id, invocation_id)
);
CREATE OR REPLACE FUNCTION apiary.clear_outputs() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM apiary.outputs WHERE workflow_id = NEW.workflow_id;
    RETURN NULL;
END $$;
CREATE OR REPLACE TRIGGER workflows_finished
    AFTER UPDATE OF status ON apiary.workflows
    FOR EACH ROW WHEN (NEW.status <> 'PENDING') EXECUTE FUNCTION apiary.clear_outputs();
CREATE TABLE IF NOT EXISTS apiary.clients (
    client_id  BIGSERIAL PRIMARY KEY,
    created_at DOUBLE PRECISION NOT NULL
);
CREATE TABLE IF NOT EXISTS apiary.trace_staging (
    id            BIGSERIAL PRIMARY KEY,
    workflow_id   TEXT,
    invocation_id TEXT,
    payload       TEXT NOT NULL,
    created_at    DOUBLE PRECISION NOT NULL
);
CREATE TABLE IF NOT EXISTS apiary.keys (
    key_id      TEXT PRIMARY KEY,
    secret_hash TEXT NOT NULL,
    role        TEXT NOT NULL CHECK (role IN ('invoke', 'admin')),
    label       TEXT,
    created_at  DOUBLE PRECISION NOT NULL,
    revoked_at  DOUBLE PRECISION
);
CREATE TABLE IF NOT EXISTS apiary.frontends (
    frontend_id  TEXT PRIMARY KEY,
    address      TEXT,
    started_at   DOUBLE PRECISION NOT NULL,
    heartbeat_at DOUBLE PRECISION NOT NULL
);
CREATE TABLE IF NOT EXISTS apiary.deployments (
    app         TEXT NOT NULL,
    version     TEXT NOT NULL,
    module      TEXT NOT NULL,
    source      TEXT NOT NULL,
    deployed_at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (app, version)
);
CREATE TABLE IF NOT EXISTS apiary.code (
    app          TEXT NOT NULL,
    version      TEXT NOT NULL,
    name         TEXT NOT NULL,
    kind         TEXT NOT NULL,
    ordinal      INTEGER NOT NULL,
    source       TEXT NOT NULL,
    path         TEXT,
    installed_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (app, version, name)
);
"""

#: The system procedure's setting. A backend keeps its plans; one made while the status
#: table was a page long (just installed or analyzed) read every status row at each end
#: of a workflow. Its statements all look rows up by an index (docs/POSTGRES.md).
SYSTEM_STUB_SETTINGS = "SET enable_seqscan = off "

_CORE = (_errors, _codec, _database, _capture, _bookkeeping, _units, _execution)


def _plpython_missing(conn: psycopg.Connection[Any]) -> bool:
    row = conn.execute(
        "SELECT count(*) FROM pg_available_extensions WHERE name = 'plpython3u'"
    ).fetchone()
    return not row or not row[0]


def _ensure_plpython(conn: psycopg.Connection[Any]) -> None:
    if _plpython_missing(conn):
        raise NotInstalledError(
            "PostgreSQL has no PL/Python (plpython3u): install it on the database server "
            "(Debian/Ubuntu: apt-get install postgresql-plpython3-15, matching the server's "
            "major version) and run install again; or use ?placement=client"
        )
    try:
        conn.execute("CREATE EXTENSION IF NOT EXISTS plpython3u")
    except psycopg.errors.InsufficientPrivilege as exc:
        raise NotInstalledError(
            "creating the plpython3u extension and functions in it needs a superuser role "
            "(plpython3u is an untrusted language): install as a superuser, or have one run "
            f"CREATE EXTENSION plpython3u first: {exc}"
        ) from exc


def _create_schema(conn: psycopg.Connection[Any], app: str, ddl: str) -> None:
    """Run the app's DDL; DDL written for SQLite (the embedded default) is translated.

    ``INTEGER PRIMARY KEY AUTOINCREMENT``, ``BLOB``, ``REAL``, ``DATETIME`` and the like do
    not exist in PostgreSQL. The DDL runs as written first; if PostgreSQL refuses it,
    sqlglot's SQLite-to-PostgreSQL translation is tried before giving up.
    """
    try:
        with conn.transaction():  # a savepoint: a failure leaves the install going
            conn.execute(ddl)
        return
    except psycopg.Error as exc:
        first = exc
    try:
        translated = ";\n".join(sqlglot.transpile(ddl, read="sqlite", write="postgres"))
    except sqlglot.errors.SqlglotError:
        translated = ""
    if translated and translated.strip() != ddl.strip():
        try:
            with conn.transaction():
                conn.execute(translated)
            return
        except psycopg.Error as exc:
            raise RegistrationError(
                f"app {app!r}: schema statement failed on PostgreSQL: "
                f"{first.diag.message_primary or first}\n{ddl}\nand so did its translation "
                f"from SQLite's dialect: {exc.diag.message_primary or exc}\n{translated}"
            ) from exc
    raise RegistrationError(
        f"app {app!r}: schema statement failed on PostgreSQL: "
        f"{first.diag.message_primary or first}\n{ddl}"
    ) from first


def _infer(conn: psycopg.Connection[Any], function: str, stmt: Statement, text: str) -> list[Any]:
    """Prepare the statement; return ``[text_to_run, parameter_types]``."""
    name = "apiary_probe"
    try:
        conn.execute(f"PREPARE {name} AS {text}")
    except psycopg.Error as exc:
        hint = ""
        if isinstance(exc, psycopg.errors.IndeterminateDatatype):
            hint = "; give the parameter a type, e.g. CAST(? AS INTEGER)"
        raise RegistrationError(
            f"function {function!r}: statement {stmt.text!r} does not compile on "
            f"PostgreSQL: {exc.diag.message_primary or exc}{hint}"
        ) from exc
    try:
        row = conn.execute(
            "SELECT parameter_types::text[] FROM pg_prepared_statements WHERE name = %s",
            (name,),
        ).fetchone()
        types = list(row[0]) if row and row[0] else []
        described = conn.pgconn.describe_prepared(name.encode())
        columns = [described.fname(i) for i in range(described.nfields)]
    finally:
        conn.execute(f"DEALLOCATE {name}")
    if len(set(columns)) != len(columns):
        if stmt.info is not None and info_of(stmt).writes:
            raise RegistrationError(
                f"function {function!r}: statement {stmt.text!r} returns several columns "
                "of one name; give them distinct names with AS"
            )
        # PL/Python returns rows as dicts, which would merge same-named columns.
        aliases = ", ".join(f"c{i + 1}" for i in range(len(columns)))
        return [f"SELECT * FROM ({text}) AS apiary_columns ({aliases})", types]
    return [text, types]


def _library_roots() -> tuple[str, ...]:
    paths = sysconfig.get_paths()
    roots = {paths[key] for key in ("stdlib", "platstdlib", "purelib", "platlib") if key in paths}
    roots.add(str(Path(_errors.__file__).resolve().parent))  # apiary itself: the shim stands in
    return tuple(str(Path(root).resolve()) for root in roots)


def _project_module(module: ModuleType, roots: tuple[str, ...]) -> bool:
    """Whether a module is the application's own code (not the standard library,
    an installed package or apiary), which must be shipped along."""
    file = getattr(module, "__file__", None)
    if not file or module.__name__ == "__main__":
        return False
    resolved = str(Path(file).resolve())
    return not resolved.startswith(roots)


def code_modules(app_modules: Sequence[str]) -> list[str]:
    """The app's modules and the project modules they use (helpers, parent packages).

    The app's code runs inside the database, so whatever of its own project it imports
    must be shipped with it; the standard library is there already, and installed
    packages cannot be shipped (functions that need them use placement=client).
    """
    roots = _library_roots()
    found: list[str] = []
    pending = list(app_modules)
    while pending:
        name = pending.pop(0)
        if name in found:
            continue
        module = sys.modules.get(name)
        if module is None:
            continue
        found.append(name)
        parts = name.split(".")
        pending += [".".join(parts[:depth]) for depth in range(1, len(parts))]
        for value in list(vars(module).values()):
            used = value if isinstance(value, ModuleType) else None
            if used is not None and used.__name__.startswith(name + "."):
                continue  # importing a submodule sets it on its package: not a use
            if used is None and isinstance(value, type | FunctionType):
                used = sys.modules.get(getattr(value, "__module__", "") or "")
            if used is not None and used.__name__ not in found and _project_module(used, roots):
                pending.append(used.__name__)
    return found


def _module_source(name: str) -> str:
    module = sys.modules.get(name)
    loader = getattr(module, "__loader__", None)
    try:
        source = loader.get_source(name) if loader and hasattr(loader, "get_source") else None
        return source if source is not None else inspect.getsource(module)  # type: ignore[arg-type]
    except (OSError, TypeError, ImportError) as exc:
        raise RegistrationError(
            f"cannot read the source of module {name!r}, which placement=db ships into "
            "the database; define the app in a .py file (or use ?placement=client)"
        ) from exc


def _stub_body(app: str, call: str) -> str:
    key = f"apiary:{app}"
    boot_sql = (
        "SELECT source FROM apiary.code WHERE app = $1 AND version = $2 AND name = 'apiary._indb'"
    )
    return (
        f"rt = GD.get({key!r})\n"
        "if rt is None or rt.version != version:\n"
        f"    found = plpy.execute(plpy.prepare({boot_sql!r}, ['text', 'text']), "
        f"[{app!r}, version])\n"
        "    if not found:\n"
        f"        plpy.error('apiary: version %s of app {app} is not installed; run install'"
        f" % version, sqlstate={_indb.NOT_INSTALLED_STATE!r})\n"
        "    ns = {'__name__': 'apiary._indb'}\n"
        "    exec(compile(found[0]['source'], '<apiary.code:apiary._indb>', 'exec'), ns)\n"
        f"    rt = GD[{key!r}] = ns['boot'](plpy, {app!r}, version)\n"
        f"return {call}\n"
    )


def _create_function(
    conn: psycopg.Connection[Any], name: str, params: str, body: str, settings: str = ""
) -> None:
    tag = "apiary_" + hashlib.sha256(body.encode()).hexdigest()[:8]
    conn.execute(
        f'CREATE OR REPLACE FUNCTION apiary."{name}"({params}) RETURNS text '
        f"LANGUAGE plpython3u {settings}AS ${tag}$\n{body}${tag}$"
    )


def install(
    conn: psycopg.Connection[Any],
    app: AppInfo,
    statements: Sequence[DeclaredStatement],
    units: Sequence[UnitSpec],
    plans: Mapping[str, CapturePlan] | None = None,
    *,
    in_database: bool,
) -> None:
    """Install ``app`` over ``conn`` (autocommit); see the module docstring."""
    from apiary._engines.pgwire import stub_name, system_stub_name

    try:
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(hashtext('apiary.install'))")
            if in_database:
                _ensure_plpython(conn)
            conn.execute(SYSTEM_DDL)
            for ddl in app.schema:
                _create_schema(conn, app.name, ddl)
            compiled: dict[str, list[Any]] = {}
            for declared in statements:
                stmt = declared.statement
                if stmt.text not in compiled:
                    pg_text = info_of(stmt).postgres_text
                    compiled[stmt.text] = _infer(conn, declared.function, stmt, pg_text)
            if not in_database:
                return
            for stmt in (*SYSTEM_STATEMENTS, STAGE_TRACE):
                text = placeholder_forms(stmt.text.replace("{sys}", "apiary."))[0]
                compiled[stmt.text] = _infer(conn, "apiary", stmt, text)
            _store_code(conn, app, compiled, plans or {})
            _create_function(
                conn,
                system_stub_name(app.name),
                "version text, op text, payload text",
                _stub_body(app.name, "rt.system(op, payload)"),
                SYSTEM_STUB_SETTINGS,
            )
            done: set[str] = set()
            for unit in units:
                name = stub_name(app.name, unit)
                if name in done:
                    continue
                done.add(name)
                unit_json = json.dumps(unit.to_json(), sort_keys=True)
                body = _stub_body(app.name, f"rt.run_unit(SD, {unit_json!r}, request)")
                _create_function(conn, name, "version text, request text", body)
            _check_load(conn, app)
    except psycopg.errors.UndefinedFile as exc:  # plpython3.so missing on the server
        raise NotInstalledError(
            "PL/Python is not installed on the database server (Debian/Ubuntu: apt-get "
            f"install postgresql-plpython3-15): {exc}"
        ) from exc
    except psycopg.errors.InsufficientPrivilege as exc:
        raise NotInstalledError(
            "installing needs a superuser role: plpython3u is an untrusted language, so "
            "only a superuser may create functions in it (run install as one, or use "
            f"?placement=client): {exc.diag.message_primary or exc}"
        ) from exc


def _store_code(
    conn: psycopg.Connection[Any],
    app: AppInfo,
    compiled: dict[str, Any],
    plans: Mapping[str, CapturePlan],
) -> None:
    rows: list[tuple[str, str, str, str | None]] = [
        (module.__name__, "core", Path(str(module.__file__)).read_text(), None) for module in _CORE
    ]
    rows.append(("apiary._indb", "runtime", Path(str(_indb.__file__)).read_text(), None))
    for name in code_modules(app.modules):
        module = sys.modules[name]
        kind = "package" if hasattr(module, "__path__") else "module"
        # The module keeps its __file__ (code may compute paths from it; nothing is read).
        rows.append((name, kind, _module_source(name), getattr(module, "__file__", None)))
    rows.append(("statements", "statements", json.dumps(compiled), None))
    captures = {text: plan.to_json() for text, plan in plans.items()}
    rows.append(("captures", "captures", json.dumps(captures), None))
    for ordinal, (name, kind, source, path) in enumerate(rows):
        conn.execute(
            "INSERT INTO apiary.code (app, version, name, kind, ordinal, source, path) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (app, version, name) DO UPDATE "
            "SET kind = excluded.kind, ordinal = excluded.ordinal, source = excluded.source, "
            "path = excluded.path, installed_at = now()",
            (app.name, app.version, name, kind, ordinal, source, path),
        )


def _check_load(conn: psycopg.Connection[Any], app: AppInfo) -> None:
    """Load the runtime once in this backend, so that import errors surface at install."""
    from apiary._engines.pgwire import system_stub_name

    try:
        with conn.transaction():  # a savepoint: the install survives to report the error
            conn.execute(
                f'SELECT apiary."{system_stub_name(app.name)}"(%s, %s, %s)',
                (app.version, "ping", "[[], {}]"),
            )
    except psycopg.Error as exc:
        raise RegistrationError(
            f"app {app.name!r} does not load inside PostgreSQL (its server-side Python "
            "has only the standard library; functions that need other packages must use "
            f"?placement=client): {exc.diag.message_primary or exc}\n"
            f"{exc.diag.context or ''}"
        ) from exc
