"""Request schemas, argument checks and the OpenAPI document, from workflow signatures.

The module uses ``from __future__ import annotations`` on purpose: the workflows below have
string annotations, which the frontend must resolve in this module.
"""

from __future__ import annotations

import datetime
import decimal
import enum
import importlib.util
import inspect
import json
import math
import re
import typing
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, NewType, NotRequired, Optional, TypedDict, Union

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import apiary
from apiary._app import WorkflowDef
from apiary._frontend.openapi import openapi_document
from apiary._frontend.schema import check_arguments, json_schema, request_schema

HOTEL = Path(__file__).resolve().parent.parent / "examples" / "hotel.py"


class Color(enum.Enum):
    RED = "red"
    GREEN = "green"


class Item(TypedDict):
    name: str
    price: float
    tags: NotRequired[list[str]]


class Tree(TypedDict):
    label: str
    children: list[Tree]


UserId = NewType("UserId", int)


class Opaque:
    """Not a JSON type."""


app = apiary.App("schema_test")


@app.workflow
def order(
    customer: str,
    items: list[Item],
    quantity: int = 1,
    discount: float | None = None,
    notes: dict[str, str] = {},  # noqa: B006 (never mutated: a workflow body is traced once)
    priority: Literal["low", "high"] = "low",
    when: datetime.date | None = None,
):
    """Place an order.

    The items are priced by the caller.
    """
    return None


@app.workflow
def shapes(
    a: int,
    b: float,
    c: bool,
    d: str,
    e: None,
    f: list[int],
    g: Sequence[float],
    h: tuple[int, ...],
    i: tuple[int, str],
    j: dict[str, int],
    k: Mapping[str, list[bool]],
    m: Optional[str],  # noqa: UP045 (the typing spelling is what is tested)
    n: Union[int, str],  # noqa: UP007
    o: Color,
    p: Any,
    q,  # unannotated
    r: object,
    s: decimal.Decimal,
    t: UserId,
    u: Annotated[int, "meta"],
    v: set[int],
    w: Tree,
    x: typing.List[int],  # noqa: UP006
):
    return None


@app.workflow
def unresolved(known: int, unknown: NoSuchType):  # noqa: F821
    return None


@app.workflow
def nothing():
    return None


def wf(name: str) -> WorkflowDef:
    return app.workflows[name]


# -- json_schema -----------------------------------------------------------------------------

SCHEMAS: list[tuple[Any, dict[str, Any]]] = [
    (int, {"type": "integer"}),
    (float, {"type": "number"}),
    (bool, {"type": "boolean"}),
    (str, {"type": "string"}),
    (None, {"type": "null"}),
    (type(None), {"type": "null"}),
    (list[int], {"type": "array", "items": {"type": "integer"}}),
    (typing.List[str], {"type": "array", "items": {"type": "string"}}),  # noqa: UP006
    (Sequence[float], {"type": "array", "items": {"type": "number"}}),
    (tuple[bool, ...], {"type": "array", "items": {"type": "boolean"}}),
    (list, {"type": "array"}),
    (
        tuple[int, str],
        {
            "type": "array",
            "prefixItems": [{"type": "integer"}, {"type": "string"}],
            "minItems": 2,
            "maxItems": 2,
        },
    ),
    (tuple[()], {"type": "array", "minItems": 0, "maxItems": 0}),
    (set[int], {"type": "array", "items": {"type": "integer"}, "uniqueItems": True}),
    (dict[str, int], {"type": "object", "additionalProperties": {"type": "integer"}}),
    (typing.Dict[str, Any], {"type": "object"}),  # noqa: UP006
    (Mapping[str, float], {"type": "object", "additionalProperties": {"type": "number"}}),
    (dict, {"type": "object"}),
    (int | None, {"anyOf": [{"type": "integer"}, {"type": "null"}]}),
    (Optional[str], {"anyOf": [{"type": "string"}, {"type": "null"}]}),  # noqa: UP045
    (
        Union[int, str, None],  # noqa: UP007
        {"anyOf": [{"type": "integer"}, {"type": "string"}, {"type": "null"}]},
    ),
    (int | Any, {}),
    (Literal["a", 1, True, None], {"enum": ["a", 1, True, None]}),
    (Color, {"enum": ["red", "green"]}),
    (Any, {}),
    (inspect.Parameter.empty, {}),
    (object, {}),
    (UserId, {"type": "integer"}),
    (Annotated[str, "x"], {"type": "string"}),
    (
        list[dict[str, list[int | None]]],
        {
            "type": "array",
            "items": {
                "type": "object",
                "additionalProperties": {
                    "type": "array",
                    "items": {"anyOf": [{"type": "integer"}, {"type": "null"}]},
                },
            },
        },
    ),
]


@pytest.mark.parametrize(("annotation", "expected"), SCHEMAS, ids=repr)
def test_json_schema_of_each_annotation_kind(annotation: Any, expected: dict[str, Any]) -> None:
    assert json_schema(annotation) == expected


@pytest.mark.parametrize(
    ("annotation", "tag"),
    [
        (decimal.Decimal, "$decimal"),
        (datetime.datetime, "$datetime"),
        (datetime.date, "$date"),
        (datetime.time, "$time"),
        (bytes, "$bytes"),
        (uuid.UUID, "$uuid"),
    ],
)
def test_tagged_types_accept_anything_and_say_how_they_are_carried(
    annotation: Any, tag: str
) -> None:
    schema = json_schema(annotation)
    assert set(schema) == {"description"}
    assert tag in schema["description"]
    assert "tagged" in schema["description"]


@pytest.mark.parametrize("annotation", [Opaque, "NotResolvable", typing.ForwardRef("X")])
def test_unknown_annotations_accept_any_json_value_and_say_so(annotation: Any) -> None:
    schema = json_schema(annotation)
    assert set(schema) == {"description"}
    assert "any JSON value" in schema["description"]


def test_a_typed_dict_is_an_object_with_its_keys() -> None:
    assert json_schema(Item) == {
        "type": "object",
        "title": "Item",
        "properties": {
            "name": {"type": "string"},
            "price": {"type": "number"},
            "tags": {"type": "array", "items": {"type": "string"}},
        },
        "required": ["name", "price"],
        "additionalProperties": False,
    }


def test_a_recursive_typed_dict_stops_at_the_recursion() -> None:
    children = json_schema(Tree)["properties"]["children"]
    assert children["type"] == "array"
    assert "recursive" in children["items"]["description"]


def test_json_schema_returns_a_fresh_dict() -> None:
    json_schema(list[int])["items"]["type"] = "string"
    assert json_schema(list[int]) == {"type": "array", "items": {"type": "integer"}}


# -- request_schema --------------------------------------------------------------------------


def test_request_schema_resolves_string_annotations() -> None:
    assert inspect.signature(order).parameters["quantity"].annotation == "int"  # a string
    schema = request_schema(wf("order"))
    assert schema["type"] == "object"
    assert schema["required"] == ["customer", "items"]
    assert schema["additionalProperties"] is False
    properties = schema["properties"]
    assert list(properties) == [
        "customer",
        "items",
        "quantity",
        "discount",
        "notes",
        "priority",
        "when",
    ]
    assert properties["customer"] == {"type": "string"}
    assert properties["items"]["items"]["title"] == "Item"
    assert properties["quantity"] == {"type": "integer", "default": 1}
    assert properties["discount"] == {
        "anyOf": [{"type": "number"}, {"type": "null"}],
        "default": None,
    }
    assert properties["notes"]["default"] == {}
    assert properties["priority"] == {"enum": ["low", "high"], "default": "low"}
    assert "$date" in properties["when"]["description"]  # `date | None`: any JSON value


def test_request_schema_gives_every_kind_under_future_annotations() -> None:
    properties = request_schema(wf("shapes"))["properties"]
    expected = {
        "a": {"type": "integer"},
        "b": {"type": "number"},
        "c": {"type": "boolean"},
        "d": {"type": "string"},
        "e": {"type": "null"},
        "f": {"type": "array", "items": {"type": "integer"}},
        "g": {"type": "array", "items": {"type": "number"}},
        "h": {"type": "array", "items": {"type": "integer"}},
        "j": {"type": "object", "additionalProperties": {"type": "integer"}},
        "m": {"anyOf": [{"type": "string"}, {"type": "null"}]},
        "n": {"anyOf": [{"type": "integer"}, {"type": "string"}]},
        "o": {"enum": ["red", "green"]},
        "p": {},
        "q": {},
        "r": {},
        "t": {"type": "integer"},
        "u": {"type": "integer"},
        "x": {"type": "array", "items": {"type": "integer"}},
    }
    assert {name: properties[name] for name in expected} == expected
    assert properties["i"]["prefixItems"] == [{"type": "integer"}, {"type": "string"}]
    assert properties["k"]["additionalProperties"]["items"] == {"type": "boolean"}
    assert properties["v"]["uniqueItems"] is True
    assert properties["w"]["title"] == "Tree"
    assert "$decimal" in properties["s"]["description"]


def test_an_unresolvable_annotation_accepts_anything_and_the_others_still_resolve() -> None:
    properties = request_schema(wf("unresolved"))["properties"]
    assert properties["known"] == {"type": "integer"}
    assert "NoSuchType" in properties["unknown"]["description"]
    assert check_arguments(wf("unresolved"), {"known": 1, "unknown": [{"x": None}]}) == {
        "known": 1,
        "unknown": [{"x": None}],
    }


def test_a_workflow_without_parameters_takes_an_empty_object() -> None:
    schema = request_schema(wf("nothing"))
    assert "required" not in schema
    assert schema["properties"] == {}
    assert check_arguments(wf("nothing"), {}) == {}


def test_defaults_that_are_not_plain_json_are_left_out() -> None:
    local = apiary.App("defaults")

    @local.workflow
    def dated(
        day: datetime.date = datetime.date(2026, 1, 2),
        pair: tuple[int, int] = (1, 2),
        ratio: float = math.inf,
    ):
        return None

    properties = request_schema(local.workflows["dated"])["properties"]
    assert "default" not in properties["day"]
    assert properties["pair"]["default"] == [1, 2]
    assert "default" not in properties["ratio"]


# -- check_arguments -------------------------------------------------------------------------

GOOD_ORDER = {
    "customer": "ann",
    "items": [{"name": "tea", "price": 3}, {"name": "cake", "price": 2.5, "tags": ["sweet"]}],
}


def test_check_arguments_accepts_a_good_body_without_filling_defaults() -> None:
    args = check_arguments(wf("order"), GOOD_ORDER)
    assert args == GOOD_ORDER
    assert type(args["items"][0]["price"]) is float  # an integer given for a float
    assert "quantity" not in args


def test_check_arguments_accepts_optional_values_and_literals() -> None:
    body = {**GOOD_ORDER, "discount": None, "priority": "high", "notes": {"gift": "yes"}}
    assert check_arguments(wf("order"), body) == body
    assert check_arguments(wf("order"), {**GOOD_ORDER, "discount": 5})["discount"] == 5.0


def test_check_arguments_does_not_change_the_body() -> None:
    body = json.loads(json.dumps(GOOD_ORDER))
    check_arguments(wf("order"), body)
    assert body == GOOD_ORDER
    assert type(body["items"][0]["price"]) is int


def test_tagged_values_restored_by_the_codec_pass() -> None:
    body = {**GOOD_ORDER, "when": datetime.date(2026, 1, 2)}
    assert check_arguments(wf("order"), body)["when"] == datetime.date(2026, 1, 2)


SHAPES_BODY: dict[str, Any] = {
    "a": 1,
    "b": 1.5,
    "c": True,
    "d": "x",
    "e": None,
    "f": [1, 2],
    "g": [1, 2.5],
    "h": [],
    "i": [1, "one"],
    "j": {"k": 1},
    "k": {"k": [True]},
    "m": None,
    "n": "s",
    "o": "red",
    "p": {"any": ["thing"]},
    "q": 3,
    "r": "x",
    "s": {"$decimal": "1.5"},
    "t": 7,
    "u": 8,
    "v": [1, 2, 3],
    "w": {"label": "root", "children": [{"label": "leaf", "children": []}]},
    "x": [1],
}


def test_check_arguments_accepts_every_kind() -> None:
    args = check_arguments(wf("shapes"), SHAPES_BODY)
    assert args == SHAPES_BODY
    assert [type(value) for value in args["g"]] == [float, float]


def order_with(**changes: Any) -> dict[str, Any]:
    return {**GOOD_ORDER, **changes}


def shapes_with(**changes: Any) -> dict[str, Any]:
    return {**SHAPES_BODY, **changes}


REFUSED: list[tuple[str, Any, list[str]]] = [
    ("order", [1, 2], ["must be a JSON object of arguments", "got an array"]),
    ("order", None, ["must be a JSON object of arguments", "got null"]),
    ("order", "ann", ["must be a JSON object of arguments", "got a string"]),
    ("order", {"customer": "ann"}, ["missing argument(s) 'items'"]),
    ("order", order_with(colour="red"), ["unknown argument(s) 'colour'", "it takes (customer"]),
    ("order", order_with(workflow_id="x"), ["unknown argument(s) 'workflow_id'"]),
    ("order", order_with(quantity=True), ["'quantity'", "expected an integer", "a boolean"]),
    ("order", order_with(quantity="2"), ["'quantity'", "expected an integer", 'a string ("2")']),
    ("order", order_with(quantity=2.0), ["'quantity'", "expected an integer", "a number (2.0)"]),
    ("order", order_with(discount=True), ["'discount'", "a number or null", "a boolean"]),
    ("order", order_with(discount=math.nan), ["'discount'", "a finite number", "nan"]),
    ("order", order_with(discount=10**400), ["'discount'", "float's range"]),
    ("order", order_with(customer=["ann"]), ["'customer'", "expected a string", "an array"]),
    ("order", order_with(items={"name": "tea"}), ["'items'", "expected an array", "an object"]),
    (
        "order",
        order_with(items=[*GOOD_ORDER["items"], {"name": "x", "price": "12.50"}]),
        ["'items[2].price'", "expected a number", 'a string ("12.50")'],
    ),
    (
        "order",
        order_with(items=[{"name": "x", "price": 1, "tags": ["a", 1]}]),
        ["'items[0].tags[1]'", "expected a string", "an integer (1)"],
    ),
    ("order", order_with(items=[{"name": "x"}]), ["'items[0]'", "missing key(s) 'price'"]),
    (
        "order",
        order_with(items=[{"name": "x", "price": 1, "cost": 2}]),
        ["'items[0]'", "no key 'cost'"],
    ),
    ("order", order_with(notes={"a": 1}), ["'notes.a'", "expected a string", "an integer"]),
    ("order", order_with(notes={"a b": 1}), ["'notes[\"a b\"]'", "expected a string"]),
    ("order", order_with(notes={1: "x"}), ["'notes'", "keys must be strings"]),
    ("order", order_with(priority="urgent"), ["'priority'", 'one of "low", "high"']),
    ("shapes", shapes_with(h=[1, "2"]), ["'h[1]'", "expected an integer"]),
    ("shapes", shapes_with(i=[1]), ["'i'", "an array of 2 items", "an array of 1 item"]),
    ("shapes", shapes_with(i=[1, 2]), ["'i[1]'", "expected a string"]),
    ("shapes", shapes_with(m=1), ["'m'", "expected a string or null", "an integer"]),
    ("shapes", shapes_with(n=1.5), ["'n'", "an integer or a string", "a number"]),
    ("shapes", shapes_with(n=None), ["'n'", "an integer or a string", "got null"]),
    ("shapes", shapes_with(o="blue"), ["'o'", 'one of "red", "green"']),
    ("shapes", shapes_with(e=0), ["'e'", "expected null"]),
    ("shapes", shapes_with(c=1), ["'c'", "expected a boolean", "an integer"]),
    ("shapes", shapes_with(p=[math.inf]), ["'p[0]'", "numbers are finite"]),
    ("shapes", shapes_with(p=Opaque()), ["'p'", "expected a JSON value", "of type Opaque"]),
    ("shapes", shapes_with(v=[1, 2, 1]), ["'v[2]'", "duplicate of item 0"]),
    ("shapes", shapes_with(w={"label": 1, "children": []}), ["'w.label'", "expected a string"]),
    ("shapes", shapes_with(w={"label": "r", "children": 1}), ["'w.children'", "an array"]),
    ("shapes", shapes_with(t=True), ["'t'", "expected an integer"]),
]


@pytest.mark.parametrize(
    ("workflow", "body", "fragments"), REFUSED, ids=[" ".join(case[2]) for case in REFUSED]
)
def test_check_arguments_refuses_bad_bodies_naming_the_argument(
    workflow: str, body: Any, fragments: list[str]
) -> None:
    with pytest.raises(apiary.InvalidArgumentsError) as caught:
        check_arguments(wf(workflow), body)
    message = str(caught.value)
    assert message.startswith(f"workflow {workflow!r}: ")
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"


def test_missing_and_unknown_are_reported_together() -> None:
    with pytest.raises(apiary.InvalidArgumentsError, match=r"missing .*'items'; unknown .*'x'"):
        check_arguments(wf("order"), {"customer": "ann", "x": 1})


def test_an_optional_list_reports_the_bad_element_not_the_alternatives() -> None:
    local = apiary.App("optional_list")

    @local.workflow
    def tally(counts: list[int] | None):
        return None

    with pytest.raises(apiary.InvalidArgumentsError, match=r"'counts\[1\]': expected an integer"):
        check_arguments(local.workflows["tally"], {"counts": [1, "2"]})


def test_a_long_string_is_shortened_in_the_message() -> None:
    with pytest.raises(apiary.InvalidArgumentsError) as caught:
        check_arguments(wf("order"), order_with(quantity="x" * 10_000))
    assert len(str(caught.value)) < 200


def test_an_int_stays_an_int_in_a_union_with_float() -> None:
    local = apiary.App("union_order")

    @local.workflow
    def measure(value: float | int):
        return None

    assert type(check_arguments(local.workflows["measure"], {"value": 3})["value"]) is int
    assert type(check_arguments(local.workflows["measure"], {"value": 3.5})["value"]) is float


# -- property: values of an annotation pass ----------------------------------------------------

JSON_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=8),
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner),
    max_leaves=10,
)
LITERALS = st.lists(
    st.one_of(st.none(), st.booleans(), st.integers(-3, 3), st.sampled_from(["a", "b"])),
    min_size=1,
    max_size=3,
    unique_by=lambda v: (type(v), v),
)
BASE_ANNOTATIONS = st.sampled_from([int, float, bool, str, None, Any, object, Color])


def _annotations(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(
        inner.map(lambda a: list[a]),  # type: ignore[valid-type]
        inner.map(lambda a: Sequence[a]),  # type: ignore[valid-type]
        inner.map(lambda a: tuple[a, ...]),  # type: ignore[valid-type]
        inner.map(lambda a: dict[str, a]),  # type: ignore[valid-type]
        inner.map(lambda a: a | None if a is not None else Optional[int]),  # noqa: UP045
        st.lists(inner, min_size=1, max_size=3).map(lambda args: tuple[tuple(args)]),
        st.lists(inner, min_size=2, max_size=3).map(lambda args: Union[tuple(args)]),  # noqa: UP007
    )


ANNOTATIONS = st.one_of(
    st.recursive(BASE_ANNOTATIONS, _annotations, max_leaves=6),
    LITERALS.map(lambda values: Literal[tuple(values)]),
    st.just(Item),
)


def values_of(annotation: Any) -> st.SearchStrategy[Any]:
    """JSON values fit for ``annotation``, as a JSON body would bring them."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation in (Any, object):
        return JSON_VALUES
    if annotation is None or annotation is type(None):
        return st.none()
    scalars: dict[Any, st.SearchStrategy[Any]] = {
        int: st.integers(),
        float: st.floats(allow_nan=False, allow_infinity=False) | st.integers(-(2**53), 2**53),
        bool: st.booleans(),
        str: st.text(),
        Color: st.sampled_from(["red", "green"]),
    }
    if annotation in scalars:
        return scalars[annotation]
    if annotation is Item:
        return st.fixed_dictionaries(
            {"name": st.text(), "price": values_of(float)},
            optional={"tags": st.lists(st.text(), max_size=3)},
        )
    if origin is Literal:
        return st.sampled_from(args)
    if origin in (list, Sequence) or (origin is tuple and args[-1:] == (Ellipsis,)):
        return st.lists(values_of(args[0]), max_size=4)
    if origin is tuple:
        return st.tuples(*map(values_of, args)).map(list)
    if origin is dict:
        return st.dictionaries(st.text(max_size=5), values_of(args[1]), max_size=4)
    assert origin in (Union, typing.get_origin(int | None)), annotation
    return st.one_of(*map(values_of, args))


@settings(max_examples=300, deadline=None)
@given(data=st.data(), annotation=ANNOTATIONS)
def test_values_fit_for_an_annotation_always_pass(data: st.DataObject, annotation: Any) -> None:
    local = apiary.App("property")

    def fn(value):  # type: ignore[no-untyped-def]
        return None

    fn.__annotations__ = {"value": annotation}
    workflow = WorkflowDef(local, fn)
    value = data.draw(values_of(annotation), label="value")
    args = check_arguments(workflow, {"value": value})
    # Only numbers change (an int given for a float); in JSON they are the same value.
    assert json.loads(json.dumps(args["value"])) == json.loads(json.dumps(value))
    assert json_schema(annotation) == request_schema(workflow)["properties"]["value"]


# -- property: the check accepts what the schema describes -----------------------------------


def fits(schema: dict[str, Any], value: Any) -> bool:
    """A JSON Schema validator for the keywords this module emits.

    One liberty: ``integer`` means a JSON integer literal, not any number with a zero
    fraction (``2.0``), which is what the check (rightly, for Python) refuses.
    """
    kinds = {
        "null": lambda v: v is None,
        "boolean": lambda v: isinstance(v, bool),
        "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
        "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
        "string": lambda v: isinstance(v, str),
        "array": lambda v: isinstance(v, list),
        "object": lambda v: isinstance(v, dict),
    }
    if "type" in schema and not kinds[schema["type"]](value):
        return False
    if "anyOf" in schema and not any(fits(option, value) for option in schema["anyOf"]):
        return False
    if "enum" in schema and not any(
        json.dumps(value) == json.dumps(allowed) for allowed in schema["enum"]
    ):
        return False
    if isinstance(value, list):
        prefix = schema.get("prefixItems", [])
        if not schema.get("minItems", 0) <= len(value) <= schema.get("maxItems", math.inf):
            return False
        if not all(fits(s, v) for s, v in zip(prefix, value, strict=False)):
            return False
        if not all(fits(schema.get("items", {}), v) for v in value[len(prefix) :]):
            return False
    if isinstance(value, dict):
        properties = schema.get("properties", {})
        if any(key not in value for key in schema.get("required", [])):
            return False
        for key, item in value.items():
            extra = schema.get("additionalProperties", {})
            sub = properties.get(key, extra)
            if sub is False or not fits(sub, item):
                return False
    return True


def has_integral_float(value: Any) -> bool:
    if isinstance(value, float):
        return value.is_integer()
    if isinstance(value, list):
        return any(map(has_integral_float, value))
    if isinstance(value, dict):
        return any(map(has_integral_float, value.values()))
    return False


@settings(max_examples=300, deadline=None)
@given(annotation=ANNOTATIONS, value=JSON_VALUES)
def test_the_check_accepts_exactly_what_the_schema_describes(annotation: Any, value: Any) -> None:
    local = apiary.App("agreement")

    def fn(value):  # type: ignore[no-untyped-def]
        return None

    fn.__annotations__ = {"value": annotation}
    workflow = WorkflowDef(local, fn)
    try:
        check_arguments(workflow, {"value": value})
        accepted = True
    except apiary.InvalidArgumentsError:
        accepted = False
    if not has_integral_float(value):
        assert accepted == fits(json_schema(annotation), value)
    elif accepted:
        assert fits(json_schema(annotation), value)


# -- openapi_document ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hotel() -> apiary.App:
    spec = importlib.util.spec_from_file_location("hotel_for_openapi", HOTEL)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    hotel_app = module.app
    assert isinstance(hotel_app, apiary.App)
    return hotel_app


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if "$ref" in node else []
        return found + [ref for value in node.values() for ref in _refs(value)]
    if isinstance(node, list):
        return [ref for value in node for ref in _refs(value)]
    return []


def _resolve(document: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node: Any = document
    for part in ref[2:].split("/"):
        node = node[part]
    return node


METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}


def test_the_openapi_document_has_the_structure_of_openapi_3_1(hotel: apiary.App) -> None:
    document = openapi_document(hotel, version="abc123")
    json.dumps(document, allow_nan=False)  # JSON, all of it
    assert document["openapi"] == "3.1.0"
    assert document["info"] == {
        "title": "hotel",
        "version": "abc123",
        "description": document["info"]["description"],
    }
    assert set(document) <= {
        "openapi",
        "info",
        "jsonSchemaDialect",
        "servers",
        "paths",
        "webhooks",
        "components",
        "security",
        "tags",
        "externalDocs",
    }
    operation_ids = []
    for path, item in document["paths"].items():
        assert path.startswith("/")
        templated = set(re.findall(r"{(\w+)}", path))
        for method, operation in item.items():
            assert method in METHODS
            operation_ids.append(operation["operationId"])
            declared = {p["name"] for p in operation.get("parameters", []) if p["in"] == "path"}
            assert declared == templated, (path, method)
            for parameter in operation.get("parameters", []):
                assert parameter["in"] in {"query", "header", "path", "cookie"}
                assert "schema" in parameter
                if parameter["in"] == "path":
                    assert parameter["required"] is True
            assert operation["responses"]
            for status, answer in operation["responses"].items():
                assert re.fullmatch(r"[1-5]\d\d", status), status
                response = _resolve(document, answer["$ref"]) if "$ref" in answer else answer
                assert isinstance(response["description"], str)
                for media, content in response.get("content", {}).items():
                    assert media == "application/json"
                    assert "schema" in content
            if "requestBody" in operation:
                assert set(operation["requestBody"]["content"]) == {"application/json"}
    assert len(operation_ids) == len(set(operation_ids))
    for ref in _refs(document):
        _resolve(document, ref)  # every reference resolves
    tags = {tag["name"] for tag in document["tags"]}
    for item in document["paths"].values():
        for operation in item.values():
            assert set(operation["tags"]) <= tags


def test_the_openapi_document_has_the_routes_of_the_contract(hotel: apiary.App) -> None:
    document = openapi_document(hotel, version="1", title="Hotel API")
    assert document["info"]["title"] == "Hotel API"
    paths = document["paths"]
    routes = {(method, path) for path, item in paths.items() for method in item}
    assert routes == {
        ("post", "/v1/workflows/book_room"),
        ("post", "/v1/workflows/hotel_report"),
        ("post", "/v1/workflows/open_hotel"),
        ("get", "/v1/workflows/{workflow_id}"),
        ("post", "/v1/clients"),
        ("get", "/v1/health"),
        ("get", "/openapi.json"),
        ("post", "/v1/apps"),
        ("get", "/v1/apps"),
        ("post", "/v1/keys"),
        ("get", "/v1/keys"),
        ("delete", "/v1/keys/{key_id}"),
    }
    assert list(paths)[:3] == [
        "/v1/workflows/book_room",
        "/v1/workflows/hotel_report",
        "/v1/workflows/open_hotel",
    ]
    book = paths["/v1/workflows/book_room"]["post"]
    assert book["operationId"] == "run_book_room"
    assert book["description"].startswith("Book a room")
    assert book["requestBody"]["required"] is True
    assert book["requestBody"]["content"]["application/json"]["schema"] == request_schema(
        hotel.workflows["book_room"]
    )
    assert set(book["responses"]) == {"200", "400", "401", "403", "404", "409", "413", "422", "503"}
    assert book["responses"]["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/WorkflowResult"
    }
    (key,) = book["parameters"]
    assert key["name"] == "Idempotency-Key"
    assert key["in"] == "header"
    assert key["schema"] == {"type": "string", "minLength": 1, "maxLength": 256}

    components = document["components"]
    bearer = components["securitySchemes"]["bearer"]
    assert (bearer["type"], bearer["scheme"]) == ("http", "bearer")
    assert document["security"] == [{"bearer": []}]
    assert paths["/v1/health"]["get"]["security"] == []
    assert all(
        "security" not in operation
        for path, item in paths.items()
        if path != "/v1/health"
        for operation in item.values()
    )
    error = components["schemas"]["Error"]
    assert error["required"] == ["error"]
    assert error["properties"]["error"]["required"] == ["type", "message"]
    for status in ("400", "401", "403", "404", "409", "413", "503"):
        response = _resolve(document, book["responses"][status]["$ref"])
        schema = response["content"]["application/json"]["schema"]
        assert schema == {"$ref": "#/components/schemas/Error"}
    failure = _resolve(
        document, book["responses"]["422"]["content"]["application/json"]["schema"]["$ref"]
    )
    assert set(failure["required"]) == {"workflow_id", "status", "error"}
    detail = _resolve(document, failure["properties"]["error"]["$ref"])
    assert {"type", "message", "exception", "detail", "function"} <= set(detail["properties"])
    assert paths["/v1/keys"]["post"]["requestBody"]["content"]["application/json"]["schema"]


def test_the_openapi_document_is_deterministic_and_fresh(hotel: apiary.App) -> None:
    first = openapi_document(hotel, version="1")
    first["components"]["schemas"].clear()
    first["paths"]["/v1/workflows/book_room"]["post"]["requestBody"].clear()
    second = openapi_document(hotel, version="1")
    assert second["components"]["schemas"]
    assert json.dumps(second) == json.dumps(openapi_document(hotel, version="1"))


def test_workflows_are_listed_sorted_whatever_their_registration_order() -> None:
    local = apiary.App("order_of_paths")

    def zeta():
        return None

    def alpha():
        return None

    def mid():
        return None

    for fn in (zeta, alpha, mid):
        local.workflow(fn)
    paths = list(openapi_document(local, version="1")["paths"])
    assert paths[:3] == ["/v1/workflows/alpha", "/v1/workflows/mid", "/v1/workflows/zeta"]
