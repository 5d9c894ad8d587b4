"""apiary.Client and apiary.AsyncClient against a real frontend on a real port.

Behaviour is proven against a real server (uvicorn in a thread, SQLite in ``tmp_path``):
the effect rows of ``tests/apps/client_app.py`` count how many times a workflow's write
took effect. Only the pure parts (URL and ID checks, error mapping, the retry plan) are
tested on their own, with hand-made answers.
"""

from __future__ import annotations

import asyncio
import datetime
import decimal
import logging
import re
import socket
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import apiary
from apiary._client import AsyncClient, Client
from apiary._client_protocol import MAX_BACKOFF, _Pause, _Protocol, _segment, _Send
from apiary._runtime import WorkflowStatus
from tests.apps import assert_same, client_app
from tests.frontend_support import RunningFrontend, free_port, running_frontend

APP_SOURCE = Path(client_app.__file__).read_text()


@pytest.fixture(autouse=True)
def _fresh_app() -> Iterator[None]:
    client_app.reset()
    yield
    client_app.reset()


@pytest.fixture
def db(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'apiary.db'}"


@pytest.fixture
def served(db: str) -> Iterator[RunningFrontend]:
    with running_frontend(db, client_app.app, heartbeat=0.5) as running:
        yield running


@pytest.fixture
def dead_url() -> Iterator[str]:
    """A URL where nothing listens: the port is bound, so no one else takes it, but not
    listening, so a connection is refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"


@pytest.fixture
def server_errors(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Fail the test if the frontend logged an error (an unexpected exception is a 500)."""
    caplog.set_level(logging.WARNING, logger="apiary")
    yield
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, [r.getMessage() for r in errors]


def effects(client: Client, workflow_id: str) -> int:
    count: int = client.run("count_effects", run_id=workflow_id)
    return count


# ------------------------------------------------------------------------------------------
# Running workflows
# ------------------------------------------------------------------------------------------


def test_run_returns_outputs_and_numbers_its_workflows(served: RunningFrontend) -> None:
    with Client(served.url, served.invoke) as client:
        assert client.last_workflow_id is None
        first = client.run("add", name="a", amount=2)
        second = client.run("add", name="a", amount=3)
        assert client.last_workflow_id == second["workflow_id"]
        # An ID taken ahead names the next run.
        taken = client.new_workflow_id()
        assert client.run("add", workflow_id=taken, name="a", amount=0)["workflow_id"] == taken
        assert client.last_workflow_id == taken
    match = re.fullmatch(r"(\d+)-1", first["workflow_id"])
    assert match, first
    assert first == {"total": 2, "workflow_id": f"{match[1]}-1"}
    assert second == {"total": 5, "workflow_id": f"{match[1]}-2"}
    assert taken == f"{match[1]}-3"

    # Another client takes another client ID: the two never name the same run.
    with Client(served.url, served.invoke) as other:
        third = other.run("add", name="a", amount=1)
    assert not third["workflow_id"].startswith(f"{match[1]}-")
    assert third["total"] == 6


def test_a_given_workflow_id_replays_without_executing_again(served: RunningFrontend) -> None:
    with Client(served.url, served.invoke) as client:
        # IDs may hold '/' and the like; they are one path segment in the status URL.
        for workflow_id in ("order/7", "..", "a b?c#d%2F"):
            output = client.run("add", workflow_id=workflow_id, name=workflow_id, amount=4)
            assert output == {"total": 4, "workflow_id": workflow_id}
            again = client.run("add", workflow_id=workflow_id, name=workflow_id, amount=4)
            assert again == output
            assert effects(client, workflow_id) == 1
            status = client.status(workflow_id)
            assert status == WorkflowStatus(workflow_id, "add", "SUCCESS", output, None)


def test_tagged_values_survive_both_ways(served: RunningFrontend) -> None:
    value = {
        "price": decimal.Decimal("12.50"),
        "blob": b"\x00\xff",
        "at": datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.UTC),
        "day": datetime.date(2026, 1, 2),
        "id": uuid.UUID(int=7),
        "nested": [{"$looks_like_a_tag": 1}, (1, 2.5)],
    }
    with Client(served.url, served.invoke) as client:
        echoed = client.run("echo", value=value)
    assert_same(echoed, {**value, "nested": [{"$looks_like_a_tag": 1}, [1, 2.5]]})


def test_threads_share_one_client_id(served: RunningFrontend) -> None:
    outputs: list[dict[str, Any]] = []
    with Client(served.url, served.invoke) as client:

        def add() -> None:
            output = client.run("add", name="t", amount=1)
            # Each thread is told about its own run.
            assert client.last_workflow_id == output["workflow_id"]
            outputs.append(output)

        threads = [threading.Thread(target=add) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    ids = [output["workflow_id"] for output in outputs]
    prefixes = {workflow_id.split("-")[0] for workflow_id in ids}
    assert len(prefixes) == 1
    assert sorted(int(workflow_id.split("-")[1]) for workflow_id in ids) == list(range(1, 9))
    assert sorted(output["total"] for output in outputs) == list(range(1, 9))


def test_deploy_and_health(served: RunningFrontend) -> None:
    source = APP_SOURCE + (
        "\n\n@app.workflow\ndef add_twice(name: str, amount: int):\n    return bump(name, amount)\n"
    )
    with Client(served.url, served.admin) as admin:
        health = admin.health()
        assert health["status"] == "ok"
        assert health["app"] == "client_app"
        assert "/v1/workflows/add" in admin.openapi()["paths"]
        deployed = admin.deploy(source, "client_app_v2")
        assert deployed["app"] == "client_app"
        assert "add_twice" in deployed["workflows"]
        assert admin.health()["version"] == deployed["version"]
        assert admin.run("add_twice", name="d", amount=1)["total"] == 1

        with pytest.raises(apiary.RegistrationError):
            admin.deploy("import apiary\napp = apiary.App('client_app')\nraise ValueError", "bad")
        assert admin.health()["version"] == deployed["version"]


# ------------------------------------------------------------------------------------------
# Errors: 4xx answers are final and raise their class
# ------------------------------------------------------------------------------------------


def test_each_error_answer_raises_its_class(served: RunningFrontend) -> None:
    with Client(served.url, "apk_0123456789ab_" + "x" * 43, retry_for=0) as stranger:
        with pytest.raises(apiary.AuthenticationError, match="invalid or revoked"):
            stranger.run("add", name="a", amount=1)
        with pytest.raises(apiary.AuthenticationError):
            stranger.status("order-1")

    with Client(served.url, served.invoke) as client:
        with pytest.raises(apiary.PermissionDeniedError, match="admin"):
            client.deploy(APP_SOURCE, "client_app_v2")
        with pytest.raises(apiary.NotFoundError, match="no_such"):
            client.run("no_such_workflow", name="a")
        with pytest.raises(apiary.NotFoundError):
            client.status("never-ran")
        with pytest.raises(apiary.InvalidArgumentsError, match="amount"):
            client.run("add", name="a", amount="three")
        with pytest.raises(apiary.InvalidArgumentsError, match="amount"):
            client.run("add", name="a")
        with pytest.raises(apiary.InvalidArgumentsError, match="limit"):  # 413
            client.run("add", name="x" * (2 << 20), amount=1)

        client.run("add", workflow_id="order-1", name="a", amount=1)
        with pytest.raises(apiary.WorkflowConflictError):
            client.run("add", workflow_id="order-1", name="a", amount=2)
        with pytest.raises(apiary.WorkflowConflictError):
            client.run("add_slowly", workflow_id="order-1", name="a", amount=1)
        assert effects(client, "order-1") == 1


def test_application_errors_raise_function_error(served: RunningFrontend) -> None:
    with Client(served.url, served.invoke) as client:
        raised = []
        for _ in range(2):  # the retry of a finished workflow raises the same error
            with pytest.raises(apiary.FunctionError) as caught:
                client.run("add_over_quota", workflow_id="q-1", name="q", amount=9)
            raised.append(caught.value)
        for error in raised:
            assert error.type_name == "QuotaError"
            assert error.message == "q may not grow by 9"
            assert error.function == "refuse"
            assert error.workflow_id == "q-1"
            assert str(error) == "QuotaError in refuse: q may not grow by 9"
        assert effects(client, "q-1") == 0  # rolled back
        error_row = {"type": "QuotaError", "message": "q may not grow by 9", "function": "refuse"}
        status = client.status("q-1")
        assert status == WorkflowStatus("q-1", "add_over_quota", "ERROR", None, error_row)


def test_bad_calls_are_refused_before_any_request(dead_url: str) -> None:
    with Client(dead_url, "apk_key", retry_for=0) as client:
        with pytest.raises(apiary.InvalidArgumentsError, match="not JSON"):
            client.run("add", workflow_id="w", name=object())
        with pytest.raises(apiary.InvalidArgumentsError, match="printable ASCII"):
            client.run("add", workflow_id="café", name="a")
        for bad in ("", " padded", "x" * 257, "tab\there"):
            with pytest.raises(apiary.InvalidArgumentsError):
                client.run("add", workflow_id=bad, name="a")
    with pytest.raises(ValueError, match="at least one"):
        Client([], "k")
    with pytest.raises(ValueError, match="http://host:port"):
        Client("localhost:8080", "k")
    with pytest.raises(ValueError, match="retry_for"):
        Client("http://h", "k", retry_for=-1)


def test_missing_httpx_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "httpx", None)
    with pytest.raises(ImportError, match=re.escape("pip install 'apiary[client]'")):
        Client("http://127.0.0.1:1", "k")


# ------------------------------------------------------------------------------------------
# Retries: the same workflow ID until a frontend answers
# ------------------------------------------------------------------------------------------


def test_a_dead_frontend_is_skipped(served: RunningFrontend, dead_url: str) -> None:
    with Client([dead_url, served.url], served.invoke, retry_for=10) as client:
        output = client.run("add", workflow_id="f-1", name="f", amount=1)
        assert output == {"total": 1, "workflow_id": "f-1"}
        # Later calls start at the frontend that answered.
        assert client.run("add", name="f", amount=1)["total"] == 2
        assert client.health()["status"] == "ok"
        assert effects(client, "f-1") == 1


def test_a_kept_alive_connection_the_frontend_closed_is_replaced_at_once(
    served: RunningFrontend,
) -> None:
    # uvicorn closes a connection idle for 5 s. The next call goes out again at once on a
    # new connection: with retry_for=0 there is no retry to fall back on.
    with Client(served.url, served.invoke, retry_for=0) as client:
        assert client.run("add", name="k", amount=1)["total"] == 1
        time.sleep(5.5)
        assert client.run("add", name="k", amount=1)["total"] == 2
        assert client.health()["status"] == "ok"


def test_a_lost_answer_is_asked_for_again(served: RunningFrontend, server_errors: None) -> None:
    # The first attempt outlasts the client's timeout (the step sleeps); the retry, with
    # the same workflow ID, finds the run and finishes it: its write took effect once.
    client_app.PAUSES.append(1.0)
    with Client(served.url, served.invoke, timeout=0.4, retry_for=20) as client:
        output = client.run("add_slowly", workflow_id="slow-1", name="s", amount=5)
        assert output == {"total": 5, "workflow_id": "slow-1"}
        assert client_app.PAUSED.is_set()
        assert effects(client, "slow-1") == 1
        assert client.status("slow-1").status == "SUCCESS"


def test_a_frontend_restarted_on_its_port_finishes_the_workflow_once(
    db: str, server_errors: None
) -> None:
    port = free_port()
    first = running_frontend(db, client_app.app, port=port, heartbeat=0.5)
    served = first.__enter__()
    key = served.invoke
    stopped = threading.Event()
    restarted = threading.Event()
    finished = threading.Event()

    def restart() -> None:
        # Stop the frontend while it runs the first attempt (its answer will be lost),
        # then start another on the same port and database.
        client_app.PAUSED.wait(10)
        first.__exit__(None, None, None)
        stopped.set()
        time.sleep(0.2)
        with running_frontend(db, client_app.app, port=port, heartbeat=0.5):
            restarted.set()
            finished.wait(30)

    thread = threading.Thread(target=restart)
    client_app.PAUSES.append(1.0)
    thread.start()
    try:
        with Client(served.url, key, timeout=0.5, retry_for=20) as client:
            output = client.run("add_slowly", workflow_id="r-1", name="r", amount=3)
            assert restarted.is_set()
            assert output == {"total": 3, "workflow_id": "r-1"}
            assert effects(client, "r-1") == 1
            assert client.run("add", name="r", amount=1)["total"] == 4
    finally:
        finished.set()
        thread.join(30)
        if not stopped.is_set():
            first.__exit__(None, None, None)


def test_retry_for_exhausted_raises_database_unavailable(dead_url: str) -> None:
    with Client(dead_url, "apk_key", retry_for=0.3) as client:
        started = time.monotonic()
        with pytest.raises(apiary.DatabaseUnavailableError) as caught:
            client.run("add", workflow_id="order-9", name="a", amount=1)
        assert time.monotonic() - started < 2.3  # the last pause is cut at the deadline
        message = str(caught.value)
        assert "order-9" in message
        assert "may have run" in message
        assert "workflow_id='order-9' is safe" in message
        assert "ConnectError" in message
        assert isinstance(caught.value.__cause__, httpx.ConnectError)

        with pytest.raises(apiary.DatabaseUnavailableError, match="client ID"):
            client.run("add", name="a", amount=1)
        with pytest.raises(apiary.DatabaseUnavailableError):
            client.health()


def test_a_generated_id_is_named_when_the_frontend_is_gone(db: str) -> None:
    with running_frontend(db, client_app.app) as served:
        client = Client(served.url, served.invoke, retry_for=0.2)
        first = client.run("add", name="g", amount=1)["workflow_id"]
    with client, pytest.raises(apiary.DatabaseUnavailableError) as caught:
        client.run("add", name="g", amount=1)
    client_id = first.split("-")[0]
    assert f"workflow_id='{client_id}-2'" in str(caught.value)
    assert client.last_workflow_id == f"{client_id}-2"  # to retry it with


# ------------------------------------------------------------------------------------------
# AsyncClient
# ------------------------------------------------------------------------------------------


def test_async_client(served: RunningFrontend, dead_url: str) -> None:
    async def main() -> None:
        async with AsyncClient([dead_url, served.url], served.invoke, retry_for=10) as client:
            outputs = await asyncio.gather(
                *(client.run("add", name="a", amount=1) for _ in range(6))
            )
            ids = sorted(int(output["workflow_id"].split("-")[1]) for output in outputs)
            assert ids == list(range(1, 7))
            assert len({output["workflow_id"].split("-")[0] for output in outputs}) == 1

            assert client.last_workflow_id is None  # gather ran each in a task of its own
            output = await client.run("add", workflow_id="as/1", name="b", amount=2)
            assert output == {"total": 2, "workflow_id": "as/1"}
            assert client.last_workflow_id == "as/1"
            taken = await client.new_workflow_id()
            assert taken == f"{outputs[0]['workflow_id'].split('-')[0]}-7"
            assert "/v1/workflows/add" in (await client.openapi())["paths"]
            assert await client.run("add", workflow_id="as/1", name="b", amount=2) == output
            assert await client.run("count_effects", run_id="as/1") == 1
            status = await client.status("as/1")
            assert status == WorkflowStatus("as/1", "add", "SUCCESS", output, None)
            assert (await client.health())["status"] == "ok"

            with pytest.raises(apiary.FunctionError) as caught:
                await client.run("add_over_quota", name="q", amount=1)
            assert (caught.value.type_name, caught.value.function) == ("QuotaError", "refuse")
            with pytest.raises(apiary.NotFoundError):
                await client.run("no_such_workflow")
            with pytest.raises(apiary.InvalidArgumentsError):
                await client.run("add", name="a", amount=[1])
            with pytest.raises(apiary.WorkflowConflictError):
                await client.run("add", workflow_id="as/1", name="b", amount=3)
            with pytest.raises(apiary.PermissionDeniedError):
                await client.deploy(APP_SOURCE, "client_app_v2")

        async with AsyncClient(served.url, "apk_bad", retry_for=0) as stranger:
            with pytest.raises(apiary.AuthenticationError):
                await stranger.run("add", name="a", amount=1)

        async with AsyncClient(dead_url, served.invoke, retry_for=0.2) as lost:
            with pytest.raises(apiary.DatabaseUnavailableError, match="workflow_id='as-9'"):
                await lost.run("add", workflow_id="as-9", name="a", amount=1)

    asyncio.run(main())


def test_async_lost_answer_is_asked_for_again(served: RunningFrontend, server_errors: None) -> None:
    client_app.PAUSES.append(1.0)

    async def main() -> None:
        async with AsyncClient(served.url, served.invoke, timeout=0.4, retry_for=20) as client:
            output = await client.run("add_slowly", workflow_id="aslow", name="s", amount=5)
            assert output == {"total": 5, "workflow_id": "aslow"}
            assert await client.run("count_effects", run_id="aslow") == 1

    asyncio.run(main())
    assert client_app.PAUSED.is_set()


# ------------------------------------------------------------------------------------------
# The pure parts: paths, error mapping, the retry plan
# ------------------------------------------------------------------------------------------


def test_workflow_ids_are_one_path_segment() -> None:
    assert _segment("a/b") == "a%2Fb"
    assert _segment("..") == "%2E%2E"
    assert _segment(".") == "%2E"
    assert _segment("a.b") == "a.b"
    assert _segment("x?y#z") == "x%3Fy%23z"


def answer(status: int, body: Any = None, headers: dict[str, str] | None = None) -> httpx.Response:
    request = httpx.Request("POST", "http://frontend/v1/workflows/add")
    if body is None:
        return httpx.Response(status, text="<html>Bad Gateway</html>", request=request)
    return httpx.Response(status, json=body, headers=headers, request=request)


def protocol(*urls: str, retry_for: float = 60.0) -> _Protocol:
    return _Protocol(list(urls) or ["http://a"], "apk_key", retry_for)


def outcome_of(proto: _Protocol, response: httpx.Response) -> Any:
    """Decode one answer through a run's plan (no retry for a final answer)."""
    request = proto.run_request("add", "w-1", b"{}")
    plan = proto.attempts(request, proto.decode_run)
    assert isinstance(next(plan), _Send)
    try:
        plan.send(response)
    except StopIteration as done:
        return done.value
    raise AssertionError("the plan did not end")


@pytest.mark.parametrize(
    ("status", "kind", "error_class"),
    [
        (400, "InvalidArgumentsError", apiary.InvalidArgumentsError),
        (400, "RegistrationError", apiary.RegistrationError),
        (401, "AuthenticationError", apiary.AuthenticationError),
        (403, "PermissionDeniedError", apiary.PermissionDeniedError),
        (404, "NotFoundError", apiary.NotFoundError),
        (409, "WorkflowConflictError", apiary.WorkflowConflictError),
        (413, "InvalidArgumentsError", apiary.InvalidArgumentsError),
        (405, "HTTPError", apiary.ApiaryError),
        (500, "InternalError", apiary.ApiaryError),
    ],
)
def test_error_answers_map_to_classes(status: int, kind: str, error_class: type) -> None:
    body = {"error": {"type": kind, "message": "what went wrong"}}
    with pytest.raises(apiary.ApiaryError, match="what went wrong") as caught:
        outcome_of(protocol(), answer(status, body))
    assert type(caught.value) is error_class


def test_function_error_answer() -> None:
    body = {
        "workflow_id": "w-1",
        "status": "ERROR",
        "error": {
            "type": "FunctionError",
            "message": "ValueError in reserve: no such day",
            "exception": "ValueError",
            "detail": "no such day",
            "function": "reserve",
        },
    }
    with pytest.raises(apiary.FunctionError) as caught:
        outcome_of(protocol(), answer(422, body))
    error = caught.value
    assert (error.type_name, error.message) == ("ValueError", "no such day")
    assert (error.function, error.workflow_id) == ("reserve", "w-1")


def test_output_is_decoded_with_the_codec() -> None:
    body = {"workflow_id": "w-1", "status": "SUCCESS", "output": {"$decimal": "1.50"}}
    assert_same(outcome_of(protocol(), answer(200, body)), decimal.Decimal("1.50"))
    with pytest.raises(apiary.ApiaryError, match="without a JSON object"):
        outcome_of(protocol(), answer(200))


def test_the_retry_plan_rotates_backs_off_and_gives_up() -> None:
    proto = protocol("http://a", "http://b", "http://c")
    request = proto.run_request("add", "w-1", b"{}")
    plan = proto.attempts(request, proto.decode_run)
    sent: list[str] = []
    pauses: list[float] = []
    action = next(plan)
    for attempt in range(12):
        assert isinstance(action, _Send)
        sent.append(action.url)
        if attempt % 2:
            pause = plan.throw(httpx.ConnectError("refused"))
        else:
            pause = plan.send(answer(503, {"error": {"type": "X", "message": "busy"}}))
        assert isinstance(pause, _Pause)
        pauses.append(pause.seconds)
        action = plan.send(None)
    plan.close()
    assert sent[:4] == [f"{u}/v1/workflows/add" for u in ("http://a", "http://b", "http://c")] + [
        "http://a/v1/workflows/add"
    ]
    # Exponential, jittered between half and all of 50 ms * 2**n, capped at 2 s.
    for n, seconds in enumerate(pauses):
        ceiling = min(MAX_BACKOFF, 0.05 * 2**n)
        assert ceiling / 2 <= seconds <= ceiling
    assert pauses[-1] >= MAX_BACKOFF / 2

    # A 503's Retry-After is honoured (up to the cap); a 502 or 504 is retried as well.
    proto = protocol("http://a")
    plan = proto.attempts(proto.health_request(), proto.decode_object)
    next(plan)
    pause = plan.send(answer(503, {"status": "unavailable"}, {"Retry-After": "1"}))
    assert isinstance(pause, _Pause)
    assert pause.seconds == 1.0
    plan.send(None)
    pause = plan.send(answer(502))
    assert isinstance(pause, _Pause)
    assert pause.seconds < 1.0
    plan.send(None)
    assert isinstance(plan.send(answer(504)), _Pause)
    plan.close()

    # A transport error that would only repeat is raised as it is.
    plan = proto.attempts(proto.health_request(), proto.decode_object)
    next(plan)
    with pytest.raises(httpx.UnsupportedProtocol):
        plan.throw(httpx.UnsupportedProtocol("ftp"))


def test_without_patience_each_url_is_still_asked_once_for_health() -> None:
    proto = protocol("http://a", "http://b", retry_for=0)
    plan = proto.attempts(proto.health_request(), proto.decode_object, tries_each=True)
    first = next(plan)
    assert isinstance(first, _Send)
    second = plan.send(answer(503, {"status": "unavailable", "error": "disk on fire"}))
    assert isinstance(second, _Send)
    assert second.url == "http://b/v1/health"
    with pytest.raises(apiary.DatabaseUnavailableError, match="disk on fire"):
        plan.send(answer(503, {"status": "unavailable", "error": "disk on fire"}))

    # Runs give up at once (retry_for=0: one attempt).
    plan = proto.attempts(proto.run_request("add", "w-2", b"{}"), proto.decode_run)
    next(plan)
    with pytest.raises(apiary.DatabaseUnavailableError, match="w-2"):
        plan.throw(httpx.ReadTimeout("slow"))
