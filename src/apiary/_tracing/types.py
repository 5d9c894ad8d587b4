"""Typing app columns in the trace store, and converting captured values to those types.

See :mod:`apiary._tracing.store` for the mapping from declared SQL types to DuckDB types.
"""

from __future__ import annotations

import datetime
import decimal
import json
import re
import uuid
from collections.abc import Callable
from typing import Any

# -- types --------------------------------------------------------------------------

_TYPES = {
    name: kind
    for kind, names in {
        "BIGINT": "INT,INTEGER,BIGINT,SMALLINT,TINYINT,MEDIUMINT,INT2,INT4,INT8,SERIAL,"
        "BIGSERIAL,SMALLSERIAL,SERIAL2,SERIAL4,SERIAL8,HUGEINT,UBIGINT,UNSIGNED BIG INT",
        "DOUBLE": "REAL,DOUBLE,DOUBLE PRECISION,FLOAT,FLOAT4,FLOAT8",
        "BLOB": "BLOB,BYTEA,VARBINARY,BINARY",
        "BOOLEAN": "BOOLEAN,BOOL",
        "DATE": "DATE",
        "TIME": "TIME,TIME WITHOUT TIME ZONE",
        "TIMESTAMP": "TIMESTAMP,DATETIME,TIMESTAMP WITHOUT TIME ZONE",
        "TIMESTAMPTZ": "TIMESTAMPTZ,TIMESTAMP WITH TIME ZONE",
        "UUID": "UUID",
    }.items()
    for name in names.split(",")
}
_PARAMS = re.compile(r"\(\s*(\d+)\s*(?:,\s*(\d+)\s*)?\)")


def duckdb_type(declared: str) -> str:
    """The DuckDB type that stores values of a column declared as ``declared``."""
    text = declared.strip().upper()
    if "[" in text or "<" in text:
        return "VARCHAR"  # arrays: kept as text
    base = " ".join(_PARAMS.sub(" ", text).split())
    if base in ("DECIMAL", "NUMERIC", "DEC"):
        params = _PARAMS.search(text)
        if params is None:
            return "DOUBLE"
        precision, scale = int(params.group(1)), int(params.group(2) or 0)
        if 1 <= precision <= 38 and scale <= precision:
            return f"DECIMAL({precision},{scale})"
        return "DOUBLE"
    return _TYPES.get(base, "VARCHAR")


class _Unfit(Exception):
    """A value that does not fit its column's DuckDB type."""


_INT64 = (-(2**63), 2**63 - 1)
_DECIMALS = decimal.Context(prec=100, rounding=decimal.ROUND_HALF_UP)
_UTC = datetime.UTC


def _to_bigint(value: Any) -> int:
    if type(value) is int and _INT64[0] <= value <= _INT64[1]:
        return value
    try:
        number = int(value)  # "42", 42.0, Decimal("42"), True
    except (ValueError, TypeError, OverflowError):
        raise _Unfit from None
    if not isinstance(value, str) and number != value:
        raise _Unfit  # 1.5 in an INTEGER column
    if not _INT64[0] <= number <= _INT64[1]:
        raise _Unfit
    return number


def _to_double(value: Any) -> float:
    if type(value) is float:
        return value
    if isinstance(value, int | str | decimal.Decimal):
        try:
            return float(value)
        except (ValueError, OverflowError):
            raise _Unfit from None
    raise _Unfit


def _to_decimal(precision: int, scale: int) -> Callable[[Any], str]:
    exponent = decimal.Decimal(1).scaleb(-scale)

    def convert(value: Any) -> str:
        if isinstance(value, bool) or not isinstance(value, int | float | str | decimal.Decimal):
            raise _Unfit
        try:
            number = decimal.Decimal(repr(value) if isinstance(value, float) else value)
            exact = number.quantize(exponent, context=_DECIMALS)
        except (decimal.InvalidOperation, ValueError):
            raise _Unfit from None
        if not exact.is_finite() or (exact and exact.adjusted() >= precision - scale):
            raise _Unfit
        return str(exact)  # DuckDB casts the text exactly

    return convert


def _to_varchar(value: Any) -> str:
    if type(value) is str:
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float | decimal.Decimal | uuid.UUID | str):
        return str(value)
    if isinstance(value, datetime.date | datetime.time):
        return value.isoformat()
    if isinstance(value, list | dict):  # JSON and array columns (psycopg decodes them)
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)
    raise _Unfit  # bytes: kept in "unconverted"


def _to_blob(value: Any) -> bytes:
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    raise _Unfit


_TRUE = frozenset({"t", "true", "1", "yes", "y", "on"})
_FALSE = frozenset({"f", "false", "0", "no", "n", "off"})


def _to_boolean(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)  # SQLite stores booleans as 0 and 1
    if isinstance(value, str):
        text = value.strip().lower()
        if text in _TRUE or text in _FALSE:
            return text in _TRUE
    raise _Unfit


def _parse(kind: Any, value: str) -> Any:
    try:
        return kind.fromisoformat(value.strip())
    except ValueError:
        raise _Unfit from None


def _to_date(value: Any) -> datetime.date:
    if type(value) is datetime.date:
        return value
    if isinstance(value, str):
        return _parse(datetime.date, value)  # type: ignore[no-any-return]
    raise _Unfit


def _to_time(value: Any) -> datetime.time:
    found = _parse(datetime.time, value) if isinstance(value, str) else value
    if type(found) is datetime.time and found.tzinfo is None:
        return found
    raise _Unfit


def _moment(value: Any) -> datetime.datetime:
    if isinstance(value, str):
        value = _parse(datetime.datetime, value)
    if isinstance(value, datetime.datetime):
        return value
    if isinstance(value, datetime.date):
        return datetime.datetime.combine(value, datetime.time())
    raise _Unfit


def _to_timestamp(value: Any) -> datetime.datetime:
    moment = _moment(value)
    if moment.tzinfo is not None:
        moment = moment.astimezone(_UTC).replace(tzinfo=None)
    return moment


def _to_timestamptz(value: Any) -> datetime.datetime:
    moment = _moment(value)
    return moment.replace(tzinfo=_UTC) if moment.tzinfo is None else moment


def _to_uuid(value: Any) -> str:
    try:
        return str(value if isinstance(value, uuid.UUID) else uuid.UUID(str(value)))
    except ValueError:
        raise _Unfit from None


_CONVERTERS: dict[str, Callable[[Any], Any]] = {
    "BIGINT": _to_bigint,
    "DOUBLE": _to_double,
    "VARCHAR": _to_varchar,
    "BLOB": _to_blob,
    "BOOLEAN": _to_boolean,
    "DATE": _to_date,
    "TIME": _to_time,
    "TIMESTAMP": _to_timestamp,
    "TIMESTAMPTZ": _to_timestamptz,
    "UUID": _to_uuid,
}


def _converter(kind: str) -> Callable[[Any], Any]:
    if kind.startswith("DECIMAL"):
        params = _PARAMS.search(kind)
        assert params is not None, kind
        return _to_decimal(int(params.group(1)), int(params.group(2) or 0))
    return _CONVERTERS[kind]
