"""The in-database runtime: what runs inside PostgreSQL, in PL/Python.

The PostgreSQL engine stores the execution core's source (``_errors``, ``_codec``,
``_database``, ``_capture``, ``_bookkeeping``, ``_units``, ``_execution``), this
module's, the app's modules and the compiled statements in table ``apiary.code``. The
first call of any unit stub in a backend loads them (``boot``) and caches the result in
PL/Python's ``GD``; every later call runs the unit at once. A new app version is loaded
on the next call that names it, without restarting the server.

Only the standard library is used: this is the server's own Python (run as the
``postgres`` user), which has none of the application's packages. The app's modules see
a small ``apiary`` module (:func:`make_shim`) whose decorators only collect functions: the
registrar already ran on the client and compiled its results into the unit stubs.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import json
import sys
import types
from collections.abc import Callable, Iterator, Sequence
from typing import Any

#: The execution core, loaded in this order (each imports only the previous ones).
CORE_MODULES = (
    "apiary._errors",
    "apiary._codec",
    "apiary._database",
    "apiary._capture",
    "apiary._bookkeeping",
    "apiary._units",
    "apiary._execution",
)

#: SQLSTATEs the stubs raise. Class ``AP`` is not used by PostgreSQL itself.
FUNCTION_ERROR_STATE = "AP001"
WORKFLOW_CONFLICT_STATE = "AP002"
NOT_INSTALLED_STATE = "AP003"
VERSION_MISMATCH_STATE = "AP004"
STATUS_ROW_EXISTS_STATE = "AP005"
SERIALIZATION_FAILURE_STATE = "40001"
_CONFLICT_STATES = frozenset({"40001", "40P01"})
#: SQLSTATE classes that are the server's trouble, not the application's: connection
#: exceptions, insufficient resources, operator intervention, system errors. A unit that
#: meets one fails as unavailable (safe to retry), never as the function's error.
UNAVAILABLE_CLASSES = ("08", "53", "57", "58")

#: Bookkeeping functions of the core that the system stub may run.
SYSTEM_OPS = (
    "begin_workflow",
    "end_workflow",
    "lookup_output",
    "record_once",
    "get_workflow",
    "list_pending",
    "output_workflows",
    "finished_before",
    "forget_outputs",
    "new_client_id",
)


class DataError(ValueError):
    """A parameter PostgreSQL cannot take: a string with a NUL character.

    PL/Python passes a ``text`` parameter as a C string, so it would silently store only
    what comes before the first NUL. psycopg (``placement=client``) refuses such a string
    with a ``DataError`` and this message; here it is refused the same way, so a function
    fails alike in both placements instead of writing a truncated value.
    """


_NUL_MESSAGE = "PostgreSQL text fields cannot contain NUL (0x00) bytes"


class PlpyDatabase:
    """The execution core's adapter over PL/Python's SPI (``plpy``)."""

    __slots__ = ("_conflict", "_plans", "_plpy", "_spi_error", "_statements", "_unavailable")

    def __init__(
        self,
        plpy: Any,
        statements: dict[str, Sequence[Any]],
        conflict: type[BaseException],
        unavailable: type[Exception],
    ) -> None:
        self._plpy = plpy
        self._statements = statements
        self._plans: dict[str, Any] = {}
        self._spi_error = plpy.SPIError
        self._conflict = conflict
        self._unavailable = unavailable

    def _plan(self, text: str) -> Any:
        entry = self._statements.get(text)
        if entry is None:
            raise RuntimeError(f"statement {text!r} was not compiled at install; install again")
        # plpy.prepare plans live as long as the backend; one per statement.
        plan = self._plpy.prepare(entry[0], list(entry[1]))
        self._plans[text] = plan
        return plan

    def _run(self, stmt: Any, params: Sequence[Any]) -> Any:
        plan = self._plans.get(stmt.text) or self._plan(stmt.text)
        for param in params:
            if type(param) is str and "\x00" in param:
                raise DataError(_NUL_MESSAGE)
        try:
            return self._plpy.execute(plan, list(params))
        except self._spi_error as exc:
            state = getattr(exc, "sqlstate", None) or ""
            if state in _CONFLICT_STATES:
                raise self._conflict(str(exc)) from exc
            if state.startswith(UNAVAILABLE_CLASSES):
                error = self._unavailable(str(exc))
                error.sqlstate = state  # type: ignore[attr-defined]
                raise error from exc
            raise

    def query(self, stmt: Any, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        """Run a statement and return its rows as tuples (columns in order)."""
        result = self._run(stmt, params)
        return [tuple(row.values()) for row in result]

    def execute(self, stmt: Any, params: Sequence[Any]) -> int:
        """Run a statement and return the number of rows it processed."""
        return int(self._run(stmt, params).nrows())


def make_shim(errors: types.ModuleType, execution: types.ModuleType, shim: types.ModuleType) -> Any:
    """Fill in the ``apiary`` module the app's code imports inside the database."""
    shim.__doc__ = "Apiary inside PostgreSQL: decorators collect functions for unit stubs."
    registry: dict[str, Any] = {}

    class App:
        def __init__(self, name: str) -> None:
            self.name = name
            self.functions: dict[str, Callable[..., Any]] = {}
            registry[name] = self

        def schema(self, ddl: str) -> None:
            """Schemas are installed from the client; nothing to do here."""

        def partition(self, table: str, *, by: str) -> None:
            """Partitioning is routed and checked from the client; nothing to do here."""

        def replicate(self, table: str) -> None:
            """Partitioning is routed and checked from the client; nothing to do here."""

        def function(
            self, fn: Any = None, /, *, partition: str | None = None, combine: Any = None
        ) -> Any:
            def register(f: Callable[..., Any]) -> Callable[..., Any]:
                self.functions[f.__name__] = f
                return f

            return register if fn is None else register(fn)

        def step(self, fn: Callable[..., Any]) -> Callable[..., Any]:
            return fn

        def workflow(self, fn: Callable[..., Any]) -> Callable[..., Any]:
            return fn

    @contextlib.contextmanager
    def transaction() -> Iterator[None]:
        yield

    shim.App = App  # type: ignore[attr-defined]
    shim.sql = execution.Statement  # type: ignore[attr-defined]
    shim.transaction = transaction  # type: ignore[attr-defined]
    shim._registry = registry  # type: ignore[attr-defined]
    for name in ("Statement", "TxContext", "StepContext"):
        setattr(shim, name, getattr(execution, name))
    for name in dir(errors):
        if name.endswith("Error"):
            setattr(shim, name, getattr(errors, name))
    shim._errors = errors  # type: ignore[attr-defined]
    shim._execution = execution  # type: ignore[attr-defined]
    return shim


class CodeFinder:
    """Imports the modules stored in ``apiary.code`` (core, app modules) by name.

    With an import hook, the app's modules may import each other in any order, as they do
    outside the database.
    """

    apiary_code_finder = True

    def __init__(self, sources: dict[str, str], packages: set[str], paths: dict[str, str]) -> None:
        self.sources = sources
        self.packages = packages
        self.paths = paths

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        """A spec for a stored module, or ``None`` to let other finders look."""
        if name not in self.sources:
            return None
        return importlib.util.spec_from_loader(
            name,
            self,  # type: ignore[arg-type]
            origin=f"<apiary.code:{name}>",
            is_package=name in self.packages,
        )

    def create_module(self, spec: Any) -> None:
        """Use the default module object."""
        return None

    def exec_module(self, module: types.ModuleType) -> None:
        """Run the stored source in the module."""
        name = module.__name__
        origin = self.paths.get(name) or f"<apiary.code:{name}>"
        module.__file__ = origin
        exec(compile(self.sources[name], origin, "exec"), module.__dict__)


def _install_finder(sources: dict[str, str], packages: set[str], paths: dict[str, str]) -> None:
    for name in [*sources, "apiary"]:
        sys.modules.pop(name, None)  # an older version's copy
    sys.meta_path[:] = [f for f in sys.meta_path if not getattr(f, "apiary_code_finder", False)]
    sys.meta_path.insert(0, CodeFinder(sources, packages, paths))
    # Dotted app modules (pkg.mod) need their parent packages; stored or not.
    for name in sources:
        parts = name.split(".")
        for depth in range(1, len(parts)):
            parent = ".".join(parts[:depth])
            if parent not in sources and parent not in sys.modules and parent != "apiary":
                package = types.ModuleType(parent)
                package.__path__ = []
                sys.modules[parent] = package


class InDatabaseRuntime:
    """An app version loaded in one backend: runs its unit stubs and system calls."""

    def __init__(self, plpy: Any, app: str, version: str, rows: Sequence[Any]) -> None:
        self.app = app
        self.version = version
        self.plpy = plpy
        kinds = {row["name"]: row["kind"] for row in rows}
        sources = {row["name"]: row["source"] for row in rows}
        code = {n: s for n, s in sources.items() if kinds[n] in ("core", "module", "package")}
        packages = {n for n, kind in kinds.items() if kind == "package"}
        paths = {row["name"]: row["path"] for row in rows if row["path"]}
        _install_finder(code, packages, paths)
        # The shim package must exist before its submodules (the core) are imported.
        package = types.ModuleType("apiary")
        package.__path__ = []
        sys.modules["apiary"] = package
        errors, codec, _, capture, bookkeeping, units, execution = (
            importlib.import_module(name) for name in CORE_MODULES
        )
        shim = make_shim(errors, execution, package)
        for name, kind in kinds.items():
            if kind in ("module", "package"):
                importlib.import_module(name)
        app_object = shim._registry.get(app)
        if app_object is None:
            raise RuntimeError(f"the app's modules define no apiary.App({app!r})")
        self.errors = errors
        self.codec = codec
        self.execution = execution
        self.units = units
        self.bookkeeping = bookkeeping
        self.functions = app_object.functions
        statements = json.loads(sources["statements"])
        self.db = PlpyDatabase(
            plpy, statements, execution.TransactionConflict, errors.DatabaseUnavailableError
        )
        captures = json.loads(sources.get("captures") or "{}")
        self.plans = capture.plans_from_json(captures) if captures else None

    def _fail(self, exc: BaseException) -> None:
        plpy = self.plpy
        errors = self.errors
        if isinstance(exc, self.execution.TransactionConflict):
            plpy.error(
                f"apiary: serialization conflict: {exc}", sqlstate=SERIALIZATION_FAILURE_STATE
            )
        if isinstance(exc, errors.FunctionError):
            plpy.error(str(exc), detail=json.dumps(exc.to_json()), sqlstate=FUNCTION_ERROR_STATE)
        if isinstance(exc, errors.WorkflowConflictError):
            plpy.error(str(exc), sqlstate=WORKFLOW_CONFLICT_STATE)
        if isinstance(exc, self.bookkeeping.StatusRowExists):
            plpy.error(str(exc), sqlstate=STATUS_ROW_EXISTS_STATE)
        if isinstance(exc, self.bookkeeping.VersionMismatch):
            plpy.error(str(exc), detail=exc.version, sqlstate=VERSION_MISMATCH_STATE)
        if isinstance(exc, errors.DatabaseUnavailableError):
            plpy.error(str(exc), sqlstate=getattr(exc, "sqlstate", "53000"))

    def run_unit(self, cache: dict[str, Any], unit_json: str, request_text: str) -> str:
        """Run the unit a stub compiled in; return its outcome as JSON text."""
        execution = self.execution
        unit = cache.get("unit")
        if unit is None or cache.get("version") != self.version:
            unit = cache["unit"] = self.units.UnitSpec.from_json(json.loads(unit_json))
            cache["version"] = self.version
        data = self.codec.loads(request_text)
        request = self.units.UnitRequest(
            data.get("w"),
            data.get("p") or {},
            data.get("i"),
            data.get("s"),
            data.get("c"),
            bool(data.get("t")),
            data.get("h", True),
            bool(data.get("x")),
        )
        try:
            outcome = execution.run_unit(self.db, unit, self.functions, request, self.plans)
        except BaseException as exc:
            self._fail(exc)
            raise
        answer = {
            "o": outcome.outputs,
            "f": self.bookkeeping.encode_record(outcome.finished),
            "n": outcome.created,
        }
        if outcome.trace is not None:
            # A read-only unit's trace, staged by the client: the document follows the
            # answer after a newline (neither JSON text holds one), so that it is neither
            # escaped here nor unescaped there.
            workflow_id, invocation_id, document, created = outcome.trace
            answer["t"] = [workflow_id, invocation_id, None, created]
            return f"{self.codec.dumps(answer)}\n{document}"
        return self.codec.dumps(answer)  # type: ignore[no-any-return]

    def system(self, op: str, payload: str) -> str:
        """Run one bookkeeping function of the core; arguments and result as JSON text."""
        if op == "ping":  # loading the runtime was the point
            return "null"
        if op not in SYSTEM_OPS:
            raise ValueError(f"unknown system operation {op!r}")
        args, kwargs = self.codec.loads(payload)
        try:
            result = getattr(self.bookkeeping, op)(self.db, *args, **kwargs)
        except BaseException as exc:
            self._fail(exc)
            raise
        return self.codec.dumps(self.bookkeeping.encode_result(result))  # type: ignore[no-any-return]


def boot(plpy: Any, app: str, version: str) -> InDatabaseRuntime:
    """Load an app version from ``apiary.code`` (called by a stub on a backend's first call)."""
    plan = plpy.prepare(
        "SELECT name, kind, source, path FROM apiary.code WHERE app = $1 AND version = $2 "
        "ORDER BY ordinal",
        ["text", "text"],
    )
    rows = plpy.execute(plan, [app, version])
    if not rows:
        plpy.error(
            f"apiary: version {version} of app {app!r} is not installed in this database; "
            "run install",
            sqlstate=NOT_INSTALLED_STATE,
        )
    return InDatabaseRuntime(plpy, app, version, rows)
