"""The HTTP API of a frontend, against a real server on a real port, on every engine."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.apps import ROOT, load_example
from tests.frontend_support import RunningFrontend, running_frontend

HOTEL_SOURCE = (ROOT / "examples" / "hotel.py").read_text()


@pytest.fixture
def served(engine_url: str) -> Iterator[RunningFrontend]:
    hotel = load_example("hotel")
    with running_frontend(engine_url, hotel.app, key_ttl=0.3, heartbeat=0.5) as running:
        yield running


def call(
    served: RunningFrontend,
    method: str,
    path: str,
    *,
    key: str | None = "invoke",
    body: Any = None,
    content: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    sent = dict(headers or {})
    if key == "invoke":
        sent["Authorization"] = f"Bearer {served.invoke}"
    elif key == "admin":
        sent["Authorization"] = f"Bearer {served.admin}"
    elif key is not None:
        sent["Authorization"] = key
    with httpx.Client(base_url=served.url, timeout=30) as client:
        return client.request(method, path, json=body, content=content, headers=sent)


def book(
    served: RunningFrontend, customer: str, key: str | None = None, day: int = 3
) -> httpx.Response:
    headers = {"Idempotency-Key": key} if key else None
    body = {"hotel_id": 1, "day": day, "customer": customer}
    return call(served, "POST", "/v1/workflows/book_room", body=body, headers=headers)


def open_hotel(served: RunningFrontend, rooms: int = 2) -> None:
    body = {"hotel_id": 1, "first_day": 1, "days": 5, "rooms": rooms}
    answer = call(served, "POST", "/v1/workflows/open_hotel", body=body)
    assert answer.status_code == 200, answer.text


def deploy(served: RunningFrontend, source: str) -> httpx.Response:
    body = {"source": source, "module": "hotel_v2"}
    return call(served, "POST", "/v1/apps", key="admin", body=body)


def error_of(answer: httpx.Response) -> dict[str, Any]:
    assert answer.headers["content-type"].startswith("application/json")
    error: dict[str, Any] = answer.json()["error"]
    assert error["message"]
    return error


def test_health_needs_no_key(served: RunningFrontend) -> None:
    answer = call(served, "GET", "/v1/health", key=None)
    assert answer.status_code == 200
    assert answer.json()["status"] == "ok"
    assert answer.json()["app"] == "hotel"


def test_a_workflow_runs_once_per_idempotency_key(served: RunningFrontend) -> None:
    open_hotel(served)
    first = book(served, "ann", key="order-1")
    assert first.status_code == 200, first.text
    assert first.json() == {"workflow_id": "order-1", "status": "SUCCESS", "output": True}
    again = book(served, "ann", key="order-1")
    assert again.json() == first.json()
    report = call(served, "POST", "/v1/workflows/hotel_report", body={"hotel_id": 1})
    assert report.json()["output"]["bookings"] == [[3, "ann"]]

    status = call(served, "GET", "/v1/workflows/order-1")
    assert status.status_code == 200
    assert status.json() == {
        "workflow_id": "order-1",
        "name": "book_room",
        "status": "SUCCESS",
        "output": True,
    }


def test_without_a_key_generated_ids_are_used(served: RunningFrontend) -> None:
    open_hotel(served)
    first = book(served, "ann").json()["workflow_id"]
    second = book(served, "bob").json()["workflow_id"]
    assert first != second
    client = call(served, "POST", "/v1/clients")
    assert client.status_code == 200
    assert isinstance(client.json()["client_id"], int)


@pytest.mark.parametrize(
    ("authorization", "kind"),
    [
        (None, "AuthenticationError"),
        ("Bearer", "AuthenticationError"),
        ("Bearer apk_nothing_here", "AuthenticationError"),
        ("Basic dXNlcjpwdw==", "AuthenticationError"),
    ],
)
def test_missing_or_bad_keys_get_401(
    served: RunningFrontend, authorization: str | None, kind: str
) -> None:
    answer = call(served, "GET", "/v1/workflows/x", key=authorization)
    assert answer.status_code == 401
    assert error_of(answer)["type"] == kind
    assert answer.headers["www-authenticate"] == "Bearer"


def test_a_revoked_key_stops_working_within_its_ttl(served: RunningFrontend) -> None:
    created = call(served, "POST", "/v1/keys", key="admin", body={"role": "invoke"})
    assert created.status_code == 201, created.text
    key, key_id = created.json()["key"], created.json()["key_id"]
    assert call(served, "GET", "/v1/health", key=f"Bearer {key}").status_code == 200
    assert call(served, "POST", "/v1/clients", key=f"Bearer {key}").status_code == 200
    revoked = call(served, "DELETE", f"/v1/keys/{key_id}", key="admin")
    assert revoked.status_code == 200
    time.sleep(0.5)  # the key TTL of this frontend is 0.3 s
    assert call(served, "POST", "/v1/clients", key=f"Bearer {key}").status_code == 401
    listed = call(served, "GET", "/v1/keys", key="admin").json()["keys"]
    assert any(k["key_id"] == key_id and k["revoked_at"] for k in listed)
    assert key not in str(listed)


def test_an_invoke_key_on_an_admin_route_gets_403(served: RunningFrontend) -> None:
    for method, path in [("POST", "/v1/apps"), ("GET", "/v1/apps"), ("POST", "/v1/keys")]:
        answer = call(served, method, path, body={})
        assert answer.status_code == 403, (method, path)
        assert error_of(answer)["type"] == "PermissionDeniedError"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "JSON object"),
        (b'{"hotel_id": 1, "day": "three", "customer": "ann"}', "day"),
        (b'{"hotel_id": true, "day": 3, "customer": "ann"}', "hotel_id"),
        (b'{"hotel_id": 1, "day": 3}', "customer"),
        (b'{"hotel_id": 1, "day": 3, "customer": "ann", "extra": 1}', "extra"),
    ],
)
def test_bad_requests_get_400_and_change_nothing(
    served: RunningFrontend, content: bytes, message: str
) -> None:
    open_hotel(served)
    answer = call(
        served,
        "POST",
        "/v1/workflows/book_room",
        content=content,
        headers={"Content-Type": "application/json", "Idempotency-Key": "bad-1"},
    )
    assert answer.status_code == 400, answer.text
    error = error_of(answer)
    assert error["type"] == "InvalidArgumentsError"
    assert message in error["message"]
    assert call(served, "GET", "/v1/workflows/bad-1").status_code == 404
    report = call(served, "POST", "/v1/workflows/hotel_report", body={"hotel_id": 1})
    assert report.json()["output"]["bookings"] == []


def test_unknown_names_get_404(served: RunningFrontend) -> None:
    answer = call(served, "POST", "/v1/workflows/no_such_workflow", body={})
    assert answer.status_code == 404
    assert error_of(answer)["type"] == "NotFoundError"
    assert call(served, "GET", "/v1/workflows/no-such-id").status_code == 404
    unknown = call(served, "GET", "/v2/whatever")
    assert unknown.status_code == 404
    assert error_of(unknown)["type"] == "NotFoundError"


def test_an_oversized_body_gets_413(served: RunningFrontend) -> None:
    big = {"hotel_id": 1, "day": 3, "customer": "x" * (2 << 20)}
    answer = call(served, "POST", "/v1/workflows/book_room", body=big)
    assert answer.status_code == 413
    assert error_of(answer)["type"] == "InvalidArgumentsError"


def test_reusing_a_key_for_other_arguments_gets_409(served: RunningFrontend) -> None:
    open_hotel(served)
    assert book(served, "ann", key="order-9").status_code == 200
    answer = book(served, "bob", key="order-9")
    assert answer.status_code == 409
    assert error_of(answer)["type"] == "WorkflowConflictError"


def test_an_application_error_is_a_stable_422(served: RunningFrontend) -> None:
    open_hotel(served)
    assert book(served, "ann", key="first").status_code == 200
    # The same customer again violates the bookings primary key inside reserve.
    answers = [book(served, "ann", key="second") for _ in range(3)]
    assert all(a.status_code == 422 for a in answers)
    bodies = [a.json() for a in answers]
    assert bodies[0] == bodies[1] == bodies[2]
    assert bodies[0]["status"] == "ERROR"
    assert bodies[0]["workflow_id"] == "second"
    assert bodies[0]["error"]["type"] == "FunctionError"
    assert bodies[0]["error"]["function"] == "reserve"
    status = call(served, "GET", "/v1/workflows/second").json()
    assert status["status"] == "ERROR"
    assert status["error"] == bodies[0]["error"]


def test_openapi_describes_every_workflow(served: RunningFrontend) -> None:
    document = call(served, "GET", "/openapi.json").json()
    assert document["openapi"].startswith("3.1")
    assert "/v1/workflows/book_room" in document["paths"]
    schema = document["paths"]["/v1/workflows/book_room"]["post"]["requestBody"]["content"][
        "application/json"
    ]["schema"]
    assert schema["properties"]["customer"]["type"] == "string"
    assert set(schema["required"]) == {"hotel_id", "day", "customer"}


def test_a_deploy_is_served_on_the_next_request_and_a_broken_one_changes_nothing(
    served: RunningFrontend,
) -> None:
    open_hotel(served, rooms=1)
    before = call(served, "GET", "/v1/apps", key="admin").json()

    broken = (
        HOTEL_SOURCE
        + "\n\n@app.workflow\ndef bad(x: int):\n    if check_avail(x, x):\n        pass\n"
    )
    answer = call(
        served, "POST", "/v1/apps", key="admin", body={"source": broken, "module": "hotel_v2"}
    )
    assert answer.status_code == 400
    assert error_of(answer)["type"] == "RegistrationError"
    assert "bad" in error_of(answer)["message"]
    assert call(served, "GET", "/v1/apps", key="admin").json() == before

    changed = HOTEL_SOURCE.replace(
        'return f"mail to {customer} (key {ctx.idempotency_key}): booked={booked}"',
        'return f"v2 mail to {customer}: booked={booked}"',
    ).replace(
        '    return booked\n\n\n@app.function(partition="hotel_id")\ndef open_days',
        '    return {"booked": booked, "version": 2}\n\n\n'
        '@app.function(partition="hotel_id")\ndef open_days',
    )
    assert changed != HOTEL_SOURCE
    deployed = call(
        served, "POST", "/v1/apps", key="admin", body={"source": changed, "module": "hotel_v2"}
    )
    assert deployed.status_code == 200, deployed.text
    assert deployed.json()["version"] != before["current"]
    answer = book(served, "ann", key="after-deploy")
    assert answer.status_code == 200, answer.text
    assert answer.json()["output"] == {"booked": True, "version": 2}
    listed = call(served, "GET", "/v1/apps", key="admin").json()
    assert listed["current"] == deployed.json()["version"]
    assert len(listed["deployments"]) == 2


@pytest.mark.parametrize("trace", [True, False])
def test_a_frontend_traces_into_its_store_unless_told_not_to(
    engine_url: str, tmp_path: Any, trace: bool
) -> None:
    from apiary._tracing.store import TraceStore

    store = tmp_path / "trace.duckdb"
    hotel = load_example("hotel")
    with running_frontend(
        engine_url,
        hotel.app,
        trace_store=str(store),
        trace=trace,  # type: ignore[arg-type]
    ) as served:
        open_hotel(served)
        assert book(served, "ann", key="t-1").status_code == 200
    # Stopping the frontend spooled a last round (from its spooler's own process).
    if not trace:
        assert not store.exists()
        return
    with TraceStore(str(store), {}, read_only=True) as found:
        history = found.row_history("bookings", hotel_id=1, day=3, customer="ann")
    assert [(a["op"], a["function"], a["workflow_id"]) for a in history] == [
        ("insert", "reserve", "t-1")
    ]


def test_a_deploy_with_a_new_table_gets_it_traced_with_its_types(
    engine_url: str, tmp_path: Any
) -> None:
    # The frontend's spooler is restarted with the new version's schemas, so the new
    # table's events are typed from its CREATE TABLE, not stored as text.
    from apiary._tracing.store import TraceStore

    store = tmp_path / "trace.duckdb"
    added = (
        HOTEL_SOURCE
        + """

app.schema("CREATE TABLE IF NOT EXISTS reviews (id INTEGER PRIMARY KEY, stars INTEGER, at DATE)")
ADD_REVIEW = apiary.sql("INSERT INTO reviews (id, stars, at) VALUES (?, ?, ?)")


@app.function
def add_review(ctx: apiary.TxContext, id: int, stars: int, at: str) -> int:
    return ctx.execute(ADD_REVIEW, id, stars, at)


@app.workflow
def review(id: int, stars: int, at: str):  # type: ignore[no-untyped-def]
    return add_review(id, stars, at)
"""
    )
    hotel = load_example("hotel")
    with running_frontend(engine_url, hotel.app, trace_store=str(store)) as served:  # type: ignore[arg-type]
        answer = call(
            served, "POST", "/v1/apps", key="admin", body={"source": added, "module": "hotel_r"}
        )
        assert answer.status_code == 200, answer.text
        body = {"id": 1, "stars": 5, "at": "2026-11-27"}
        answer = call(served, "POST", "/v1/workflows/review", body=body)
        assert answer.status_code == 200, answer.text
    with TraceStore(str(store), {}, read_only=True) as found:
        _, types = found.sql(
            "SELECT column_name, data_type FROM information_schema.columns "
            "WHERE table_name = 'reviews_events' AND column_name IN ('id', 'stars', 'at') "
            "ORDER BY column_name"
        )
        assert types == [("at", "DATE"), ("id", "BIGINT"), ("stars", "BIGINT")]
        (event,) = found.row_history("reviews", id=1)
    assert event["op"] == "insert"
