"""The registrar: what it refuses (with a message naming who and what) and what it records."""

from __future__ import annotations

import importlib.util
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import apiary
from apiary import _graph

HOTEL_PATH = Path(__file__).resolve().parents[1] / "examples" / "hotel.py"

# Statements referenced by the functions below, in every way discovery supports.
READ_ROOM = apiary.sql("SELECT available FROM rooms WHERE hotel_id = ?")
TAKE_ROOM = apiary.sql("UPDATE rooms SET available = available - 1 WHERE hotel_id = ?")
HELPER_READ = apiary.sql("SELECT customer FROM bookings WHERE hotel_id = ?")
HELPER_WRITE = apiary.sql("DELETE FROM bookings WHERE hotel_id = ?")
DICT_STATEMENTS = {
    "count": apiary.sql("SELECT count(*) FROM bookings"),
    "clear": apiary.sql("DELETE FROM rooms WHERE hotel_id = ?"),
}
RAW_TEXT = "SELECT available FROM rooms"

queries = types.ModuleType("queries")
queries.BY_DAY = apiary.sql("SELECT available FROM rooms WHERE day = ?")  # type: ignore[attr-defined]
queries.UNUSED = apiary.sql("DELETE FROM rooms")  # type: ignore[attr-defined]


class Statements:
    """Statements held as class attributes."""

    BOOK = apiary.sql("INSERT INTO bookings (hotel_id, day, customer) VALUES (?, ?, ?)")
    UNUSED = apiary.sql("DELETE FROM bookings")


def read_bookings(ctx: Any, hotel_id: int) -> Any:
    """A plain helper (not registered) that runs a statement for its caller."""
    return ctx.query(HELPER_READ, hotel_id)


def clear_bookings(ctx: Any, hotel_id: int) -> Any:
    """A plain helper that writes, reached only through another helper."""
    return ctx.execute(HELPER_WRITE, hotel_id)


def clear_through_helper(ctx: Any, hotel_id: int) -> Any:
    return clear_bookings(ctx, hotel_id)


def refused(excinfo: pytest.ExceptionInfo[apiary.RegistrationError], *words: str) -> None:
    """The refusal's message contains each of ``words``."""
    message = str(excinfo.value)
    for word in words:
        assert word in message, f"{word!r} is not in the message {message!r}"


def texts(defn: Any) -> set[str]:
    return {stmt.text for stmt in defn.statements}


@pytest.fixture
def app() -> apiary.App:
    """An app with a reader, a writer and a step to compose into workflows."""
    app = apiary.App("reg")

    @app.function
    def source(ctx: apiary.TxContext, x: Any) -> Any:
        return x

    @app.function
    def pair(ctx: apiary.TxContext, a: Any, b: Any) -> Any:
        return [a, b]

    @app.step
    def notify(ctx: apiary.StepContext, value: Any) -> Any:
        return value

    return app


def fn(app: apiary.App, name: str) -> Any:
    return app.functions.get(name) or app.steps[name]


# -- futures and parameters in Python control flow ----------------------------------------

MISUSES: dict[str, tuple[Callable[[Any], Any], str]] = {
    "if": (lambda v: 1 if v else 0, "condition"),
    "not": (lambda v: not v, "condition"),
    "and": (lambda v: v and 1, "condition"),
    "bool": (bool, "condition"),
    "eq": (lambda v: v == 1, "=="),
    "ne": (lambda v: v != 1, "!="),
    "lt": (lambda v: v < 1, "compared"),
    "add": (lambda v: v + 1, "arithmetic"),
    "radd": (lambda v: 1 + v, "arithmetic"),
    "mul": (lambda v: v * 2, "arithmetic"),
    "neg": (lambda v: -v, "arithmetic"),
    "fstring": (lambda v: f"{v}", "format"),
    "str": (str, "string"),
    "int": (int, "int"),
    "iter": (lambda v: [item for item in v], "iterated"),  # noqa: C416
    "unpack": (tuple, "iterated"),
    "len": (len, "len()"),
    "in": (lambda v: 1 in v, "'in'"),
    "index": (lambda v: v[0], "indexed"),
    "attribute": (lambda v: v.value, "attribute 'value'"),
    "call": (lambda v: v(), "called"),
}


@pytest.mark.parametrize("misuse", MISUSES)
def test_a_future_cannot_be_used_in_python(app: apiary.App, misuse: str) -> None:
    use, problem = MISUSES[misuse]
    source = fn(app, "source")
    with pytest.raises(apiary.RegistrationError) as info:

        @app.workflow
        def misusing(x):  # type: ignore[no-untyped-def]
            out = source(x)
            use(out)
            return out

    refused(info, "'misusing'", "'source'", "future", problem)
    assert "misusing" not in app.workflows


@pytest.mark.parametrize("misuse", ["if", "bool", "eq", "add", "radd", "fstring", "iter", "len"])
def test_a_workflow_parameter_cannot_be_used_in_python(app: apiary.App, misuse: str) -> None:
    use, problem = MISUSES[misuse]
    source = fn(app, "source")
    with pytest.raises(apiary.RegistrationError) as info:

        @app.workflow
        def computing(hotel_id):  # type: ignore[no-untyped-def]
            return source(use(hotel_id))

    refused(info, "'computing'", "parameter 'hotel_id'", problem)


def test_a_parameter_in_a_condition_is_refused(app: apiary.App) -> None:
    source = fn(app, "source")
    with pytest.raises(apiary.RegistrationError) as info:

        @app.workflow
        def branching(flag, x):  # type: ignore[no-untyped-def]
            if flag:
                return source(x)
            return None

    refused(info, "'branching'", "parameter 'flag'", "condition")


def test_a_swallowed_misuse_still_refuses_the_workflow(app: apiary.App) -> None:
    """Catching the refusal inside the body must not let data-dependent flow register."""
    source = fn(app, "source")
    with pytest.raises(apiary.RegistrationError) as info:

        @app.workflow
        def sneaky(x):  # type: ignore[no-untyped-def]
            out = source(x)
            try:
                count = int(out)
            except Exception:
                count = 1
            for _ in range(count):
                out = source(out)
            return out

    refused(info, "'sneaky'", "'source'", "int")


# -- calls that do not match the signature ------------------------------------------------


def test_an_unknown_keyword_argument_is_refused(app: apiary.App) -> None:
    source = fn(app, "source")
    with pytest.raises(apiary.RegistrationError) as info:

        @app.workflow
        def wf(x):  # type: ignore[no-untyped-def]
            return source(x=x, bogus=1)

    refused(info, "'wf'", "'source'", "bogus")


def test_a_missing_argument_is_refused(app: apiary.App) -> None:
    pair = fn(app, "pair")
    with pytest.raises(apiary.RegistrationError) as info:

        @app.workflow
        def wf(x):  # type: ignore[no-untyped-def]
            return pair(x)

    refused(info, "'wf'", "'pair'", "missing", "'b'")


def test_too_many_positional_arguments_are_refused(app: apiary.App) -> None:
    notify = fn(app, "notify")
    with pytest.raises(apiary.RegistrationError) as info:

        @app.workflow
        def wf(x):  # type: ignore[no-untyped-def]
            return notify(x, x)

    refused(info, "'wf'", "step 'notify'", "too many positional arguments")


def test_the_context_is_not_passed_from_a_workflow(app: apiary.App) -> None:
    """The workflow body calls with the arguments after ``ctx`` only."""
    source = fn(app, "source")
    with pytest.raises(apiary.RegistrationError) as info:

        @app.workflow
        def wf(x):  # type: ignore[no-untyped-def]
            return source(None, x)

    refused(info, "'source'", "too many positional arguments")


# -- transaction groups --------------------------------------------------------------------


def test_transaction_outside_a_workflow_is_refused() -> None:
    with pytest.raises(apiary.RegistrationError) as info, apiary.transaction():
        pass  # pragma: no cover - never entered
    refused(info, "apiary.transaction()", "workflow")


def test_nested_transactions_are_refused(app: apiary.App) -> None:
    source = fn(app, "source")
    with pytest.raises(apiary.RegistrationError) as info:

        @app.workflow
        def nested(x):  # type: ignore[no-untyped-def]
            with apiary.transaction():
                a = source(x)
                with apiary.transaction():
                    b = source(a)
            return b

    refused(info, "'nested'", "nested")


def test_an_empty_transaction_is_refused(app: apiary.App) -> None:
    source = fn(app, "source")
    with pytest.raises(apiary.RegistrationError) as info:

        @app.workflow
        def empty(x):  # type: ignore[no-untyped-def]
            with apiary.transaction():
                pass
            return source(x)

    refused(info, "'empty'", "transaction group", "no call")


def test_a_transaction_containing_a_step_is_refused(app: apiary.App) -> None:
    source, notify = fn(app, "source"), fn(app, "notify")
    with pytest.raises(apiary.RegistrationError) as info:

        @app.workflow
        def with_step(x):  # type: ignore[no-untyped-def]
            with apiary.transaction():
                a = source(x)
                b = notify(a)
            return b

    refused(info, "'with_step'", "'notify'", "step")


def test_a_transaction_of_unconnected_calls_is_refused(app: apiary.App) -> None:
    source = fn(app, "source")
    with pytest.raises(apiary.RegistrationError) as info:

        @app.workflow
        def apart(x, y):  # type: ignore[no-untyped-def]
            with apiary.transaction():
                a = source(x)
                b = source(y)
            return [a, b]

    refused(info, "'apart'", "not connected", "source")


def test_a_transaction_connected_through_a_shared_parent_outside_is_still_unconnected(
    app: apiary.App,
) -> None:
    """Two calls reading the same earlier output share no output with each other."""
    source = fn(app, "source")
    with pytest.raises(apiary.RegistrationError) as info:

        @app.workflow
        def siblings(x):  # type: ignore[no-untyped-def]
            root = source(x)
            with apiary.transaction():
                a = source(root)
                b = source(root)
            return [a, b]

    refused(info, "'siblings'", "not connected")


def test_a_group_whose_collapse_would_create_a_cycle_is_refused() -> None:
    """a -> x -> b with a and b in one group and x outside it.

    Groups are contiguous in call order, so a traced body cannot build this shape through
    the public API; the check guards the graph itself, so it is exercised on a graph.
    """
    tracer = _graph._Tracer("cyclic", object())
    nodes = [
        _graph.Node("a", "a", False, {"v": ["p", "v"]}, [], 1),
        _graph.Node("x", "x", False, {"v": ["n", "a"]}, ["a"], None),
        _graph.Node("b", "b", False, {"v": ["n", "a"], "w": ["n", "x"]}, ["a", "x"], 1),
    ]
    graph = _graph.WorkflowGraph("cyclic", ["v"], nodes, {1: ["a", "b"]}, ["n", "b"])
    with pytest.raises(apiary.RegistrationError) as info:
        _graph._check_groups(graph, tracer)
    refused(info, "'cyclic'", "transaction group 1", "'b'", "outside the group")


def test_a_connected_group_with_an_outside_reader_is_accepted(app: apiary.App) -> None:
    source, pair = fn(app, "source"), fn(app, "pair")

    @app.workflow
    def fine(x):  # type: ignore[no-untyped-def]
        with apiary.transaction():
            a = source(x)
            b = pair(a, x)
        return source(b)

    graph = app.workflows["fine"].graph
    assert graph.groups == {1: ["source", "pair"]}
    assert [node.group for node in graph.nodes] == [1, 1, None]


# -- workflows, names and signatures -------------------------------------------------------


def test_a_workflow_calling_a_workflow_is_refused(app: apiary.App) -> None:
    source = fn(app, "source")

    @app.workflow
    def inner(x):  # type: ignore[no-untyped-def]
        return source(x)

    with pytest.raises(apiary.RegistrationError) as info:

        @app.workflow
        def outer(x):  # type: ignore[no-untyped-def]
            return inner(x)

    refused(info, "'inner'", "another workflow")


def test_a_workflow_is_not_called_directly(app: apiary.App) -> None:
    source = fn(app, "source")

    @app.workflow
    def wf(x):  # type: ignore[no-untyped-def]
        return source(x)

    with pytest.raises(TypeError, match="Runtime"):
        wf(1)


@pytest.mark.parametrize("second", ["function", "step", "workflow"])
@pytest.mark.parametrize("first", ["function", "step", "workflow"])
def test_duplicate_names_are_refused(first: str, second: str) -> None:
    app = apiary.App("dupes")

    def register(kind: str) -> None:
        if kind == "workflow":

            def twice(x):  # type: ignore[no-untyped-def]
                return None

            app.workflow(twice)
        else:

            def twice(ctx, x):  # type: ignore[no-untyped-def]
                return x

            getattr(app, kind)(twice)

    register(first)
    with pytest.raises(apiary.RegistrationError) as info:
        register(second)
    refused(info, "'dupes'", "'twice'", "twice")


def test_a_function_without_a_context_parameter_is_refused() -> None:
    app = apiary.App("noctx")
    with pytest.raises(apiary.RegistrationError) as info:

        @app.function
        def lonely() -> int:
            return 1

    refused(info, "'lonely'", "context")
    with pytest.raises(apiary.RegistrationError) as info:

        @app.step
        def keyword_only(*, ctx: Any) -> int:
            return 1

    refused(info, "'keyword_only'", "context")


@pytest.mark.parametrize("kind", ["function", "step"])
def test_var_args_are_refused(kind: str) -> None:
    app = apiary.App("varargs")

    def star(ctx, *args):  # type: ignore[no-untyped-def]
        return args

    def double_star(ctx, **kwargs):  # type: ignore[no-untyped-def]
        return kwargs

    for callable_ in (star, double_star):
        with pytest.raises(apiary.RegistrationError) as info:
            getattr(app, kind)(callable_)
        refused(info, callable_.__name__, "*args and **kwargs")


def test_workflow_var_args_are_refused(app: apiary.App) -> None:
    with pytest.raises(apiary.RegistrationError) as info:

        @app.workflow
        def spread(*values):  # type: ignore[no-untyped-def]
            return None

    refused(info, "'spread'", "*args and **kwargs")
    with pytest.raises(apiary.RegistrationError) as info:

        @app.workflow
        def named(**values):  # type: ignore[no-untyped-def]
            return None

    refused(info, "'named'", "*args and **kwargs")


@pytest.mark.parametrize("partition", ["hotel", "ctx", "Hotel_id"])
def test_partition_must_name_a_parameter(partition: str) -> None:
    app = apiary.App("parts")
    with pytest.raises(apiary.RegistrationError) as info:

        @app.function(partition=partition)
        def book(ctx: apiary.TxContext, hotel_id: int) -> int:
            return hotel_id

    refused(info, "'book'", f"partition={partition!r}", "hotel_id")


def test_partition_naming_a_parameter_is_kept() -> None:
    app = apiary.App("parts_ok")

    @app.function(partition="hotel_id")
    def book(ctx: apiary.TxContext, day: int, hotel_id: int) -> int:
        return hotel_id

    assert app.functions["book"].partition == "hotel_id"
    assert app.functions["book"].params == ["day", "hotel_id"]


def test_a_workflow_parameter_named_workflow_id_is_refused(app: apiary.App) -> None:
    source = fn(app, "source")
    with pytest.raises(apiary.RegistrationError) as info:

        @app.workflow
        def tagged(workflow_id, x):  # type: ignore[no-untyped-def]
            return source(x)

    refused(info, "'tagged'", "'workflow_id'", "reserved")


@pytest.mark.parametrize(
    "constant",
    [{1, 2}, object(), float("nan"), {1: "a"}, [1, {2}], {"a": frozenset()}],
    ids=["set", "object", "nan", "int-key", "nested-set", "nested-frozenset"],
)
def test_a_non_json_constant_argument_is_refused(app: apiary.App, constant: Any) -> None:
    source = fn(app, "source")
    with pytest.raises(apiary.RegistrationError) as info:

        @app.workflow
        def constants(x):  # type: ignore[no-untyped-def]
            return source(constant)

    refused(info, "'constants'", "'source'", "argument 'x'", "JSON")


def test_a_non_json_return_value_is_refused(app: apiary.App) -> None:
    with pytest.raises(apiary.RegistrationError) as info:

        @app.workflow
        def returns_set(x):  # type: ignore[no-untyped-def]
            return {1, 2}

    refused(info, "'returns_set'", "return value", "JSON")


def test_json_constants_parameters_and_futures_nest_in_arguments(app: apiary.App) -> None:
    source, pair = fn(app, "source"), fn(app, "pair")

    @app.workflow
    def nesting(x):  # type: ignore[no-untyped-def]
        first = source({"fixed": [1, 2.5, None], "when": (True, "s")})
        return pair([first, x, 3], {"out": first, "k": "v"})

    graph = app.workflows["nesting"].graph
    assert graph.nodes[0].args == {
        "x": ["c", {"fixed": [1, 2.5, None], "when": [True, "s"]}],
    }
    assert graph.nodes[1].args == {
        "a": ["l", [["n", "source"], ["p", "x"], ["c", 3]]],
        "b": ["d", {"out": ["n", "source"], "k": ["c", "v"]}],
    }
    assert graph.nodes[1].parents == ["source"]
    assert graph.output == ["n", "pair"]


def test_a_function_of_another_app_is_refused(app: apiary.App) -> None:
    other = apiary.App("other")

    @other.function
    def foreign(ctx: apiary.TxContext, x: Any) -> Any:
        return x

    with pytest.raises(apiary.RegistrationError) as info:

        @app.workflow
        def borrowing(x):  # type: ignore[no-untyped-def]
            return foreign(x)

    refused(info, "'borrowing'", "'foreign'", "another App")


def test_a_future_of_another_workflow_is_refused(app: apiary.App) -> None:
    source = fn(app, "source")
    leaked: list[Any] = []

    @app.workflow
    def first(x):  # type: ignore[no-untyped-def]
        out = source(x)
        leaked.append(out)
        return out

    with pytest.raises(apiary.RegistrationError) as info:

        @app.workflow
        def second(x):  # type: ignore[no-untyped-def]
            return source(leaked[0])

    refused(info, "'second'", "another workflow")


def test_a_body_that_raises_is_reported(app: apiary.App) -> None:
    with pytest.raises(apiary.RegistrationError) as info:

        @app.workflow
        def broken(x):  # type: ignore[no-untyped-def]
            raise KeyError("oops")

    refused(info, "'broken'", "KeyError", "oops")


@pytest.mark.parametrize("name", ["", "1hotel", "hotel app", "hotel.app", None])
def test_an_app_name_must_be_an_identifier(name: Any) -> None:
    with pytest.raises(apiary.RegistrationError, match="App name"):
        apiary.App(name)


def test_an_app_name_may_contain_dashes() -> None:
    assert apiary.App("hotel-2").name == "hotel-2"


@pytest.mark.parametrize("ddl", ["", "   ", None])
def test_schema_takes_non_empty_sql(ddl: Any) -> None:
    app = apiary.App("schemas")
    with pytest.raises(apiary.RegistrationError) as info:
        app.schema(ddl)
    refused(info, "'schemas'", "schema()")


# -- raw SQL and statements declared in bodies --------------------------------------------


def test_a_raw_string_literal_passed_to_ctx_is_refused_at_decoration() -> None:
    app = apiary.App("raw")
    with pytest.raises(apiary.RegistrationError) as info:

        @app.function
        def raw_literal(ctx: apiary.TxContext, hotel_id: int) -> Any:
            return ctx.query("SELECT available FROM rooms WHERE hotel_id = ?", hotel_id)

    refused(info, "'raw_literal'", "raw SQL", "ctx.query()")
    assert "raw_literal" not in app.functions


def test_an_f_string_passed_to_ctx_is_refused_at_decoration() -> None:
    app = apiary.App("raw")
    with pytest.raises(apiary.RegistrationError) as info:

        @app.function
        def raw_fstring(ctx: apiary.TxContext, table: str) -> Any:
            return ctx.execute(f"DELETE FROM {table}")

    refused(info, "'raw_fstring'", "raw SQL", "ctx.execute()")


def test_a_module_level_string_passed_to_ctx_is_refused_at_decoration() -> None:
    app = apiary.App("raw")
    with pytest.raises(apiary.RegistrationError) as info:

        @app.function
        def raw_global(context: apiary.TxContext) -> Any:
            return context.query_one(RAW_TEXT)

    refused(info, "'raw_global'", "raw SQL", "context.query_one()")


def test_a_function_declaring_statements_in_its_body_is_refused_when_compiled(
    tmp_path: Path,
) -> None:
    app = apiary.App("inline")

    @app.function
    def inline(ctx: apiary.TxContext, hotel_id: int) -> Any:
        stmt = apiary.sql("SELECT available FROM rooms WHERE hotel_id = ?")
        return ctx.query(stmt, hotel_id)

    @app.workflow
    def wf(hotel_id):  # type: ignore[no-untyped-def]
        return inline(hotel_id)

    assert "inline" in app.functions  # decoration accepted it
    with pytest.raises(apiary.RegistrationError) as info:
        apiary.Runtime(app, f"sqlite:///{tmp_path / 'inline.db'}")
    refused(info, "'inline'", "apiary.sql()", "body")
    assert not (tmp_path / "inline.db").exists()


def test_declaring_statements_in_a_body_is_refused_even_outside_workflows(
    tmp_path: Path,
) -> None:
    app = apiary.App("inline_alone")

    @app.function
    def inline_alone(ctx: apiary.TxContext) -> Any:
        return ctx.query(apiary.sql("SELECT 1"))

    with pytest.raises(apiary.RegistrationError) as info:
        apiary.Runtime(app, f"sqlite:///{tmp_path / 'inline.db'}")
    refused(info, "'inline_alone'", "apiary.sql()")


# -- statement discovery -------------------------------------------------------------------


def test_statements_are_found_through_every_kind_of_reference() -> None:
    app = apiary.App("discovery")
    local_statement = apiary.sql("SELECT day FROM rooms WHERE available > ?")

    class Local:
        PICK = apiary.sql("SELECT hotel_id FROM rooms WHERE day = ?")
        SKIP = apiary.sql("DELETE FROM rooms WHERE day = ?")

    @app.function
    def global_name(ctx: apiary.TxContext, hotel_id: int) -> Any:
        return ctx.query(READ_ROOM, hotel_id)

    @app.function
    def module_attribute(ctx: apiary.TxContext, day: int) -> Any:
        return ctx.query(queries.BY_DAY, day)

    @app.function
    def class_attribute(ctx: apiary.TxContext, hotel_id: int, day: int) -> Any:
        return ctx.execute(Statements.BOOK, hotel_id, day, "ann")

    @app.function
    def local_class_attribute(ctx: apiary.TxContext, day: int) -> Any:
        return ctx.query(Local.PICK, day)

    @app.function
    def closure(ctx: apiary.TxContext, n: int) -> Any:
        return ctx.query(local_statement, n)

    @app.function
    def default_argument(
        ctx: apiary.TxContext, hotel_id: int, *, stmt: apiary.Statement = TAKE_ROOM
    ) -> Any:
        return ctx.execute(stmt, hotel_id)

    @app.function
    def dict_of_statements(ctx: apiary.TxContext) -> Any:
        return ctx.query(DICT_STATEMENTS["count"])

    @app.function
    def helper(ctx: apiary.TxContext, hotel_id: int) -> Any:
        return read_bookings(ctx, hotel_id)

    @app.function
    def helper_of_helper(ctx: apiary.TxContext, hotel_id: int) -> Any:
        return clear_through_helper(ctx, hotel_id)

    found = {name: texts(defn) for name, defn in app.functions.items()}
    assert found["global_name"] == {READ_ROOM.text}
    assert found["module_attribute"] == {queries.BY_DAY.text}
    assert found["class_attribute"] == {Statements.BOOK.text}
    assert found["local_class_attribute"] == {Local.PICK.text}
    assert found["closure"] == {local_statement.text}
    assert found["default_argument"] == {TAKE_ROOM.text}
    # A dict is taken whole: the key is only known when the function runs.
    assert found["dict_of_statements"] == {s.text for s in DICT_STATEMENTS.values()}
    assert found["helper"] == {HELPER_READ.text}
    assert found["helper_of_helper"] == {HELPER_WRITE.text}

    read_only = {name: defn.read_only for name, defn in app.functions.items()}
    assert read_only == {
        "global_name": True,
        "module_attribute": True,
        "class_attribute": False,
        "local_class_attribute": True,
        "closure": True,
        "default_argument": False,
        "dict_of_statements": False,
        "helper": True,
        "helper_of_helper": False,
    }


def test_a_function_without_statements_is_read_only() -> None:
    app = apiary.App("pure")

    @app.function
    def pure(ctx: apiary.TxContext, x: int) -> int:
        return x + 1

    assert app.functions["pure"].statements == []
    assert app.functions["pure"].read_only is True
    assert app.functions["pure"].statement_texts == frozenset()


def test_statement_objects_found_are_the_declared_ones() -> None:
    app = apiary.App("identity")

    @app.function
    def uses(ctx: apiary.TxContext, hotel_id: int) -> Any:
        return ctx.query(READ_ROOM, hotel_id)

    assert app.functions["uses"].statements == [READ_ROOM]
    assert app.functions["uses"].statements[0] is READ_ROOM


# -- the hotel example of DESIGN §2 --------------------------------------------------------


@pytest.fixture(scope="module")
def hotel() -> types.ModuleType:
    spec = importlib.util.spec_from_file_location("apiary_test_hotel_example", HOTEL_PATH)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_hotel_workflow_dag(hotel: types.ModuleType) -> None:
    app = hotel.app
    assert sorted(app.workflows) == ["book_room", "hotel_report", "open_hotel"]
    graph = app.workflows["book_room"].graph
    assert graph.params == ["hotel_id", "day", "customer"]
    shape = [(n.id, n.function, n.step, n.parents, n.group) for n in graph.nodes]
    assert shape == [
        ("check_avail", "check_avail", False, [], 1),
        ("reserve", "reserve", False, ["check_avail"], 1),
        ("send_email", "send_email", True, ["reserve"], None),
    ]
    assert graph.groups == {1: ["check_avail", "reserve"]}
    assert graph.output == ["n", "reserve"]
    by_id = {n.id: n for n in graph.nodes}
    assert by_id["check_avail"].args == {"hotel_id": ["p", "hotel_id"], "day": ["p", "day"]}
    assert by_id["reserve"].args == {
        "hotel_id": ["p", "hotel_id"],
        "day": ["p", "day"],
        "customer": ["p", "customer"],
        "ok": ["n", "check_avail"],
    }
    assert by_id["send_email"].args == {"customer": ["p", "customer"], "booked": ["n", "reserve"]}


def test_the_hotel_functions_are_classified(hotel: types.ModuleType) -> None:
    functions = hotel.app.functions
    assert set(functions) == {"check_avail", "reserve", "open_days", "occupancy"}
    assert set(hotel.app.steps) == {"send_email"}
    assert texts(functions["check_avail"]) == {hotel.AVAILABLE.text}
    assert texts(functions["reserve"]) == {hotel.TAKE_ROOM.text, hotel.ADD_BOOKING.text}
    assert texts(functions["open_days"]) == {hotel.OPEN_DAY.text}
    assert texts(functions["occupancy"]) == {hotel.ROOMS.text, hotel.BOOKINGS.text}
    assert {name: d.read_only for name, d in functions.items()} == {
        "check_avail": True,
        "reserve": False,
        "open_days": False,
        "occupancy": True,
    }
    assert all(d.partition == "hotel_id" for d in functions.values())


def test_the_hotel_single_call_workflows(hotel: types.ModuleType) -> None:
    report = hotel.app.workflows["hotel_report"].graph
    assert [(n.id, n.parents, n.group) for n in report.nodes] == [("occupancy", [], None)]
    assert report.groups == {}
    assert report.output == ["n", "occupancy"]


# -- direct calls pass through ---------------------------------------------------------------


class FakeRoomsContext:
    """A plain stand-in context: answers the one availability query from a dict."""

    def __init__(self, available: dict[tuple[int, int], int]) -> None:
        self.available = available
        self.executed: list[tuple[str, tuple[Any, ...]]] = []

    def query_one(self, stmt: apiary.Statement, *params: Any) -> tuple[Any, ...] | None:
        value = self.available.get(params)  # type: ignore[arg-type]
        return None if value is None else (value,)

    def execute(self, stmt: apiary.Statement, *params: Any) -> int:
        self.executed.append((stmt.text, params))
        return 1


def test_calling_a_function_outside_a_workflow_runs_it(hotel: types.ModuleType) -> None:
    ctx = FakeRoomsContext({(1, 3): 2, (1, 4): 0})
    assert hotel.check_avail(ctx, 1, 3) is True
    assert hotel.check_avail(ctx, hotel_id=1, day=4) is False
    assert hotel.check_avail(ctx, 2, 3) is False

    assert hotel.reserve(ctx, 1, 3, "ann", False) is False
    assert ctx.executed == []
    assert hotel.reserve(ctx, 1, 3, "ann", True) is True
    assert ctx.executed == [
        (hotel.TAKE_ROOM.text, (1, 3)),
        (hotel.ADD_BOOKING.text, (1, 3, "ann")),
    ]


def test_calling_a_step_outside_a_workflow_runs_it(hotel: types.ModuleType) -> None:
    ctx = apiary.StepContext("wf-1", "wf-1/send_email")
    assert hotel.send_email(ctx, "ann", True) == ("mail to ann (key wf-1/send_email): booked=True")


def test_a_registered_function_keeps_its_name_and_docs(hotel: types.ModuleType) -> None:
    assert hotel.check_avail.name == "check_avail"
    assert hotel.check_avail.__doc__ == "Whether the hotel has a room left on that day."
    assert hotel.check_avail.__wrapped__ is hotel.app.functions["check_avail"].fn
