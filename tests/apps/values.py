"""An app that passes values of every kind through recorded units, a step and a replay."""

from __future__ import annotations

import datetime
import decimal
import uuid
from typing import Any

import apiary
from tests.apps import die_if_asked

app = apiary.App("values")
app.schema("CREATE TABLE IF NOT EXISTS emitted (workflow_id TEXT, fn TEXT NOT NULL, tag TEXT);")

LOG = apiary.sql("INSERT INTO emitted (workflow_id, fn, tag) VALUES (?, ?, ?)")
COUNTS = apiary.sql("SELECT fn, count(*) FROM emitted WHERE tag = ? GROUP BY fn ORDER BY fn")

#: ``(idempotency key, value)`` for every execution of :func:`look` (called twice per run).
SEEN: list[tuple[str | None, Any]] = []

#: Every JSON type, nested, with the corners a codec may get wrong.
JSON_PAYLOAD: dict[str, Any] = {
    "null": None,
    "true": True,
    "false": False,
    "zero": 0,
    "int": -7,
    "big": 2**62 + 1,
    "float": 1.5,
    "whole_float": 2.0,
    "small": -0.000123,
    "empty_str": "",
    "text": 'quotes " \\ backslash, newline\n, tab\t, unicode \u00e9\u4e2d\U0001f41d',
    "empty_list": [],
    "empty_dict": {},
    "list": [1, "two", 3.25, None, True, [False, {"deep": [[]]}]],
    "dict": {"a": {"b": {"c": [1, 2, 3]}}},
    "dollar_keys": {"$a": 1, "$b": 2},
}

#: User data shaped like the codec's own tags: it must come back as the same dicts.
TAG_SHAPED_PAYLOAD: dict[str, Any] = {
    "decimal_tag": {"$decimal": "1.5"},
    "bytes_tag": {"$bytes": "AAE="},
    "escape_tag": {"$dict": {"x": 1}},
    "lone_dollar": {"$other": [1]},
    "in_list": [{"$date": "2026-01-01"}],
}


def extras() -> dict[str, Any]:
    """Values functions may return although JSON lacks them; they must keep their type."""
    return {
        "decimal": decimal.Decimal("12.50"),
        "tiny_decimal": decimal.Decimal("-0.000000000000000000001"),
        "bytes": bytes(range(256)),
        "empty_bytes": b"",
        "aware": datetime.datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=datetime.UTC),
        "naive": datetime.datetime(1999, 12, 31, 23, 59, 59),
        "offset": datetime.datetime(
            2026, 6, 1, 12, 0, tzinfo=datetime.timezone(datetime.timedelta(hours=-5, minutes=-30))
        ),
        "date": datetime.date(2026, 2, 28),
        "time": datetime.time(13, 14, 15, 16),
        "uuid": uuid.UUID("12345678-1234-5678-1234-567812345678"),
        "in_list": [decimal.Decimal("1.10"), b"\x00", datetime.date(2000, 1, 1)],
    }


@app.function
def emit(ctx: apiary.TxContext, tag: str, payload: Any) -> dict[str, Any]:
    """Write a row and return the payload along with the extra types."""
    ctx.execute(LOG, ctx.workflow_id, "emit", tag)
    return {"payload": payload, "extras": extras(), "tag": tag}


@app.step
def look(ctx: apiary.StepContext, value: Any) -> Any:
    """Record what arrived, pass it on. A child may be told to die here, by node ID."""
    SEEN.append((ctx.idempotency_key, value))
    node = str(ctx.idempotency_key).rsplit("/", 1)[-1]
    die_if_asked(node, (ctx.idempotency_key, value))
    return value


@app.function
def settle(ctx: apiary.TxContext, tag: str, value: Any) -> Any:
    """Write a row and return what the step passed on."""
    ctx.execute(LOG, ctx.workflow_id, "settle", tag)
    return value


@app.function
def counts(ctx: apiary.TxContext, tag: str) -> dict[str, int]:
    """How many times each function wrote for ``tag`` (read-only)."""
    return {fn: int(n) for fn, n in ctx.query(COUNTS, tag)}


@app.workflow
def roundtrip(tag: str, payload: Any):  # type: ignore[no-untyped-def]
    """A recorded function, two steps (nodes ``look``, ``look#2``) and a second function,
    all passing the values on."""
    value = emit(tag, payload)
    seen = look(value)
    seen_again = look(seen)
    return settle(tag, seen_again)


def expected(tag: str, payload: Any) -> dict[str, Any]:
    """What :func:`roundtrip` returns."""
    return {"payload": payload, "extras": extras(), "tag": tag}
