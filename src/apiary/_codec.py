"""The JSON codec shared by every engine for arguments, outputs and recorded values.

Arguments and outputs are JSON values: ``None``, ``bool``, ``int``, ``float``, ``str``,
``list`` and ``dict`` with string keys. Tuples become lists. Because rows read from a
database often hold other types, these are carried too, tagged so that they decode to the
same Python type (a replayed output must equal the original, type included):

==========================  ===========================================
Python value                 JSON form
==========================  ===========================================
``decimal.Decimal``          ``{"$decimal": "12.50"}``
``datetime.datetime``        ``{"$datetime": "2026-01-02T03:04:05+00:00"}``
``datetime.date``            ``{"$date": "2026-01-02"}``
``datetime.time``            ``{"$time": "03:04:05"}``
``bytes`` / ``memoryview``   ``{"$bytes": "<base64>"}`` (decodes to ``bytes``)
``uuid.UUID``                ``{"$uuid": "..."}``
a dict whose only key        ``{"$dict": {...}}`` (so user data never reads as a tag)
starts with ``$``
==========================  ===========================================

NaN and infinities are refused: they are not JSON and PostgreSQL's ``jsonb`` rejects them.

This module imports only the standard library (it is part of the in-database runtime).
"""

from __future__ import annotations

import base64
import datetime
import decimal
import json
import math
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

_SCALARS = (str, int, float, bool, type(None))
#: Scalars that need no check (floats must be finite).
_PLAIN = frozenset({str, int, bool, type(None)})

_encoder = json.JSONEncoder(
    ensure_ascii=False, allow_nan=False, separators=(",", ":"), check_circular=False
)
_canonical_encoder = json.JSONEncoder(
    ensure_ascii=False, allow_nan=False, separators=(",", ":"), sort_keys=True
)


def _tag(value: Any) -> Any:
    """Turn a value into plain JSON data, tagging the extra types."""
    kind = type(value)
    if kind in _SCALARS:
        if kind is float and not math.isfinite(value):
            raise TypeError(f"{value!r} is not a JSON value")
        return value
    # Containers are the hot path (every request and answer): plain items are taken as
    # they are, without a call per item.
    if kind is list or kind is tuple:
        return [item if type(item) in _PLAIN else _tag(item) for item in value]
    if kind is dict:
        out = {}
        for key, item in value.items():
            if type(key) is not str:
                raise TypeError(f"dict key {key!r} is not a string; JSON objects need string keys")
            out[key] = item if type(item) in _PLAIN else _tag(item)
        if len(out) == 1 and next(iter(out)).startswith("$"):
            return {"$dict": out}
        return out
    # Subclasses of the scalars (IntEnum, StrEnum, numpy-free bool wrappers) become plain.
    for base in (bool, int, float, str):
        if isinstance(value, base):
            return _tag(base(value))
    if isinstance(value, decimal.Decimal):
        if not value.is_finite():
            raise TypeError(f"{value!r} is not a JSON value")
        return {"$decimal": str(value)}
    if isinstance(value, datetime.datetime):
        return {"$datetime": value.isoformat()}
    if isinstance(value, datetime.date):
        return {"$date": value.isoformat()}
    if isinstance(value, datetime.time):
        return {"$time": value.isoformat()}
    if isinstance(value, bytes | bytearray | memoryview):
        return {"$bytes": base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, uuid.UUID):
        return {"$uuid": str(value)}
    raise TypeError(f"a {kind.__name__} is not a JSON value")


_Clock = TypeVar("_Clock", datetime.datetime, datetime.time)


def _exact_offset(value: _Clock, text: str) -> _Clock:
    """``value`` parsed from ``text``, with a UTC offset's fraction of a second restored.

    ``fromisoformat`` (Python 3.11) drops the microseconds of an offset such as
    ``+00:00:00.000001``, which ``isoformat`` writes; such offsets are rare but valid.
    """
    if value.tzinfo is None:
        return value
    time_part = text.rpartition("T")[2]
    offset = time_part[max(time_part.rfind("+"), time_part.rfind("-")) :]
    if "." not in offset:
        return value
    hours, minutes, seconds = offset[1:].split(":")
    delta = datetime.timedelta(
        hours=int(hours),
        minutes=int(minutes),
        seconds=int(seconds[:2]),
        microseconds=int(seconds[3:].ljust(6, "0")),
    )
    return value.replace(tzinfo=datetime.timezone(-delta if offset[0] == "-" else delta))


_UNTAG: dict[str, Callable[[Any], Any]] = {
    "$decimal": decimal.Decimal,
    "$datetime": lambda text: _exact_offset(datetime.datetime.fromisoformat(text), text),
    "$date": datetime.date.fromisoformat,
    "$time": lambda text: _exact_offset(datetime.time.fromisoformat(text), text),
    "$bytes": lambda text: base64.b64decode(text.encode("ascii")),
    "$uuid": uuid.UUID,
}


def _untag(value: Any) -> Any:
    """Restore tagged values, outside in (a ``$dict`` escape shields what it holds)."""
    kind = type(value)
    if kind is list:
        return [_untag(item) for item in value]
    if kind is not dict:
        return value
    if len(value) == 1:
        key, inner = next(iter(value.items()))
        if key == "$dict":
            return {k: _untag(v) for k, v in inner.items()}
        untag = _UNTAG.get(key)
        if untag is not None:
            try:
                return untag(inner)
            except (TypeError, ValueError) as exc:
                raise ValueError(f"malformed {key} value {inner!r}") from exc
    return {k: _untag(v) for k, v in value.items()}


_decoder = json.JSONDecoder()


def dumps(value: Any) -> str:
    """Encode a value as compact JSON text. Raises ``TypeError`` for non-JSON values."""
    if type(value) in _SCALARS and type(value) is not float:
        return _encoder.encode(value)
    return _encoder.encode(_tag(value))


class _Tags:
    """A ``default`` hook for :mod:`json` that tags the extra types and counts them."""

    __slots__ = ("made",)

    def __init__(self) -> None:
        self.made = 0

    def tag(self, value: Any) -> Any:
        tagged = _tag(value)
        if type(tagged) is dict:
            self.made += 1
        return tagged


class _NeedsTags(Exception):
    """Raised by :data:`_plain_encoder` at a value that only a tag can carry."""


def _needs_tags(value: Any) -> Any:
    raise _NeedsTags


#: Encodes data holding only JSON's own types, in one pass of :mod:`json`'s C encoder.
_plain_encoder = json.JSONEncoder(
    ensure_ascii=False,
    allow_nan=False,
    separators=(",", ":"),
    check_circular=False,
    default=_needs_tags,
)


def dumps_rows(value: Any) -> str:
    """:func:`dumps` for data whose dicts have string keys (rows read from a database,
    traces): the same text, faster, as :mod:`json`'s C encoder walks the containers.

    The containers are not checked, so the text is checked instead: it must hold one
    ``"$`` per value tagged. Anything else (a ``$`` string or key that might need the
    ``$dict`` escape, a NaN) is encoded again by :func:`dumps`.
    """
    try:
        text = _plain_encoder.encode(value)
    except _NeedsTags:
        tags = _Tags()
        try:
            text = json.JSONEncoder(
                ensure_ascii=False,
                allow_nan=False,
                separators=(",", ":"),
                check_circular=False,
                default=tags.tag,
            ).encode(value)
        except (TypeError, ValueError):
            return dumps(value)  # raises the codec's own error
        if text.count('"$') != tags.made:
            return dumps(value)
        return text
    except ValueError:
        return dumps(value)  # a NaN or an infinity: raises the codec's own error
    if '"$' in text:
        return dumps(value)
    return text


def canonical_dumps(value: Any) -> str:
    """Encode with sorted keys, so equal values give equal text (used to compare inputs)."""
    return _canonical_encoder.encode(_tag(value))


def loads(text: str) -> Any:
    """Decode text made by :func:`dumps`, restoring the tagged types."""
    value = _decoder.decode(text)
    return _untag(value) if '"$' in text else value


def normalize(value: Any) -> Any:
    """Return ``value`` as it reads back after a round trip through the codec.

    Outputs are normalized before they are passed on, so that a function sees the same
    input whether its parent just ran or its recorded output was replayed.
    Raises ``TypeError`` naming the offending part if ``value`` is not a JSON value.
    """
    kind = type(value)
    if kind in _SCALARS and kind is not float:
        return value
    if kind is list and all(type(item) in _SCALARS and type(item) is not float for item in value):
        return value
    return loads(dumps(value))
