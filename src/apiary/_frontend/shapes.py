"""Parsed forms of parameter annotations for the HTTP frontend's request checks.

A :class:`_Shape` tree, one per annotation, gives both the JSON Schema of the values a
parameter takes and the check of a value against it, so the two cannot disagree. The
annotations understood, and how strictly JSON is checked, are listed in
:mod:`apiary._frontend.schema`, which builds request schemas and checks from them;
:mod:`apiary._frontend.annotations` turns annotations into shapes.
"""

from __future__ import annotations

import datetime
import decimal
import json
import math
import uuid
from typing import Any

from apiary._codec import canonical_dumps

# -- annotation shapes ---------------------------------------------------------------------


class _Mismatch(Exception):
    """A value does not fit its shape; ``path`` locates it inside the argument."""

    def __init__(self, path: str, problem: str, *, inside: bool = False) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = path
        self.problem = problem
        #: The value was of the right kind (an object, an array) but its content is wrong.
        self.inside = inside


def _short(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _describe(value: Any) -> str:
    """What a value is, for 'got ...' in messages (bounded: bodies may be large)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"a boolean ({'true' if value else 'false'})"
    if isinstance(value, int):
        # str() of an int over 4,300 digits raises (sys.set_int_max_str_digits).
        return f"an integer ({_short(str(value))})" if value.bit_length() < 1000 else "an integer"
    if isinstance(value, float):
        return f"a number ({value!r})"
    if isinstance(value, str):
        return f"a string ({_short(json.dumps(value[:60], ensure_ascii=False))})"
    if isinstance(value, list | tuple):
        return f"an array of {len(value)} item{'' if len(value) == 1 else 's'}"
    if isinstance(value, dict):
        return "an object"
    return f"a value of type {type(value).__name__}"


def _expected(path: str, expected: str, value: Any) -> _Mismatch:
    return _Mismatch(path, f"expected {expected}, got {_describe(value)}")


def _key_path(path: str, key: str) -> str:
    return f"{path}.{key}" if key.isidentifier() else f"{path}[{json.dumps(key)}]"


class _Shape:
    """A parsed annotation: its JSON Schema and the check of a decoded JSON value."""

    #: How a fitting value is described in messages ("an integer").
    expected = "a JSON value"

    def schema(self) -> dict[str, Any]:
        """A fresh JSON Schema (callers may change it)."""
        raise NotImplementedError

    def check(self, value: Any, path: str) -> Any:
        """Return the value as the function receives it, or raise :class:`_Mismatch`."""
        raise NotImplementedError


# The codec carries these non-JSON types, tagged (see apiary._codec); most specific first.
_TAGGED: tuple[tuple[type, str, str], ...] = (
    (decimal.Decimal, "decimal.Decimal", '{"$decimal": "12.50"}'),
    (datetime.datetime, "datetime.datetime", '{"$datetime": "2026-01-02T03:04:05+00:00"}'),
    (datetime.date, "datetime.date", '{"$date": "2026-01-02"}'),
    (datetime.time, "datetime.time", '{"$time": "03:04:05"}'),
    (bytes, "bytes", '{"$bytes": "<base64>"}'),
    (bytearray, "bytes", '{"$bytes": "<base64>"}'),
    (memoryview, "bytes", '{"$bytes": "<base64>"}'),
    (uuid.UUID, "uuid.UUID", '{"$uuid": "..."}'),
)
_CODEC_TYPES = tuple(kind for kind, _, _ in _TAGGED)


def _check_json(value: Any, path: str) -> None:
    """Refuse what the codec cannot carry: non-finite numbers, non-string keys, objects."""
    if value is None or isinstance(value, str | int):  # bool is an int
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise _expected(path, "a JSON value (numbers are finite)", value)
        return
    if isinstance(value, list | tuple):
        for index, item in enumerate(value):
            _check_json(item, f"{path}[{index}]")
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise _Mismatch(
                    path, f"object keys must be strings, got key {_short(repr(key))}", inside=True
                )
            _check_json(item, _key_path(path, key))
        return
    if isinstance(value, decimal.Decimal) and not value.is_finite():
        raise _expected(path, "a JSON value (numbers are finite)", value)
    # A frontend that decodes bodies with the codec hands over the tagged types restored.
    if not isinstance(value, _CODEC_TYPES):
        raise _expected(path, "a JSON value", value)


class _Any(_Shape):
    def __init__(self, description: str | None = None) -> None:
        self.description = description

    def schema(self) -> dict[str, Any]:
        return {} if self.description is None else {"description": self.description}

    def check(self, value: Any, path: str) -> Any:
        _check_json(value, path)
        return value


class _Scalar(_Shape):
    def __init__(self, json_type: str, expected: str, accepts: type | tuple[type, ...]) -> None:
        self.json_type = json_type
        self.expected = expected
        self.accepts = accepts

    def schema(self) -> dict[str, Any]:
        return {"type": self.json_type}

    def check(self, value: Any, path: str) -> Any:
        if not isinstance(value, self.accepts):
            raise _expected(path, self.expected, value)
        return value


class _Integer(_Scalar):
    def check(self, value: Any, path: str) -> Any:
        # JSON true is not 1, although Python's bool is an int.
        if not isinstance(value, int) or isinstance(value, bool):
            raise _expected(path, self.expected, value)
        return value


class _Number(_Scalar):
    def check(self, value: Any, path: str) -> Any:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _expected(path, self.expected, value)
        try:
            number = float(value)
        except OverflowError:
            raise _Mismatch(
                path,
                f"expected a number within a float's range, got {_describe(value)}",
                inside=True,
            ) from None
        if not math.isfinite(number):
            raise _Mismatch(path, f"expected a finite number, got {_describe(value)}", inside=True)
        return number


_NULL = _Scalar("null", "null", type(None))
_BOOLEAN = _Scalar("boolean", "a boolean", bool)
_STRING = _Scalar("string", "a string", str)
_INTEGER = _Integer("integer", "an integer", int)
_NUMBER = _Number("number", "a number", float)


class _Array(_Shape):
    def __init__(self, item: _Shape, *, unique: bool = False) -> None:
        self.item = item
        self.unique = unique
        self.expected = "an array of unique items" if unique else "an array"

    def schema(self) -> dict[str, Any]:
        schema: dict[str, Any] = {"type": "array"}
        items = self.item.schema()
        if items:
            schema["items"] = items
        if self.unique:
            schema["uniqueItems"] = True
        return schema

    def check(self, value: Any, path: str) -> Any:
        if not isinstance(value, list | tuple):
            raise _expected(path, self.expected, value)
        items = [self.item.check(item, f"{path}[{index}]") for index, item in enumerate(value)]
        if self.unique:
            # Compared after conversion and as JSON: [1, 1.0] for set[float] holds a duplicate.
            seen: dict[str, int] = {}
            for index, item in enumerate(items):
                first = seen.setdefault(canonical_dumps(item), index)
                if first != index:
                    raise _Mismatch(f"{path}[{index}]", f"duplicate of item {first}")
        return items


class _Tuple(_Shape):
    def __init__(self, items: list[_Shape]) -> None:
        self.items = items
        count = len(items)
        self.expected = f"an array of {count} item{'' if count == 1 else 's'}"

    def schema(self) -> dict[str, Any]:
        schema: dict[str, Any] = {"type": "array"}
        if self.items:
            schema["prefixItems"] = [item.schema() for item in self.items]
        schema["minItems"] = schema["maxItems"] = len(self.items)
        return schema

    def check(self, value: Any, path: str) -> Any:
        if not isinstance(value, list | tuple) or len(value) != len(self.items):
            raise _expected(path, self.expected, value)
        return [
            shape.check(item, f"{path}[{index}]")
            for index, (shape, item) in enumerate(zip(self.items, value, strict=True))
        ]


class _Object(_Shape):
    expected = "an object"

    def __init__(self, value: _Shape) -> None:
        self.value = value

    def schema(self) -> dict[str, Any]:
        schema: dict[str, Any] = {"type": "object"}
        values = self.value.schema()
        if values:
            schema["additionalProperties"] = values
        return schema

    def check(self, value: Any, path: str) -> Any:
        if not isinstance(value, dict):
            raise _expected(path, self.expected, value)
        checked: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise _Mismatch(
                    path,
                    f"object keys must be strings, got key {_short(repr(key))}",
                    inside=True,
                )
            checked[key] = self.value.check(item, _key_path(path, key))
        return checked


class _Record(_Shape):
    """A ``TypedDict``: an object with known keys, some of them required."""

    def __init__(self, name: str, fields: dict[str, _Shape], required: list[str]) -> None:
        self.name = name
        self.fields = fields
        self.required = required
        self.expected = f"an object ({name})"

    def schema(self) -> dict[str, Any]:
        schema: dict[str, Any] = {
            "type": "object",
            "title": self.name,
            "properties": {key: shape.schema() for key, shape in self.fields.items()},
        }
        if self.required:
            schema["required"] = list(self.required)
        schema["additionalProperties"] = False
        return schema

    def check(self, value: Any, path: str) -> Any:
        if not isinstance(value, dict):
            raise _expected(path, self.expected, value)
        missing = [key for key in self.required if key not in value]
        if missing:
            raise _Mismatch(path, f"{self.name} is missing key(s) {_names(missing)}", inside=True)
        checked: dict[str, Any] = {}
        for key, item in value.items():
            shape = self.fields.get(key)
            if shape is None:
                raise _Mismatch(
                    path,
                    f"{self.name} has no key {_short(repr(key))} "
                    f"(its keys: {', '.join(self.fields)})",
                    inside=True,
                )
            checked[key] = shape.check(item, _key_path(path, key))
        return checked


def _json_kind(value: Any) -> str:
    # bool before int: Python's True == 1, JSON's true is not 1 (but 1 is 1.0).
    for kind, name in ((bool, "boolean"), (int | float, "number"), (str, "string")):
        if isinstance(value, kind):
            return name
    return "null" if value is None else "other"


def _same_json(a: Any, b: Any) -> bool:
    """Equality for ``enum``: JSON Schema's, except that an integer is not matched by a
    float (``2.0`` is refused for ``Literal[2]``, as it is for ``int``)."""
    if isinstance(a, int) and not isinstance(a, bool) and isinstance(b, float):
        return False
    return _json_kind(a) == _json_kind(b) and a == b


class _Enum(_Shape):
    def __init__(self, values: list[Any]) -> None:
        self.values = values
        self.expected = "one of " + _short(", ".join(json.dumps(v) for v in values), 200)

    def schema(self) -> dict[str, Any]:
        return {"enum": list(self.values)}

    def check(self, value: Any, path: str) -> Any:
        for allowed in self.values:
            if _same_json(allowed, value):
                return allowed
        raise _expected(path, self.expected, value)


class _Union(_Shape):
    def __init__(self, options: list[_Shape]) -> None:
        self.options = options
        # An integer fits both int and float: try float last, so `float | int` keeps 3 an int.
        self.tried = sorted(options, key=lambda shape: isinstance(shape, _Number))
        self.expected = _alternatives([shape.expected for shape in options])

    def schema(self) -> dict[str, Any]:
        return {"anyOf": [shape.schema() for shape in self.options]}

    def check(self, value: Any, path: str) -> Any:
        deeper: list[_Mismatch] = []
        for shape in self.tried:
            try:
                return shape.check(value, path)
            except _Mismatch as mismatch:
                if mismatch.path != path or mismatch.inside:
                    deeper.append(mismatch)
        # One option took the value's kind and failed inside it (`list[int] | None` given
        # [1, "a"]): its error says more than the list of alternatives does.
        if len(deeper) == 1:
            raise deeper[0]
        raise _expected(path, self.expected, value)


def _alternatives(items: list[str]) -> str:
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} or {items[-1]}"


def _names(names: list[str]) -> str:
    return ", ".join(_short(repr(name)) for name in names)
