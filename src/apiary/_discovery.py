"""Finding the statements a function uses, from its code, at registration.

A function's statements are the :class:`~apiary.Statement` objects its code references by
name: module globals, attributes of modules or classes it names (``queries.AVAILABLE``),
closure variables, default arguments, containers of statements it names, and the same,
transitively, in plain helper functions it calls. Statements are never discovered at call
time, so a function's read/write classification is fixed when it is registered; the
execution core refuses any statement outside this set.

Also here: the check that refuses raw SQL strings passed to ``ctx``, read from the
function's source with :mod:`ast` where the source is available.
"""

from __future__ import annotations

import ast
import inspect
import textwrap
import types
from collections.abc import Callable, Iterator
from typing import Any

from apiary._database import Statement
from apiary._errors import RegistrationError

_CTX_METHODS = frozenset({"query", "query_one", "execute"})


def _code_objects(code: types.CodeType) -> Iterator[types.CodeType]:
    yield code
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            yield from _code_objects(const)


def _module_has_statements(module_globals: dict[str, Any], cache: dict[int, bool]) -> bool:
    key = id(module_globals)
    if key not in cache:
        cache[key] = any(type(v) is Statement for v in list(module_globals.values()))
    return cache[key]


class _Finder:
    """Walks functions and the objects they name, collecting statements."""

    def __init__(self, root: Callable[..., Any], is_registered: Callable[[Any], bool]) -> None:
        self.root = root
        self.is_registered = is_registered
        self.found: dict[str, Statement] = {}
        self.seen: set[int] = set()
        self.module_cache: dict[int, bool] = {}
        self.creates_statements = False

    def add_value(self, value: Any, names: frozenset[str], depth: int = 0) -> None:
        if type(value) is Statement:
            self.found.setdefault(value.text, value)
        elif isinstance(value, types.FunctionType):
            self.add_function(value)
        elif isinstance(value, staticmethod | classmethod | types.MethodType):
            self.add_value(value.__func__, names, depth)
        elif isinstance(value, types.ModuleType | type) and depth == 0:
            namespace = vars(value)
            for name in names & namespace.keys():
                self.add_value(namespace[name], names, depth + 1)
        elif isinstance(value, dict) and depth < 2:
            for item in list(value.values()):
                if type(item) is Statement:
                    self.add_value(item, names, depth + 1)
        elif isinstance(value, list | tuple | frozenset | set) and depth < 2:
            for item in list(value):
                if type(item) is Statement:
                    self.add_value(item, names, depth + 1)

    def add_function(self, fn: types.FunctionType) -> None:
        if id(fn) in self.seen or (fn is not self.root and self.is_registered(fn)):
            return
        self.seen.add(id(fn))
        fn_globals = fn.__globals__
        if fn is not self.root and not _module_has_statements(fn_globals, self.module_cache):
            return  # a library helper: nothing of ours to find there
        names: set[str] = set()
        for code in _code_objects(fn.__code__):
            names.update(code.co_names)
        frozen = frozenset(names)
        if "sql" in frozen:
            self._check_runtime_declaration(fn_globals, frozen)
        for name in frozen:
            if name in fn_globals:
                self.add_value(fn_globals[name], frozen)
        for cell in fn.__closure__ or ():
            try:
                self.add_value(cell.cell_contents, frozen)
            except ValueError:  # an empty cell
                continue
        for default in (fn.__defaults__ or ()) + tuple((fn.__kwdefaults__ or {}).values()):
            self.add_value(default, frozen)

    def _check_runtime_declaration(self, fn_globals: dict[str, Any], names: frozenset[str]) -> None:
        from apiary import _sql

        for name in names:
            value = fn_globals.get(name)
            if value is _sql.sql or (
                isinstance(value, types.ModuleType) and getattr(value, "sql", None) is _sql.sql
            ):
                self.creates_statements = True


def find_statements(
    fn: Callable[..., Any], is_registered: Callable[[Any], bool]
) -> tuple[list[Statement], bool]:
    """The statements ``fn`` references; and whether it calls ``apiary.sql`` itself."""
    finder = _Finder(fn, is_registered)
    if isinstance(fn, types.FunctionType):
        finder.add_function(fn)
    return list(finder.found.values()), finder.creates_statements


def check_no_raw_sql(fn: Callable[..., Any], what: str) -> None:
    """Refuse ``ctx.query("SELECT ...")`` and friends, found in the function's source."""
    try:
        source = textwrap.dedent(inspect.getsource(fn))
        tree = ast.parse(source)
    except (OSError, TypeError, SyntaxError):
        return  # no source (REPL, exec); the context still refuses strings at run time
    params = list(inspect.signature(fn).parameters)
    if not params:
        return
    ctx_name = params[0]
    fn_globals = getattr(fn, "__globals__", {})
    for node in ast.walk(tree):
        if not (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in _CTX_METHODS
            and isinstance(node.func.value, ast.Name)
            and node.func.value.id == ctx_name
            and node.args
        ):
            continue
        first = node.args[0]
        raw = isinstance(first, ast.JoinedStr) or (
            isinstance(first, ast.Constant) and isinstance(first.value, str)
        )
        if isinstance(first, ast.Name) and isinstance(fn_globals.get(first.id), str):
            raw = True
        if raw:
            raise RegistrationError(
                f"{what}: passes a raw SQL string to {ctx_name}.{node.func.attr}() "
                f"(line {node.lineno} of its source); declare the statement at module level "
                "with apiary.sql(...) and pass that"
            )
