"""The public surface: the exported names and the one error hierarchy."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

import apiary
from apiary import _errors

EXPORTED = [
    "ApiaryError",
    "App",
    "AsyncClient",
    "AuthenticationError",
    "Client",
    "DatabaseUnavailableError",
    "FunctionError",
    "InvalidArgumentsError",
    "NotFoundError",
    "NotInstalledError",
    "PermissionDeniedError",
    "RegistrationError",
    "Runtime",
    "Statement",
    "StepContext",
    "TransactionConflictError",
    "TxContext",
    "WorkflowConflictError",
    "WorkflowStatus",
    "__version__",
    "sql",
    "transaction",
]

ERRORS = [
    cls
    for _, cls in inspect.getmembers(_errors, inspect.isclass)
    if cls.__module__ == _errors.__name__
]


def test_all_is_pinned() -> None:
    assert apiary.__all__ == EXPORTED


def test_all_is_sorted_and_unique() -> None:
    assert apiary.__all__ == sorted(apiary.__all__)
    assert len(set(apiary.__all__)) == len(apiary.__all__)


@pytest.mark.parametrize("name", EXPORTED)
def test_every_exported_name_resolves(name: str) -> None:
    assert getattr(apiary, name) is not None


def test_star_import_gives_exactly_the_exported_names() -> None:
    namespace: dict[str, object] = {}
    exec("from apiary import *", namespace)
    namespace.pop("__builtins__")
    assert sorted(namespace) == EXPORTED


def test_version_is_a_string() -> None:
    assert isinstance(apiary.__version__, str)
    assert apiary.__version__.count(".") >= 1


def test_the_py_typed_marker_ships() -> None:
    assert Path(inspect.getfile(apiary)).with_name("py.typed").is_file()


# -- the error hierarchy -----------------------------------------------------------------


def test_the_error_module_defines_the_documented_errors() -> None:
    names = {cls.__name__ for cls in ERRORS}
    assert names == {
        "ApiaryError",
        "RegistrationError",
        "InvalidArgumentsError",
        "NotFoundError",
        "WorkflowConflictError",
        "FunctionError",
        "TransactionConflictError",
        "NotInstalledError",
        "DatabaseUnavailableError",
        "AuthenticationError",
        "PermissionDeniedError",
    }


@pytest.mark.parametrize("cls", ERRORS, ids=lambda cls: cls.__name__)
def test_every_error_derives_from_apiary_error(cls: type) -> None:
    assert issubclass(cls, apiary.ApiaryError)
    assert issubclass(cls, Exception)
    assert cls.__name__.endswith("Error")


@pytest.mark.parametrize("cls", ERRORS, ids=lambda cls: cls.__name__)
def test_every_error_is_exported(cls: type) -> None:
    assert getattr(apiary, cls.__name__) is cls


def test_the_base_error_is_an_exception() -> None:
    assert apiary.ApiaryError.__bases__ == (Exception,)


def test_function_error_keeps_its_parts() -> None:
    error = apiary.FunctionError(
        "ValueError", "no rooms left", function="reserve", workflow_id="c7-42"
    )
    assert error.type_name == "ValueError"
    assert error.message == "no rooms left"
    assert error.function == "reserve"
    assert error.workflow_id == "c7-42"
    text = str(error)
    assert "ValueError" in text
    assert "reserve" in text
    assert "no rooms left" in text


def test_function_error_round_trips_through_json() -> None:
    error = apiary.FunctionError("KeyError", "'hotel 9'", function="check_avail")
    data = error.to_json()
    assert data == {"type": "KeyError", "message": "'hotel 9'", "function": "check_avail"}
    again = apiary.FunctionError.from_json(data, workflow_id="wf-1")
    assert isinstance(again, apiary.FunctionError)
    assert again.type_name == error.type_name
    assert again.message == error.message
    assert again.function == error.function
    assert again.workflow_id == "wf-1"
    assert str(again) == str(error)
    assert again.to_json() == data


def test_function_error_without_a_function() -> None:
    error = apiary.FunctionError("RuntimeError", "boom")
    assert error.function is None
    assert apiary.FunctionError.from_json(error.to_json()).to_json() == error.to_json()
    assert str(error) == "RuntimeError: boom"


def test_function_error_can_be_raised_and_caught_as_apiary_error() -> None:
    with pytest.raises(apiary.ApiaryError) as info:
        raise apiary.FunctionError("ValueError", "bad", function="f")
    assert isinstance(info.value, apiary.FunctionError)
    assert info.value.type_name == "ValueError"
