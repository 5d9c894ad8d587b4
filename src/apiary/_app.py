"""The programming model: ``App`` and its ``function``, ``step`` and ``workflow`` decorators.

Registration happens when a decorator runs: signatures are checked, raw SQL passed to
``ctx`` is refused and workflow bodies are traced into DAGs. The statements each function
uses are found (and the function classified read-only or writing) the first time the app is
used by a ``Runtime`` or ``explain``, so statements may be declared anywhere in the module.
"""

from __future__ import annotations

import hashlib
import inspect
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar, overload

from apiary import _graph
from apiary._database import Statement
from apiary._discovery import check_no_raw_sql, find_statements
from apiary._errors import RegistrationError
from apiary._sql import info_of

F = TypeVar("F", bound=Callable[..., Any])

#: How a function run on every partition (``combine=``) may merge its results.
COMBINERS = ("concat", "sum", "min", "max", "any", "all")


class CallableDef:
    """A registered function or step: callable from a workflow body (which records a node)
    and directly (which runs the Python function, e.g. in a unit test with a context)."""

    is_step = False

    def __init__(self, app: App, fn: Callable[..., Any], kind: str) -> None:
        if not callable(fn):
            raise RegistrationError(f"@app.{kind} decorates a function, not {fn!r}")
        self.app = app
        self.fn = fn
        self.name: str = getattr(fn, "__name__", "")
        if not self.name.isidentifier():
            raise RegistrationError(f"@app.{kind}: {fn!r} has no usable name")
        self.__doc__ = fn.__doc__
        self.__wrapped__ = fn
        signature = inspect.signature(fn)
        params = list(signature.parameters.values())
        if not params or params[0].kind not in (
            inspect.Parameter.POSITIONAL_ONLY,
            inspect.Parameter.POSITIONAL_OR_KEYWORD,
        ):
            raise RegistrationError(
                f"{kind} {self.name!r}: its first parameter must be the context "
                f"(def {self.name}(ctx, ...))"
            )
        for param in params[1:]:
            if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
                raise RegistrationError(
                    f"{kind} {self.name!r}: *args and **kwargs parameters are not supported; "
                    "name each argument"
                )
            if param.kind is param.POSITIONAL_ONLY:
                raise RegistrationError(
                    f"{kind} {self.name!r}: positional-only parameter {param.name!r} is not "
                    "supported; arguments are passed by name"
                )
        self.signature = signature
        #: The signature a workflow body calls it with: without the context.
        self.call_signature = signature.replace(parameters=params[1:])
        self.params = [p.name for p in params[1:]]

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        tracer = _graph.current_tracer()
        if tracer is not None:
            return tracer.call(self, args, kwargs)
        return self.fn(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<apiary {'step' if self.is_step else 'function'} {self.name}>"


class FunctionDef(CallableDef):
    """A transactional function: runs as (part of) one ACID transaction in the database."""

    def __init__(
        self,
        app: App,
        fn: Callable[..., Any],
        partition: str | None,
        combine: str | Callable[[list[Any]], Any] | None = None,
    ) -> None:
        super().__init__(app, fn, "function")
        if partition is not None and partition not in self.params:
            raise RegistrationError(
                f"function {self.name!r}: partition={partition!r} is not one of its "
                f"parameters {self.params}"
            )
        if combine is not None:
            if partition is not None:
                raise RegistrationError(
                    f"function {self.name!r}: partition= and combine= exclude each other "
                    "(a function runs on the partition of its key, or on every partition "
                    "with its results combined)"
                )
            if not callable(combine) and combine not in COMBINERS:
                raise RegistrationError(
                    f"function {self.name!r}: combine={combine!r} is not one of "
                    f"{', '.join(COMBINERS)} nor a callable taking the list of results"
                )
        self.partition = partition
        self.combine = combine
        check_no_raw_sql(fn, f"function {self.name!r}")
        self._statements: list[Statement] | None = None

    @property
    def statements(self) -> list[Statement]:
        """The statements this function uses, found in its code (computed once)."""
        if self._statements is None:
            found, creates = find_statements(self.fn, self.app.is_registered)
            if creates:
                raise RegistrationError(
                    f"function {self.name!r} calls apiary.sql() in its body; statements "
                    "are static: declare them at module level and reference them by name"
                )
            for stmt in found:
                info_of(stmt)
            self._statements = found
        return self._statements

    @property
    def read_only(self) -> bool:
        """Whether no statement of the function writes."""
        return not any(info_of(s).writes for s in self.statements)

    @property
    def statement_texts(self) -> frozenset[str]:
        """The texts of its statements: what its context lets it run."""
        return frozenset(s.text for s in self.statements)


class StepDef(CallableDef):
    """A step: a non-transactional call run by the scheduler; it must be idempotent."""

    is_step = True

    def __init__(self, app: App, fn: Callable[..., Any]) -> None:
        super().__init__(app, fn, "step")
        self.is_async = inspect.iscoroutinefunction(fn)


class WorkflowDef:
    """A registered workflow: a static DAG traced from its body."""

    def __init__(self, app: App, fn: Callable[..., Any]) -> None:
        self.app = app
        self.fn = fn
        self.name: str = getattr(fn, "__name__", "")
        self.__doc__ = fn.__doc__
        self.__wrapped__ = fn
        self.signature = inspect.signature(fn)
        self.graph = _graph.trace(self.name, fn, app)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if _graph.current_tracer() is not None:
            raise RegistrationError(
                f"workflow {self.name!r} is called from another workflow body; workflows "
                "do not nest (call its functions instead)"
            )
        raise TypeError(
            f"workflow {self.name!r} runs through a Runtime: rt.run({self.name!r}, ...)"
        )

    def __repr__(self) -> str:
        return f"<apiary workflow {self.name}>"


@dataclass(frozen=True)
class AppInfo:
    """What an engine needs to install an app."""

    name: str
    schema: tuple[str, ...]
    version: str
    modules: tuple[str, ...]
    #: ``(table, column)`` for partitioned tables, ``(table, None)`` for replicated ones.
    partitioning: tuple[tuple[str, str | None], ...] = ()


class App:
    """An application: a schema, transactional functions, steps and workflows.

    >>> app = App("hotel")
    >>> app.schema("CREATE TABLE IF NOT EXISTS rooms (id INTEGER PRIMARY KEY, free INTEGER)")
    """

    def __init__(self, name: str) -> None:
        if not isinstance(name, str) or not name.replace("-", "_").isidentifier():
            raise RegistrationError(
                f"App name {name!r} must be an identifier (letters, digits, '_' or '-')"
            )
        self.name = name
        self.schemas: list[str] = []
        self.functions: dict[str, FunctionDef] = {}
        self.steps: dict[str, StepDef] = {}
        self.workflows: dict[str, WorkflowDef] = {}
        #: Table name to its partition column, or ``None`` for a replicated table.
        self.partitioning: dict[str, str | None] = {}

    def partition(self, table: str, *, by: str) -> None:
        """Declare ``table`` partitioned by column ``by``: on a cluster each row lives
        only on the partition that owns its ``by`` value (``docs/SCALING.md``)."""
        self._declare(table, by)

    def replicate(self, table: str) -> None:
        """Declare ``table`` replicated: every partition of a cluster holds all of it.
        Functions may only read it (a write would have to reach every partition)."""
        self._declare(table, None)

    def _declare(self, table: str, column: str | None) -> None:
        for name, what in ((table, "table"), (column, "column")):
            if name is not None and (not isinstance(name, str) or not name.isidentifier()):
                raise RegistrationError(
                    f"app {self.name!r}: {what} name {name!r} is not an identifier"
                )
        if table in self.partitioning and self.partitioning[table] != column:
            raise RegistrationError(
                f"app {self.name!r}: table {table!r} is already declared "
                + (
                    f"partitioned by {self.partitioning[table]!r}"
                    if self.partitioning[table]
                    else "replicated"
                )
            )
        self.partitioning[table] = column

    @property
    def partitioned(self) -> bool:
        """Whether the app declares how its tables spread over a cluster."""
        return bool(self.partitioning)

    def schema(self, ddl: str) -> None:
        """Add DDL run by ``install`` (use ``CREATE TABLE IF NOT EXISTS``; portable SQL)."""
        if not isinstance(ddl, str) or not ddl.strip():
            raise RegistrationError(f"app {self.name!r}: schema() takes non-empty SQL text")
        self.schemas.append(ddl)

    def _claim(self, name: str) -> None:
        if name in self.functions or name in self.steps or name in self.workflows:
            raise RegistrationError(
                f"app {self.name!r}: the name {name!r} is registered twice; names of "
                "functions, steps and workflows are unique in an app"
            )

    @overload
    def function(
        self,
        fn: F,
        /,
        *,
        partition: str | None = None,
        combine: str | Callable[[list[Any]], Any] | None = None,
    ) -> F: ...

    @overload
    def function(
        self,
        fn: None = None,
        /,
        *,
        partition: str | None = None,
        combine: str | Callable[[list[Any]], Any] | None = None,
    ) -> Callable[[F], F]: ...

    def function(
        self,
        fn: Callable[..., Any] | None = None,
        /,
        *,
        partition: str | None = None,
        combine: str | Callable[[list[Any]], Any] | None = None,
    ) -> Any:
        """Register a transactional function: ``def f(ctx: TxContext, ...) -> JSON value``.

        Each call runs as one serializable ACID transaction (or inside its group's).
        ``partition`` names the argument whose value locates the data it touches: on a
        cluster the function runs on the partition that owns that value. A read-only
        function without one may run on every partition; ``combine`` says how its
        results merge: ``"concat"`` (lists), ``"sum"``, ``"min"``, ``"max"``, ``"any"``,
        ``"all"``, or a callable taking the list of results (``docs/SCALING.md``).
        """

        def register(f: Callable[..., Any]) -> Any:
            defn = FunctionDef(self, f, partition, combine)
            self._claim(defn.name)
            self.functions[defn.name] = defn
            return defn

        return register if fn is None else register(fn)

    def step(self, fn: F, /) -> F:
        """Register a step: ``def s(ctx: StepContext, ...)``, run outside the database.

        Steps call the outside world; they must be idempotent (use
        ``ctx.idempotency_key``). Their outputs are always recorded.
        """
        defn = StepDef(self, fn)
        self._claim(defn.name)
        self.steps[defn.name] = defn
        return defn  # type: ignore[return-value]

    def workflow(self, fn: F, /) -> F:
        """Register a workflow: its body is traced now, on placeholders, into a DAG."""
        name = getattr(fn, "__name__", "")
        self._claim(name)
        defn = WorkflowDef(self, fn)
        self.workflows[defn.name] = defn
        return defn  # type: ignore[return-value]

    def is_registered(self, obj: Any) -> bool:
        """Whether ``obj`` is a function of this app (discovery does not descend into it)."""
        return any(obj is d.fn for d in self.functions.values())

    def callables(self) -> dict[str, Callable[..., Any]]:
        """Name to Python function, for every function and step."""
        found = {name: d.fn for name, d in self.functions.items()}
        found.update({name: d.fn for name, d in self.steps.items()})
        return found

    def modules(self) -> tuple[str, ...]:
        """The modules that define the app's functions, steps and workflows."""
        names: list[str] = []
        defs: list[CallableDef | WorkflowDef] = [
            *self.functions.values(),
            *self.steps.values(),
            *self.workflows.values(),
        ]
        for defn in defs:
            module = getattr(defn.fn, "__module__", None)
            if module and module not in names:
                names.append(module)
        return tuple(names)

    def info(self) -> AppInfo:
        """Name, schema, version and modules, for installing the app."""
        return AppInfo(
            self.name,
            tuple(self.schemas),
            self.version(),
            self.modules(),
            tuple(sorted(self.partitioning.items())),
        )

    def version(self) -> str:
        """A digest of the app's code: changes when any of its modules' source changes."""
        digest = hashlib.sha256(self.name.encode())
        for module_name in self.modules():
            module = sys.modules.get(module_name)
            try:
                digest.update(inspect.getsource(module).encode())  # type: ignore[arg-type]
            except (OSError, TypeError):
                for defn in [*self.functions.values(), *self.steps.values()]:
                    code = getattr(defn.fn, "__code__", None)
                    if code is not None:
                        digest.update(code.co_code)
        for ddl in self.schemas:
            digest.update(ddl.encode())
        if self.partitioning:
            digest.update(repr(sorted(self.partitioning.items())).encode())
        return digest.hexdigest()[:16]

    def __repr__(self) -> str:
        return f"<apiary App {self.name}: {len(self.workflows)} workflows>"
