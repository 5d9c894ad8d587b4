"""The JSON codec: values round-trip with their types; non-JSON values are refused."""

from __future__ import annotations

import datetime
import decimal
import json
import math
import uuid
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from apiary import _codec

UTC = datetime.UTC
PLUS_0530 = datetime.timezone(datetime.timedelta(hours=5, minutes=30))


def round_trip(value: Any) -> Any:
    return _codec.loads(_codec.dumps(value))


def same(a: Any, b: Any) -> bool:
    """Equal, with the same types all the way down (``1 == 1.0 == True`` is not enough)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, float) and math.isnan(a):
        return False
    if isinstance(a, datetime.datetime | datetime.time):
        return a == b and a.utcoffset() == b.utcoffset()
    if isinstance(a, decimal.Decimal):
        return str(a) == str(b)
    return bool(a == b)


def expected(value: Any) -> Any:
    """What a value reads back as: tuples become lists, byte-likes become bytes."""
    if isinstance(value, list | tuple):
        return [expected(v) for v in value]
    if isinstance(value, dict):
        return {k: expected(v) for k, v in value.items()}
    if isinstance(value, bytearray | memoryview):
        return bytes(value)
    return value


# -- round trips -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        None,
        True,
        False,
        0,
        -7,
        2**70,
        1.5,
        -0.25,
        "",
        "héllo ✓ \u2028 \x00",
        [],
        {},
        [1, "a", None, True, 2.5],
        {"a": 1, "b": [1, 2, {"c": None}]},
        {"nested": {"deeper": {"deepest": [[], {}]}}},
    ],
)
def test_plain_json_values_round_trip(value: Any) -> None:
    assert same(round_trip(value), value)


def test_output_is_compact_json_text() -> None:
    text = _codec.dumps({"a": [1, 2], "b": "ü"})
    assert text == '{"a":[1,2],"b":"ü"}'
    assert json.loads(text) == {"a": [1, 2], "b": "ü"}


def test_tuples_become_lists() -> None:
    assert same(round_trip((1, 2, (3, "x"))), [1, 2, [3, "x"]])
    assert same(round_trip({"pair": (1, 2)}), {"pair": [1, 2]})


def test_bool_stays_bool_and_int_stays_int() -> None:
    assert same(round_trip([True, 1, 1.0]), [True, 1, 1.0])


@pytest.mark.parametrize(
    "value",
    [
        decimal.Decimal("12.50"),
        decimal.Decimal("-0.001"),
        decimal.Decimal("1E+3"),
        decimal.Decimal("123456789012345678901234567890.123456789"),
        datetime.datetime(2026, 1, 2, 3, 4, 5),
        datetime.datetime(2026, 1, 2, 3, 4, 5, 678901),
        datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
        datetime.datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=PLUS_0530),
        datetime.date(2026, 1, 2),
        datetime.time(3, 4, 5),
        datetime.time(23, 59, 59, 999999),
        datetime.time(3, 4, 5, tzinfo=UTC),
        # offsets with a fraction of a second (fromisoformat alone drops it)
        datetime.time(0, 0, tzinfo=datetime.timezone(datetime.timedelta(microseconds=1))),
        datetime.datetime(
            2026, 1, 2, 3, 4, 5, 6, tzinfo=datetime.timezone(-datetime.timedelta(seconds=61.5))
        ),
        b"",
        b"\x00\xffbytes",
        uuid.UUID("12345678-1234-5678-1234-567812345678"),
    ],
)
def test_tagged_types_keep_type_and_value(value: Any) -> None:
    back = round_trip(value)
    assert same(back, value), (value, back)


def test_aware_and_naive_datetimes_stay_distinct() -> None:
    naive = round_trip(datetime.datetime(2026, 1, 2, 3, 4, 5))
    aware = round_trip(datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=PLUS_0530))
    assert naive.tzinfo is None
    assert aware.utcoffset() == datetime.timedelta(hours=5, minutes=30)


def test_a_datetime_is_not_read_back_as_a_date() -> None:
    assert type(round_trip(datetime.datetime(2026, 1, 2))) is datetime.datetime
    assert type(round_trip(datetime.date(2026, 1, 2))) is datetime.date


@pytest.mark.parametrize("value", [bytearray(b"abc"), memoryview(b"xyz")])
def test_byte_likes_read_back_as_bytes(value: Any) -> None:
    back = round_trip(value)
    assert type(back) is bytes
    assert back == bytes(value)


def test_tagged_types_inside_structures() -> None:
    value = {
        "price": decimal.Decimal("9.99"),
        "when": [datetime.date(2026, 3, 1), datetime.time(12, 0)],
        "rows": [(1, b"\x01", uuid.UUID(int=5)), {"at": datetime.datetime(2026, 3, 1, 12)}],
    }
    assert same(round_trip(value), expected(value))


@pytest.mark.parametrize(
    "value",
    [
        {"$x": 1},
        {"$": "dollar"},
        {"$price": {"amount": 3}},
        {"$x": {"$y": 2}},
        [{"$only": [1, 2]}],
    ],
)
def test_dicts_whose_only_key_starts_with_dollar_survive(value: Any) -> None:
    assert same(round_trip(value), value)


@pytest.mark.parametrize(
    "value",
    [
        {"$dict": 5},
        {"$dict": {"a": 1}},
        {"$decimal": "1.5"},
        {"$date": "not a date"},
        {"$uuid": None},
        {"outer": {"$bytes": "AA=="}},
    ],
    ids=["dict-int", "dict-dict", "decimal", "date-invalid", "uuid-none", "nested-bytes"],
)
def test_user_dicts_shaped_like_tags_survive(value: Any) -> None:
    """User data never reads back as a tag, even when its only key is a tag's own name."""
    assert same(round_trip(value), value)


def test_dicts_with_several_dollar_keys_survive() -> None:
    value = {"$decimal": "1", "$date": "x"}
    assert same(round_trip(value), value)


# -- refusals --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        float("nan"),
        float("inf"),
        float("-inf"),
        decimal.Decimal("NaN"),
        decimal.Decimal("sNaN"),
        decimal.Decimal("Infinity"),
        decimal.Decimal("-Infinity"),
        [1, float("nan")],
        {"a": {"b": float("inf")}},
        (decimal.Decimal("NaN"),),
    ],
)
def test_nan_and_infinities_are_refused(value: Any) -> None:
    with pytest.raises(TypeError):
        _codec.dumps(value)
    with pytest.raises(TypeError):
        _codec.canonical_dumps(value)
    with pytest.raises(TypeError):
        _codec.normalize(value)


@pytest.mark.parametrize("value", [{1: "a"}, {None: 1}, {(1, 2): 3}, {"ok": {2.5: 1}}, {True: 1}])
def test_non_string_keys_are_refused(value: Any) -> None:
    with pytest.raises(TypeError, match="key"):
        _codec.dumps(value)
    with pytest.raises(TypeError, match="key"):
        _codec.canonical_dumps(value)


@pytest.mark.parametrize(
    "value",
    [{1, 2}, frozenset(), object(), [object()], {"a": {1}}, complex(1, 2), range(3), type],
)
def test_other_objects_are_refused(value: Any) -> None:
    with pytest.raises(TypeError):
        _codec.dumps(value)
    with pytest.raises(TypeError):
        _codec.normalize(value)


# -- canonical form and normalize ------------------------------------------------------


def test_canonical_dumps_ignores_key_order() -> None:
    one = {"b": 1, "a": {"y": [1, 2], "x": None}, "c": decimal.Decimal("1.0")}
    two = {"c": decimal.Decimal("1.0"), "a": {"x": None, "y": [1, 2]}, "b": 1}
    assert _codec.canonical_dumps(one) == _codec.canonical_dumps(two)
    assert _codec.loads(_codec.canonical_dumps(one)) == one


def test_canonical_dumps_tells_different_values_apart() -> None:
    assert _codec.canonical_dumps({"a": 1}) != _codec.canonical_dumps({"a": 2})
    assert _codec.canonical_dumps([1, 2]) != _codec.canonical_dumps([2, 1])
    assert _codec.canonical_dumps({"a": 1}) != _codec.canonical_dumps({"a": "1"})


@pytest.mark.parametrize(
    "value",
    [
        None,
        3,
        [1, 2, 3],
        (1, (2, 3)),
        {"a": (1, 2), "b": decimal.Decimal("3.5")},
        [datetime.date(2026, 1, 1), b"x", bytearray(b"y")],
        {"$x": 1},
        2.5,
    ],
)
def test_normalize_equals_a_round_trip(value: Any) -> None:
    assert same(_codec.normalize(value), round_trip(value))


# -- property: every JSON-ish value survives the codec ------------------------------------

# Keys that start with "$" exercise the escaping of user dicts; keys that are a tag's own
# name are covered by test_user_dicts_shaped_like_tags_survive.
KEYS = st.one_of(st.text(max_size=8), st.sampled_from(["$x", "$", "$$", "$price"]))
TIMEZONES = st.one_of(
    st.none(),
    st.just(UTC),
    st.builds(
        datetime.timezone,
        st.timedeltas(
            min_value=datetime.timedelta(hours=-23), max_value=datetime.timedelta(hours=23)
        ),
    ),
)
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(),
    st.decimals(allow_nan=False, allow_infinity=False),
    st.datetimes(timezones=TIMEZONES),
    st.dates(),
    st.times(timezones=TIMEZONES),
    st.binary(max_size=16),
    st.uuids(),
)
VALUES = st.recursive(
    SCALARS,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.lists(children, max_size=4).map(tuple),
        st.dictionaries(KEYS, children, max_size=4),
    ),
    max_leaves=20,
)


@settings(deadline=None)  # shared CI machines: no per-example time limit
@given(VALUES)
def test_every_value_round_trips(value: Any) -> None:
    back = round_trip(value)
    assert same(back, expected(value)), (value, back)
    assert same(_codec.normalize(value), back)
    assert _codec.loads(_codec.canonical_dumps(value)) == back


@settings(deadline=None)
@given(VALUES)
def test_dumps_rows_gives_the_text_of_dumps(value: Any) -> None:
    assert _codec.dumps_rows(value) == _codec.dumps(value)


def test_dumps_rows_refuses_what_dumps_refuses() -> None:
    # (Not non-string dict keys: its data, rows from a database, has none.)
    for bad in [float("nan"), object(), [decimal.Decimal("NaN")], [[float("inf")]]]:
        with pytest.raises(TypeError):
            _codec.dumps_rows(bad)
