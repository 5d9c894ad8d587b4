"""Request schemas and argument checks for the HTTP frontend, derived from workflow signatures.

The frontend publishes a JSON Schema (2020-12, the dialect of OpenAPI 3.1) for the body of
``POST /v1/workflows/{name}`` and refuses a bad body with a 400 *before* any database work.
Both come from one parsed form of each parameter's annotation (a :class:`_Shape` tree), so
the published schema and the check cannot disagree:

=========================================  ==============================================
annotation                                  JSON Schema
=========================================  ==============================================
``int``, ``float``, ``bool``, ``str``       ``integer``, ``number``, ``boolean``, ``string``
``None``                                    ``null``
``list[X]``, ``Sequence[X]``,               array of X
``tuple[X, ...]``
``tuple[X, Y]``                             array with ``prefixItems`` (exactly two items)
``set[X]``, ``frozenset[X]``                array of X with ``uniqueItems``
``dict[str, X]``, ``Mapping[str, X]``       object with ``additionalProperties`` X
a ``TypedDict``                             object with its keys
``X | Y``, ``Optional[X]``, ``Union[...]``  ``anyOf``
``Literal[...]``, an ``Enum`` class         ``enum`` (the function receives the value)
``Any``, ``object``, no annotation          ``{}``: any JSON value
``Decimal``, ``datetime``, ``date``,        ``{}`` with a description: carried in the
``time``, ``bytes``, ``UUID``               codec's tagged form (``{"$decimal": "1.5"}``)
=========================================  ==============================================

The check is stricter than Python's ``isinstance`` where JSON and Python disagree: ``true``
is not an integer (``bool`` subclasses ``int``), an integer is a number (and is passed as a
``float`` to a ``float`` parameter), and numbers must be finite. Annotations written as
strings (``from __future__ import annotations``) are resolved in the workflow's module; one
that cannot be resolved accepts any JSON value.
"""

from __future__ import annotations

import inspect
import json
import math
import weakref
from typing import Any

from apiary._app import WorkflowDef
from apiary._errors import InvalidArgumentsError
from apiary._frontend.annotations import _resolve_annotations, _shape
from apiary._frontend.shapes import _describe, _Mismatch, _names

__all__ = ["check_arguments", "json_schema", "request_schema"]

# -- workflows -------------------------------------------------------------------------------


def _is_plain_json(value: Any) -> bool:
    """Whether ``value`` is JSON without the codec's tags (fit for a schema ``default``)."""
    if value is None or isinstance(value, str | int):
        return True
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, list | tuple):
        return all(_is_plain_json(item) for item in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _is_plain_json(v) for k, v in value.items())
    return False


class _Parameters:
    """A workflow's parameters parsed once: their shapes, the required ones, the defaults."""

    def __init__(self, workflow: WorkflowDef) -> None:
        self.workflow = workflow.name
        params = list(workflow.signature.parameters.values())
        hints = _resolve_annotations(workflow.fn, {p.name: p.annotation for p in params})
        self.shapes = {p.name: _shape(hints.get(p.name, p.annotation)) for p in params}
        self.required = [p.name for p in params if p.default is inspect.Parameter.empty]
        self.defaults = {
            p.name: json.loads(json.dumps(p.default))  # tuples become lists
            for p in params
            if p.default is not inspect.Parameter.empty and _is_plain_json(p.default)
        }

    def schema(self) -> dict[str, Any]:
        properties: dict[str, Any] = {}
        for name, shape in self.shapes.items():
            properties[name] = shape.schema()
            if name in self.defaults:
                properties[name]["default"] = self.defaults[name]
        schema: dict[str, Any] = {
            "type": "object",
            "title": f"{self.workflow} arguments",
            "properties": properties,
        }
        if self.required:
            schema["required"] = list(self.required)
        schema["additionalProperties"] = False
        return schema

    def check(self, body: Any) -> dict[str, Any]:
        where = f"workflow {self.workflow!r}"
        if not isinstance(body, dict):
            raise InvalidArgumentsError(
                f"{where}: the request body must be a JSON object of arguments, "
                f"got {_describe(body)}"
            )
        missing = [name for name in self.required if name not in body]
        unknown = [key for key in body if key not in self.shapes]
        if missing or unknown:
            problems = []
            if missing:
                problems.append(f"missing argument(s) {_names(missing)}")
            if unknown:
                problems.append(f"unknown argument(s) {_names(unknown)}")
            raise InvalidArgumentsError(
                f"{where}: {'; '.join(problems)}; it takes ({', '.join(self.shapes) or 'nothing'})"
            )
        arguments: dict[str, Any] = {}
        for name, value in body.items():
            try:
                arguments[name] = self.shapes[name].check(value, name)
            except _Mismatch as mismatch:
                raise InvalidArgumentsError(
                    f"{where}: argument {mismatch.path!r}: {mismatch.problem}"
                ) from None
            except RecursionError:
                raise InvalidArgumentsError(
                    f"{where}: argument {name!r} is nested too deeply"
                ) from None
        return arguments


# Parsed once per registered workflow (annotations are resolved by evaluating them, which is
# too slow for every request). Weak keys: a redeployed app's old workflows are let go.
_parsed: weakref.WeakKeyDictionary[WorkflowDef, _Parameters] = weakref.WeakKeyDictionary()


def _parameters(workflow: WorkflowDef) -> _Parameters:
    parsed = _parsed.get(workflow)
    if parsed is None:
        parsed = _parsed[workflow] = _Parameters(workflow)
    return parsed


def json_schema(annotation: Any) -> dict[str, Any]:
    """The JSON Schema (2020-12, as in OpenAPI 3.1) of values fit for a parameter annotation.

    ``inspect.Parameter.empty``, ``Any`` and ``object`` give ``{}`` (any JSON value); a
    string annotation, which cannot be resolved without its module, gives ``{}`` too, with a
    description. Types the codec carries tagged (``Decimal``, ``datetime``...) give ``{}``
    with a description of their tagged form.
    """
    return _shape(annotation).schema()


def request_schema(workflow: WorkflowDef) -> dict[str, Any]:
    """The JSON Schema of a request body that runs ``workflow``: an object of its arguments.

    Parameters without a default are ``required``; a default that is plain JSON is given
    as the property's ``default``; other keys are refused (``additionalProperties: false``).
    """
    return _parameters(workflow).schema()


def check_arguments(workflow: WorkflowDef, body: Any) -> dict[str, Any]:
    """Check a decoded JSON request body against ``workflow``'s signature.

    Returns the arguments by name, a ``float`` for each integer given to a ``float``
    parameter; defaults are not filled in (the runtime does that).

    Raises:
        InvalidArgumentsError: the body is not an object; an argument is missing or
            unknown; or a value does not fit its annotation. The message names the
            workflow, the argument (with a path such as ``items[2].price``), what was
            expected and what came.
    """
    return _parameters(workflow).check(body)
