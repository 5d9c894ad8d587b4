"""Tracing a workflow body into a static DAG, once, at registration.

The body runs on placeholders: each parameter is a :class:`Param`, and calling a function
or step returns a :class:`Future` naming a new node. Placeholders refuse every use that
would need a real value (``if fut:``, arithmetic, iteration, ``str()``, attributes), so
any data-dependent control flow is caught here rather than misbehaving at run time.
``with apiary.transaction():`` marks the calls made inside it as one transaction group.
"""

from __future__ import annotations

import contextlib
import contextvars
import inspect
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NoReturn

from apiary import _codec
from apiary._errors import RegistrationError

if TYPE_CHECKING:
    from apiary._app import CallableDef

#: Workflow parameter names that would clash with ``Runtime.run``'s own keywords.
RESERVED_PARAMETERS = frozenset({"workflow_id"})


@dataclass
class Node:
    """One call in a workflow: a function (in a unit) or a step."""

    id: str
    function: str
    step: bool
    args: dict[str, list[Any]]
    parents: list[str]
    group: int | None


@dataclass
class WorkflowGraph:
    """A traced workflow: parameters, nodes in call order, groups and output template."""

    name: str
    params: list[str]
    nodes: list[Node]
    groups: dict[int, list[str]] = field(default_factory=dict)
    output: list[Any] = field(default_factory=lambda: ["c", None])


class _Tracer:
    def __init__(self, workflow: str, app: object) -> None:
        self.workflow = workflow
        self.app = app
        self.nodes: list[Node] = []
        self.counts: dict[str, int] = {}
        self.group: int | None = None
        self.groups: dict[int, list[str]] = {}
        self.refusal: RegistrationError | None = None

    def fail(self, problem: str) -> NoReturn:
        error = RegistrationError(f"workflow {self.workflow!r}: {problem}")
        # Remembered, so that a body that catches the refusal is still refused.
        if self.refusal is None:
            self.refusal = error
        raise error

    def template(self, value: Any, where: str) -> list[Any]:
        if isinstance(value, Future):
            if value._tracer is not self:
                self.fail(f"{where} is a future of another workflow")
            return ["n", value._node]
        if isinstance(value, Param):
            return ["p", value._name]
        if isinstance(value, list | tuple):
            items = [self.template(v, where) for v in value]
            if all(item[0] == "c" for item in items):
                return ["c", [item[1] for item in items]]
            return ["l", items]
        if isinstance(value, dict):
            if not all(isinstance(k, str) for k in value):
                self.fail(f"{where} is a dict with non-string keys; JSON objects need string keys")
            entries = {k: self.template(v, where) for k, v in value.items()}
            if all(item[0] == "c" for item in entries.values()):
                return ["c", {k: item[1] for k, item in entries.items()}]
            return ["d", entries]
        try:
            return ["c", _codec.normalize(value)]
        except TypeError as exc:
            self.fail(f"{where} is not a JSON value, a parameter or a call's output: {exc}")

    def call(self, defn: CallableDef, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Future:
        what = f"call of {'step' if defn.is_step else 'function'} {defn.name!r}"
        if defn.app is not self.app:
            self.fail(f"{what}: it is registered on another App")
        try:
            bound = defn.call_signature.bind(*args, **kwargs)
        except TypeError as exc:
            self.fail(f"{what}: {exc}")
        if defn.is_step and self.group is not None:
            self.fail(
                f"{what}: a transaction group may not contain a step (steps are external "
                "calls and cannot roll back); call it after the 'with apiary.transaction()' block"
            )
        count = self.counts.get(defn.name, 0) + 1
        self.counts[defn.name] = count
        node_id = defn.name if count == 1 else f"{defn.name}#{count}"
        templates = {
            name: self.template(value, f"{what}: argument {name!r}")
            for name, value in bound.arguments.items()
        }
        parents: list[str] = []
        for tpl in templates.values():
            for parent in _nodes_of(tpl):
                if parent not in parents:
                    parents.append(parent)
        self.nodes.append(Node(node_id, defn.name, defn.is_step, templates, parents, self.group))
        if self.group is not None:
            self.groups[self.group].append(node_id)
        return Future(self, node_id, defn.name)


def _nodes_of(template: Sequence[Any]) -> Iterator[str]:
    tag = template[0]
    if tag == "n":
        yield template[1]
    elif tag == "l":
        for item in template[1]:
            yield from _nodes_of(item)
    elif tag == "d":
        for item in template[1].values():
            yield from _nodes_of(item)


_current: contextvars.ContextVar[_Tracer | None] = contextvars.ContextVar(
    "apiary_workflow_tracer", default=None
)


def current_tracer() -> _Tracer | None:
    """The tracer of the workflow body being registered, if any."""
    return _current.get()


@contextlib.contextmanager
def transaction() -> Iterator[None]:
    """Group the calls made inside the block into one ACID transaction.

    Use it in a ``@app.workflow`` body only. The group must be connected (each call
    linked to another through outputs) and contain no step.
    """
    tracer = _current.get()
    if tracer is None:
        raise RegistrationError(
            "apiary.transaction() groups calls inside a @app.workflow body; it has no "
            "meaning elsewhere"
        )
    if tracer.group is not None:
        tracer.fail("apiary.transaction() blocks cannot be nested")
    group = len(tracer.groups) + 1
    tracer.groups[group] = []
    tracer.group = group
    try:
        yield
    finally:
        tracer.group = None
    if not tracer.groups[group]:
        tracer.fail(f"transaction group {group} contains no call")


class _Placeholder:
    """Base of values that stand for data only known at run time."""

    __slots__ = ()

    def _misuse(self, what: str) -> NoReturn:
        raise NotImplementedError

    def __bool__(self) -> bool:
        self._misuse("used as a condition (if/while/and/or/not)")

    def __iter__(self) -> Iterator[Any]:
        self._misuse("iterated or unpacked")

    def __len__(self) -> int:
        self._misuse("passed to len()")

    def __contains__(self, item: Any) -> bool:
        self._misuse("used with 'in'")

    def __getitem__(self, key: Any) -> Any:
        self._misuse("indexed")

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        self._misuse(f"used for its attribute {name!r}")

    def __eq__(self, other: object) -> bool:
        self._misuse("compared with ==")

    def __ne__(self, other: object) -> bool:
        self._misuse("compared with !=")

    __hash__ = object.__hash__

    def __lt__(self, other: Any) -> bool:
        self._misuse("compared with <")

    __le__ = __gt__ = __ge__ = __lt__

    def __str__(self) -> str:
        self._misuse("converted to a string")

    def __format__(self, spec: str) -> str:
        self._misuse("formatted into a string")

    def __int__(self) -> int:
        self._misuse("converted to int")

    def __float__(self) -> float:
        self._misuse("converted to float")

    def __index__(self) -> int:
        self._misuse("used as an index")

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self._misuse("called")

    def _arith(self, *other: Any) -> Any:
        self._misuse("used in arithmetic or an operator")

    __add__ = __radd__ = __sub__ = __rsub__ = __mul__ = __rmul__ = _arith
    __truediv__ = __rtruediv__ = __floordiv__ = __rfloordiv__ = __mod__ = __rmod__ = _arith
    __pow__ = __rpow__ = __and__ = __rand__ = __or__ = __ror__ = __xor__ = __rxor__ = _arith
    __neg__ = __pos__ = __abs__ = __invert__ = __lshift__ = __rshift__ = _arith


class Future(_Placeholder):
    """The output of a call in a workflow body; only known when the workflow runs.

    Pass it as an argument to later calls or return it. Any other use is refused.
    """

    __slots__ = ("_function", "_node", "_tracer")
    _tracer: _Tracer
    _node: str
    _function: str

    def __init__(self, tracer: _Tracer, node: str, function: str) -> None:
        object.__setattr__(self, "_tracer", tracer)
        object.__setattr__(self, "_node", node)
        object.__setattr__(self, "_function", function)

    def _misuse(self, what: str) -> NoReturn:
        self._tracer.fail(
            f"the output of {self._function!r} (a future) is {what}; a workflow is a static "
            "DAG, so decisions on outputs must happen inside a function that receives them"
        )

    def __repr__(self) -> str:
        return f"<future of {self._node}>"


class Param(_Placeholder):
    """A workflow parameter while the body is traced."""

    __slots__ = ("_name", "_tracer")
    _tracer: _Tracer
    _name: str

    def __init__(self, tracer: _Tracer, name: str) -> None:
        object.__setattr__(self, "_tracer", tracer)
        object.__setattr__(self, "_name", name)

    def _misuse(self, what: str) -> NoReturn:
        self._tracer.fail(
            f"parameter {self._name!r} is {what}; the body runs once at registration on "
            "placeholders, so computations on parameters must happen inside a function"
        )

    def __repr__(self) -> str:
        return f"<parameter {self._name}>"


def workflow_parameters(name: str, fn: Callable[..., Any]) -> list[str]:
    """The parameter names of a workflow function, refusing unsupported kinds."""
    params: list[str] = []
    for param in inspect.signature(fn).parameters.values():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            raise RegistrationError(
                f"workflow {name!r}: *args and **kwargs parameters are not supported; "
                "name each argument"
            )
        if param.kind is param.POSITIONAL_ONLY:
            raise RegistrationError(
                f"workflow {name!r}: positional-only parameter {param.name!r} is not supported; "
                "arguments are passed by name"
            )
        if param.name in RESERVED_PARAMETERS:
            raise RegistrationError(
                f"workflow {name!r}: parameter name {param.name!r} is reserved "
                "(Runtime.run takes it to name the workflow run)"
            )
        params.append(param.name)
    return params


def trace(name: str, fn: Callable[..., Any], app: object) -> WorkflowGraph:
    """Run a workflow body on placeholders and return its DAG (validated)."""
    params = workflow_parameters(name, fn)
    tracer = _Tracer(name, app)
    token = _current.set(tracer)
    try:
        result = fn(**{p: Param(tracer, p) for p in params})
        output = tracer.template(result, "the return value")
    except RegistrationError:
        raise
    except Exception as exc:
        raise RegistrationError(
            f"workflow {name!r}: its body failed while being traced on placeholders: "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    finally:
        _current.reset(token)
    if tracer.refusal is not None:
        raise tracer.refusal
    graph = WorkflowGraph(name, params, tracer.nodes, tracer.groups, output)
    _check_groups(graph, tracer)
    return graph


def _check_groups(graph: WorkflowGraph, tracer: _Tracer) -> None:
    """Each group must be connected, and collapsing groups must not create a cycle."""
    by_id = {node.id: node for node in graph.nodes}
    for group, members in graph.groups.items():
        member_set = set(members)
        neighbours: dict[str, set[str]] = {m: set() for m in members}
        for m in members:
            for parent in by_id[m].parents:
                if parent in member_set:
                    neighbours[m].add(parent)
                    neighbours[parent].add(m)
        reached = {members[0]}
        frontier = [members[0]]
        while frontier:
            for nxt in neighbours[frontier.pop()] - reached:
                reached.add(nxt)
                frontier.append(nxt)
        if reached != member_set:
            cut = [by_id[m].function for m in members if m not in reached]
            tracer.fail(
                f"transaction group {group} is not connected: {', '.join(cut)} share no "
                f"output with {by_id[members[0]].function!r}; a group must be a connected "
                "subgraph (split it into separate transactions)"
            )
        # A call outside the group that reads a member and feeds another member would
        # have to run in the middle of the group's transaction.
        outside_from_group: set[str] = set()
        for node in graph.nodes:
            if node.group == group:
                if any(p in outside_from_group for p in node.parents):
                    tracer.fail(
                        f"transaction group {group}: {node.function!r} depends on a call "
                        "outside the group that itself depends on the group; move that "
                        "call into the group or out of its path"
                    )
                continue
            if any(p in member_set or p in outside_from_group for p in node.parents):
                outside_from_group.add(node.id)
