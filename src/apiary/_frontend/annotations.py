"""From a parameter's annotation to its :class:`~apiary._frontend.shapes._Shape`.

:func:`_shape` parses an annotation (JSON's types and their ``typing`` forms, unions,
``Literal``, enums, ``TypedDict``, the codec's types) into the shape tree of
:mod:`apiary._frontend.shapes`; :func:`_resolve_annotations` evaluates annotations
written as strings where their owner was defined.
"""

from __future__ import annotations

import collections.abc
import contextlib
import enum
import inspect
import types
import typing
from typing import Any

from apiary._frontend.shapes import (
    _BOOLEAN,
    _INTEGER,
    _NULL,
    _NUMBER,
    _STRING,
    _TAGGED,
    _Any,
    _Array,
    _Enum,
    _Object,
    _Record,
    _Shape,
    _Tuple,
    _Union,
)

_SEQUENCES = {
    list,
    collections.abc.Sequence,
    collections.abc.MutableSequence,
    collections.abc.Collection,
    collections.abc.Iterable,
}
_SETS = {set, frozenset, collections.abc.Set, collections.abc.MutableSet}
_MAPPINGS = {dict, collections.abc.Mapping, collections.abc.MutableMapping}
_JSON_SCALARS = (type(None), bool, int, float, str)


def _shape(annotation: Any, records: frozenset[type] = frozenset()) -> _Shape:
    """Parse an annotation. ``records`` holds the TypedDicts being parsed (recursion guard)."""
    if annotation is inspect.Parameter.empty or annotation is Any or annotation is object:
        return _Any()
    if annotation is None or annotation is type(None):
        return _NULL
    if isinstance(annotation, str | typing.ForwardRef):
        text = annotation if isinstance(annotation, str) else annotation.__forward_arg__
        return _Any(f"annotation {text!r} could not be resolved; any JSON value is accepted")
    if isinstance(annotation, typing.TypeVar):
        if annotation.__bound__ is not None:
            return _shape(annotation.__bound__, records)
        if annotation.__constraints__:
            return _union([_shape(c, records) for c in annotation.__constraints__])
        return _Any()
    if isinstance(annotation, typing.NewType):
        return _shape(annotation.__supertype__, records)
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Annotated, typing.Required, typing.NotRequired):
        return _shape(args[0], records)
    if origin is typing.Union or origin is types.UnionType:
        return _union([_shape(arg, records) for arg in args])
    if origin is typing.Literal:
        return _Enum([arg.value if isinstance(arg, enum.Enum) else arg for arg in args])
    if origin in _SEQUENCES:
        return _Array(_shape(args[0], records) if args else _Any())
    if origin is tuple or annotation is tuple:
        if annotation is tuple or annotation is typing.Tuple:  # noqa: UP006 (unparameterized)
            return _Array(_Any())
        if len(args) == 2 and args[1] is Ellipsis:
            return _Array(_shape(args[0], records))
        return _Tuple([_shape(arg, records) for arg in args])
    if origin in _SETS:
        return _Array(_shape(args[0], records) if args else _Any(), unique=True)
    if origin in _MAPPINGS:
        # JSON object keys are strings whatever the key annotation says.
        return _Object(_shape(args[1], records) if len(args) == 2 else _Any())
    if typing.is_typeddict(annotation):
        return _record(annotation, records)
    if not isinstance(annotation, type):
        return _Any(f"{annotation!r} is not a JSON type; any JSON value is accepted")
    return _class_shape(annotation)


def _class_shape(cls: type) -> _Shape:
    if cls in _SEQUENCES:
        return _Array(_Any())
    if cls in _SETS:
        return _Array(_Any(), unique=True)
    if cls in _MAPPINGS:
        return _Object(_Any())
    if issubclass(cls, enum.Enum):
        values = [member.value for member in cls]
        if all(isinstance(v, _JSON_SCALARS) for v in values):
            return _Enum(values)
        return _Any(f"{cls.__qualname__} has values that are not JSON; any JSON value is accepted")
    for kind, name, example in _TAGGED:
        if issubclass(cls, kind):
            return _Any(
                f"a {name}: not a JSON type; sent in the codec's tagged form, e.g. {example} "
                "(not checked before the call)"
            )
    # bool before int: bool subclasses int. Subclasses of the scalars arrive as the scalar.
    for kind, shape in ((bool, _BOOLEAN), (int, _INTEGER), (float, _NUMBER), (str, _STRING)):
        if issubclass(cls, kind):
            return shape
    return _Any(f"{cls.__qualname__} is not a JSON type; any JSON value is accepted")


def _union(options: list[_Shape]) -> _Shape:
    anything = [shape for shape in options if isinstance(shape, _Any)]
    if anything:
        # `Decimal | None` accepts any JSON value; keep what the description says of it.
        return min(anything, key=lambda shape: shape.description is not None)
    return options[0] if len(options) == 1 else _Union(options)


def _record(cls: Any, records: frozenset[type]) -> _Shape:
    name: str = cls.__qualname__
    if cls in records:
        return _Any(f"a recursive reference to {name}: not checked")
    hints = _resolve_annotations(cls, dict(cls.__annotations__), extras=True)
    fields: dict[str, _Shape] = {}
    required: list[str] = []
    for key, hint in hints.items():
        fields[key] = _shape(hint, records | {cls})
        # Python 3.11 counts a NotRequired[...] written as a string (PEP 563) as required.
        origin = typing.get_origin(hint)
        if origin is typing.Required or (
            origin is not typing.NotRequired and key in cls.__required_keys__
        ):
            required.append(key)
    return _Record(name, fields, required)


def _resolve_annotations(
    owner: Any, annotations: dict[str, Any], *, extras: bool = False
) -> dict[str, Any]:
    """``annotations`` with strings evaluated where ``owner`` was defined.

    ``typing.get_type_hints`` fails as a whole on one bad name; then each string is
    resolved alone, and those that still fail stay strings (parsed as any JSON value).
    """
    try:
        return typing.get_type_hints(owner, include_extras=extras)
    except Exception:  # NameError, SyntaxError, TypeError...: whatever evaluating raises
        pass
    module = inspect.getmodule(owner)
    namespace: dict[str, Any] = getattr(inspect.unwrap(owner), "__globals__", None) or (
        vars(module) if module is not None else {}
    )
    resolved: dict[str, Any] = {}
    for name, written in annotations.items():
        text = written.__forward_arg__ if isinstance(written, typing.ForwardRef) else written
        resolved[name] = text
        if isinstance(text, str):
            holder = types.SimpleNamespace(__annotations__={name: text})
            with contextlib.suppress(Exception):  # as above; then it stays a string
                resolved[name] = typing.get_type_hints(
                    holder, globalns=namespace, include_extras=extras
                )[name]
    return resolved
