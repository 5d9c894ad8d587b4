"""Hostile input over HTTP: every refusal is a 4xx with a JSON error, and changes nothing.

A real frontend on a real port serves the chaos bank on each engine under test. Requests
come from hand-written cases (malformed JSON, wrong types, huge numbers and strings,
unicode, NUL characters, SQL-injection strings, oversized bodies, unknown routes, missing,
forged and revoked keys on every route) and from hypothesis, which builds requests from
the frontend's own ``/openapi.json``: its paths, methods, parameters and request schemas,
with values drawn from the schemas and from hostile JSON.

Expected of every answer: never a 5xx; a 4xx carries ``{"error": {"type", "message"}}``
(a 422, a workflow the application failed, carries it under the workflow's answer); and
a refused request (400, 401, 403, 404, 405, 409, 413) leaves the database as it was.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sqlite3
import string
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import apiary
from apiary._frontend.http import MAX_NESTING
from tests.chaos import bank
from tests.frontend_support import RunningFrontend, running_frontend

pytestmark = pytest.mark.chaos

MakeRuntime = Callable[..., apiary.Runtime]
ACCOUNTS = 4
OPENING = 100
#: Answers that refuse a request: the database must not change.
REFUSALS = frozenset({400, 401, 403, 404, 405, 409, 413})
ANSWERS = REFUSALS | {200, 201, 422}
FUZZ_EXAMPLES = int(os.environ.get("APIARY_FUZZ_EXAMPLES", "150"))
# Tables that change on their own while a frontend runs (heartbeats, the spooler).
VOLATILE = ("frontends", "trace_staging")

INJECTIONS = [
    "'; DROP TABLE accounts; --",
    "1 OR 1=1",
    "1; UPDATE accounts SET balance = 0",
    '" OR ""="',
    "') ; DELETE FROM ledger; --",
    "$$; DROP SCHEMA apiary CASCADE; $$",
    "\\'; SELECT pg_sleep(10); --",
    "%s%s%s%n",
    "{sys}workflows",
    "?",
]
UNICODE = ["ünïcödé", "💸🏦", "\u202etxet lrt", "e\u0301", "\uffff", "\U0010ffff", "a" * 5000]


@dataclass
class Served:
    """The frontend, its URL and keys, and a snapshot of its database."""

    running: RunningFrontend
    snapshot: Callable[[], dict[str, list[tuple[Any, ...]]]]
    revoked: str
    forged: str

    @property
    def url(self) -> str:
        return self.running.url

    def auth(self, key: str | None) -> dict[str, str]:
        return {} if key is None else {"Authorization": f"Bearer {key}"}


def _snapshotter(url: str) -> Callable[[], dict[str, list[tuple[Any, ...]]]]:
    """A function that reads every table of the database, sorted (not through Apiary)."""
    if url.startswith("sqlite:"):
        path = url.removeprefix("sqlite:///")

        def read_sqlite() -> dict[str, list[tuple[Any, ...]]]:
            with sqlite3.connect(path) as conn:
                names = [
                    row[0]
                    for row in conn.execute(
                        "SELECT name FROM sqlite_master WHERE type = 'table' "
                        "AND name NOT LIKE 'sqlite_%'"
                    )
                ]
                return {
                    name: sorted(conn.execute(f'SELECT * FROM "{name}"'), key=repr)
                    for name in names
                    if not name.endswith(VOLATILE)
                }

        return read_sqlite
    if url.startswith("cluster:"):  # a cluster of one partition: read that database
        from apiary._engines.cluster import ClusterConfig

        url = ClusterConfig.from_url(url).partitions[0]
    plain = url.partition("?")[0]

    def read_postgres() -> dict[str, list[tuple[Any, ...]]]:
        with psycopg.connect(plain) as conn:
            names = conn.execute(
                "SELECT table_schema, table_name FROM information_schema.tables "
                "WHERE table_schema IN ('public', 'apiary') AND table_type = 'BASE TABLE'"
            ).fetchall()
            return {
                f"{schema}.{name}": sorted(
                    conn.execute(f'SELECT * FROM "{schema}"."{name}"').fetchall(), key=repr
                )
                for schema, name in names
                if not name.endswith(VOLATILE)
            }

    return read_postgres


@pytest.fixture
def served(make_runtime: MakeRuntime, engine_url: str) -> Iterator[Served]:
    rt = make_runtime(bank.app, trace_store=None)
    rt.call("open_accounts", count=ACCOUNTS, balance=OPENING)
    with running_frontend(engine_url, bank.app, key_ttl=0.1) as running:
        keys = running.frontend.keys
        assert keys is not None
        revoked = keys.create("invoke", "to be revoked")
        assert keys.revoke(revoked.key_id)
        key_id = running.invoke.split("_")[1]
        forged = f"apk_{key_id}_{'A' * 43}"  # a real key's ID, a made-up secret
        yield Served(running, _snapshotter(engine_url), revoked.key, forged)


def _check_error_shape(response: httpx.Response, what: str) -> None:
    assert response.status_code < 500, f"{what}: {response.status_code} {response.text[:500]}"
    assert response.status_code in ANSWERS, f"{what}: {response.status_code} {response.text}"
    if response.status_code < 400:
        return
    assert response.headers["content-type"].startswith("application/json"), what
    body = response.json()
    error = body["error"]
    assert isinstance(error["type"], str), (what, body)
    assert error["type"], (what, body)
    assert isinstance(error["message"], str), (what, body)
    assert error["message"], (what, body)
    if response.status_code == 422:
        assert body["status"] == "ERROR", (what, body)
        assert error["type"] == "FunctionError", (what, body)


# The routes of docs/FRONTEND.md that need a key: (method, path, role, JSON body).
ROUTES: list[tuple[str, str, str, Any]] = [
    (
        "POST",
        "/v1/workflows/transfer",
        "invoke",
        {"transfer_id": "t", "src": 0, "dst": 1, "amount": 1},
    ),
    ("GET", "/v1/workflows/some-id", "invoke", None),
    ("POST", "/v1/clients", "invoke", None),
    ("GET", "/openapi.json", "invoke", None),
    ("POST", "/v1/apps", "admin", {"source": "import apiary\n", "module": "m"}),
    ("GET", "/v1/apps", "admin", None),
    ("POST", "/v1/keys", "admin", {"role": "admin", "label": "intruder"}),
    ("GET", "/v1/keys", "admin", None),
    ("DELETE", "/v1/keys/0123456789ab", "admin", None),
]


def test_every_route_refuses_missing_forged_and_revoked_keys(served: Served) -> None:
    before = served.snapshot()
    bad: dict[str, dict[str, str] | list[tuple[bytes, bytes]]] = {
        "no key": {},
        "empty bearer": {"Authorization": "Bearer"},
        "not bearer": {"Authorization": f"Basic {served.running.admin}"},
        "garbage": {"Authorization": "Bearer garbage"},
        "forged secret": served.auth(served.forged),
        "unknown id": served.auth("apk_ffffffffffff_" + "B" * 43),
        "revoked": served.auth(served.revoked),
        "huge": served.auth("apk_" + "a" * 20_000),
        "injection": served.auth("apk_' OR '1'='1_" + "x" * 43),
        "latin-1 bytes": [(b"Authorization", b"Bearer \xff\xfe\xe9")],
    }
    with httpx.Client(base_url=served.url, timeout=30) as http:
        for method, path, role, body in ROUTES:
            for label, headers in bad.items():
                response = http.request(method, path, json=body, headers=headers)
                what = f"{method} {path} with {label}"
                assert response.status_code == 401, (what, response.text)
                assert response.headers["www-authenticate"] == "Bearer", what
                _check_error_shape(response, what)
                assert response.json()["error"]["type"] == "AuthenticationError", what
            if role == "admin":
                response = http.request(
                    method, path, json=body, headers=served.auth(served.running.invoke)
                )
                assert response.status_code == 403, (method, path, response.text)
                _check_error_shape(response, f"{method} {path} with an invoke key")
        # The health check needs no key, and ignores a bad one.
        assert http.get("/v1/health", headers={"Authorization": "Bearer junk"}).status_code == 200
    assert served.snapshot() == before


def _raw(text: str | bytes) -> bytes:
    return text.encode() if isinstance(text, str) else text


MALFORMED: dict[str, bytes] = {
    "truncated": b'{"transfer_id": "t", "src": 0',
    "trailing garbage": b'{"transfer_id": "t", "src": 0, "dst": 1, "amount": 1} x',
    "single quotes": b"{'transfer_id': 't'}",
    "not utf-8": b'{"transfer_id": "\xff\xfe", "src": 0, "dst": 1, "amount": 1}',
    "utf-16": '{"transfer_id": "t", "src": 0, "dst": 1, "amount": 1}'.encode("utf-16"),
    "byte order mark": _raw('\ufeff{"transfer_id": "t", "src": 0, "dst": 1, "amount": 1}'),
    "bare word": b"transfer",
    "array": b"[0, 1, 1]",
    "string": b'"transfer"',
    "number": b"42",
    "null": b"null",
    "true": b"true",
    "NaN amount": b'{"transfer_id": "t", "src": 0, "dst": 1, "amount": NaN}',
    "Infinity amount": b'{"transfer_id": "t", "src": 0, "dst": 1, "amount": Infinity}',
    "1e999 amount": b'{"transfer_id": "t", "src": 0, "dst": 1, "amount": 1e999}',
    "5000-digit amount": _raw(
        '{"transfer_id": "t", "src": 0, "dst": 1, "amount": 9' + "9" * 4999 + "}"
    ),
    "float amount": b'{"transfer_id": "t", "src": 0, "dst": 1, "amount": 1.5}',
    "string amount": b'{"transfer_id": "t", "src": 0, "dst": 1, "amount": "1"}',
    "bool amount": b'{"transfer_id": "t", "src": 0, "dst": 1, "amount": true}',
    "null src": b'{"transfer_id": "t", "src": null, "dst": 1, "amount": 1}',
    "list src": b'{"transfer_id": "t", "src": [0], "dst": 1, "amount": 1}',
    "int transfer_id": b'{"transfer_id": 7, "src": 0, "dst": 1, "amount": 1}',
    "injection src": b'{"transfer_id": "t", "src": "0; DROP TABLE accounts", "dst": 1}',
    "missing": b'{"transfer_id": "t", "src": 0}',
    "unknown argument": b'{"transfer_id": "t", "src": 0, "dst": 1, "amount": 1, "admin": true}',
    "duplicate keys": b'{"transfer_id": "t", "src": 0, "dst": 1, "amount": 1, "amount": "x"}',
    "lone surrogate": b'{"transfer_id": "\\ud800", "src": 0, "dst": 1, "amount": 1}',
    "lone surrogate key": b'{"\\udfff": 1}',
    "deep arrays": b"[" * 100_000 + b"]" * 100_000,
    "deep objects": b'{"a":' * 50_000 + b"1" + b"}" * 50_000,
    "deep argument": _raw(
        '{"transfer_id": ' + "[" * (MAX_NESTING + 1) + "]" * (MAX_NESTING + 1) + ', "src": 0}'
    ),
    "nul byte outside a string": b'{"transfer_id": "t",\x00 "src": 0, "dst": 1, "amount": 1}',
}


def test_malformed_bodies_are_refused_with_a_json_error(served: Served) -> None:
    before = served.snapshot()
    failures = []
    with httpx.Client(base_url=served.url, timeout=60) as http:
        headers = {**served.auth(served.running.invoke), "Content-Type": "application/json"}
        for label, body in MALFORMED.items():
            response = http.post("/v1/workflows/transfer", content=body, headers=headers)
            try:
                _check_error_shape(response, label)
                assert response.status_code == 400, response.text[:300]
                assert response.json()["error"]["type"] == "InvalidArgumentsError"
            except AssertionError as exc:
                failures.append(f"{label}: {exc}")
        # Over the limit (1 MiB): declared, and streamed without a length.
        big = b'{"transfer_id": "' + b"x" * (2 << 20) + b'"}'
        response = http.post("/v1/workflows/transfer", content=big, headers=headers)
        assert response.status_code == 413, response.text[:300]
        _check_error_shape(response, "2 MiB")

        def chunks() -> Iterator[bytes]:
            yield b'{"transfer_id": "'
            for _ in range(40):
                yield b"y" * 65_536

        response = http.post("/v1/workflows/transfer", content=chunks(), headers=headers)
        assert response.status_code == 413, response.text[:300]
        _check_error_shape(response, "2.5 MiB streamed")
        # Bad Idempotency-Keys.
        ok = {"transfer_id": "t", "src": 0, "dst": 1, "amount": 1}
        for key in ["", "k" * 10_000]:
            response = http.post(
                "/v1/workflows/transfer", json=ok, headers={**headers, "Idempotency-Key": key}
            )
            assert response.status_code == 400, (key[:10], response.text)
            _check_error_shape(response, f"Idempotency-Key of {len(key)}")
        # Admin bodies.
        admin = served.auth(served.running.admin)
        admin_bodies: list[tuple[str, Any]] = [
            ("/v1/keys", {"role": "root"}),
            ("/v1/keys", {"role": "invoke", "label": {"x": 1}}),
            ("/v1/keys", {"role": "invoke", "label": "l" * 100_000}),
            ("/v1/keys", [1, 2]),
            ("/v1/apps", {"source": "def (", "module": "m"}),
            ("/v1/apps", {"source": "\x00", "module": "m"}),
            ("/v1/apps", {"source": "import apiary\n", "module": "../../etc/passwd"}),
            ("/v1/apps", {"source": 42}),
            ("/v1/apps", {"source": "raise SystemExit(3)", "module": "m"}),  # was a 500
        ]
        for path, document in admin_bodies:
            response = http.post(path, json=document, headers=admin)
            try:
                _check_error_shape(response, f"{path} {document!r:.60}")
                assert response.status_code == 400, response.text[:300]
            except AssertionError as exc:
                failures.append(f"{path} {document!r:.60}: {exc}")
    assert failures == []
    assert served.snapshot() == before


def test_unknown_routes_and_methods_get_json_errors(served: Served) -> None:
    with httpx.Client(base_url=served.url, timeout=30) as http:
        headers = served.auth(served.running.admin)
        for method, path, status in [
            ("GET", "/", 404),
            ("GET", "/v2/workflows/transfer", 404),
            ("POST", "/v1/workflows/no_such_workflow", 404),
            ("POST", "/v1/workflows/'; DROP TABLE accounts; --", 404),
            ("GET", "/v1/workflows/%00", 404),
            ("GET", "/v1/workflows/%ED%A0%80", 404),  # a surrogate, percent-encoded
            ("GET", "/v1/workflows/" + "z" * 60_000, 404),
            ("GET", "/v1/workflows/..%2F..%2Fetc%2Fpasswd", 404),
            ("DELETE", "/v1/keys/%00", 404),
            ("DELETE", "/v1/keys/%2F", 404),  # not a redirect to /v1/keys/
            ("GET", "/v1/keys/", 404),
            ("PUT", "/v1/workflows/transfer", 405),
            ("DELETE", "/v1/health", 405),
            ("PATCH", "/v1/keys", 405),
            ("GET", "/openapi.yaml", 404),
        ]:
            response = http.request(method, path, headers=headers)
            assert response.status_code == status, (method, path[:40], response.text[:300])
            _check_error_shape(response, f"{method} {path[:40]}")


def test_hostile_values_are_stored_verbatim_or_refused_by_the_function(served: Served) -> None:
    # Strings that look like SQL are data: they are stored as they came, and nothing runs.
    # Values a database cannot store fail the function (422, recorded), never the server.
    with apiary.Client(served.url, served.running.invoke, retry_for=0) as client:
        stored: dict[str, str] = {}
        for index, text in enumerate(INJECTIONS + UNICODE):
            output = client.run(
                "transfer", transfer_id=text, src=index % 4, dst=(index + 1) % 4, amount=1
            )
            assert output["transfer"] == text
            stored[text] = text
        for name, value in [("nul", "a\x00b"), ("big", "x" * 900_000)]:
            refused = ""
            try:
                client.run("transfer", transfer_id=value, src=0, dst=1, amount=1)
                stored[name] = value
            except apiary.FunctionError as exc:
                refused = exc.type_name
            # PostgreSQL: no NUL in text, and an index entry has a size limit.
            assert refused in ("", "DataError", "ProgramLimitExceeded"), (name, refused)
        for amount in [10**30, 2**63, -(2**63) - 1, -(10**30), 0, -1]:
            with pytest.raises(apiary.FunctionError):
                client.run("transfer", transfer_id=f"amount {amount}", src=0, dst=1, amount=amount)
        for account in [2**63, -(2**70), -1, ACCOUNTS]:
            with pytest.raises(apiary.FunctionError):
                client.run("transfer", transfer_id=f"src {account}", src=account, dst=1, amount=1)
    snapshot = served.snapshot()
    ledger = next(rows for name, rows in snapshot.items() if name.endswith("ledger"))
    assert {row[0] for row in ledger} == set(stored.values())
    accounts = next(rows for name, rows in snapshot.items() if name.endswith("accounts"))
    assert len(accounts) == ACCOUNTS
    assert sum(row[1] for row in accounts) == ACCOUNTS * OPENING


def test_a_client_gone_before_its_body_arrived_is_not_a_server_error(
    served: Served, caplog: pytest.LogCaptureFixture
) -> None:
    # Found by the long chaos run: an abandoned request cut while the frontend was still
    # reading its body was logged as an unexpected error and answered 500.
    caplog.set_level(logging.WARNING, logger="apiary")
    before = served.snapshot()
    host, port = served.url.removeprefix("http://").split(":")
    head = (
        "POST /v1/workflows/transfer HTTP/1.1\r\nHost: test\r\n"
        f"Authorization: Bearer {served.running.invoke}\r\n"
        "Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
    )
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(head.encode() + b'{"transfer_id": "gone", "src": 0')
        time.sleep(0.3)  # the frontend is waiting for the rest
    time.sleep(0.5)
    with apiary.Client(served.url, served.running.invoke) as client:
        client.run("transfer", transfer_id="after", src=0, dst=1, amount=1)
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == []
    after = served.snapshot()
    ledger = next(name for name in after if name.endswith("ledger"))
    assert [row[0] for row in after[ledger]] == ["after"]
    assert [row[0] for row in before[ledger]] == []


# -- fuzzing from /openapi.json ---------------------------------------------------------------

HOSTILE_TEXT = st.text(
    alphabet=st.characters(codec=None, categories=None), max_size=40
) | st.sampled_from(INJECTIONS + UNICODE)
HOSTILE_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=2**62, max_value=2**80)
    | st.floats()
    | HOSTILE_TEXT,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(HOSTILE_TEXT, children, max_size=4)
    ),
    max_leaves=12,
)


def _resolve(document: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        node: Any = document
        for part in schema["$ref"].removeprefix("#/").split("/"):
            node = node[part]
        schema = node
    return schema


def _from_schema(document: dict[str, Any], schema: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Values of a JSON schema (the subset the frontend's documents use)."""
    schema = _resolve(document, schema)
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    for combinator in ("anyOf", "oneOf"):
        if combinator in schema:
            return st.one_of([_from_schema(document, s) for s in schema[combinator]])
    kind = schema.get("type")
    if isinstance(kind, list):
        return st.one_of([_from_schema(document, {**schema, "type": k}) for k in kind])
    if kind == "string":
        return st.text(
            min_size=schema.get("minLength", 0), max_size=min(schema.get("maxLength", 60), 60)
        )
    if kind == "integer":
        return st.integers(min_value=-(2**63), max_value=2**63 - 1) | st.integers(0, ACCOUNTS)
    if kind == "number":
        return st.floats(allow_nan=False, allow_infinity=False)
    if kind == "boolean":
        return st.booleans()
    if kind == "null":
        return st.none()
    if kind == "array":
        return st.lists(_from_schema(document, schema.get("items", {})), max_size=4)
    if kind == "object":
        properties = schema.get("properties", {})
        required = set(schema.get("required", []))
        return st.fixed_dictionaries(
            {name: _from_schema(document, s) for name, s in properties.items() if name in required},
            optional={
                name: _from_schema(document, s)
                for name, s in properties.items()
                if name not in required
            },
        )
    return HOSTILE_JSON


@dataclass
class Operation:
    method: str
    path: str
    body: dict[str, Any] | None
    admin: bool


def _operations(document: dict[str, Any]) -> list[Operation]:
    found = []
    for path, item in document["paths"].items():
        for method, operation in item.items():
            content = operation.get("requestBody", {}).get("content", {})
            body = content.get("application/json", {}).get("schema")
            admin = path.startswith(("/v1/apps", "/v1/keys"))
            found.append(Operation(method.upper(), path, body, admin))
    return found


def _mutated(document: dict[str, Any], schema: dict[str, Any]) -> st.SearchStrategy[Any]:
    """A valid body with one argument replaced by hostile JSON."""
    valid = _from_schema(document, schema)

    def mutate(value: Any, data: st.DataObject) -> Any:
        if isinstance(value, dict) and value:
            key = data.draw(st.sampled_from(sorted(value)))
            return {**value, key: data.draw(HOSTILE_JSON)}
        return data.draw(HOSTILE_JSON)

    return st.tuples(valid, st.data()).map(lambda pair: mutate(*pair))


def _path_value() -> st.SearchStrategy[str]:
    text = st.text(alphabet=st.characters(codec=None), min_size=1, max_size=80)
    return text.map(lambda s: urllib.parse.quote(s.encode("utf-8", "surrogatepass"), safe=""))


def test_fuzzing_the_api_from_its_openapi_document(served: Served) -> None:
    with httpx.Client(base_url=served.url, timeout=60) as http:
        document = http.get("/openapi.json", headers=served.auth(served.running.invoke)).json()
        operations = _operations(document)
        assert len(operations) >= 10, [o.path for o in operations]
        keys = st.sampled_from(
            [
                served.running.invoke,
                served.running.admin,
                None,
                served.revoked,
                served.forged,
                "apk_" + "0" * 12 + "_" + "1" * 43,
            ]
        ) | st.text(alphabet=string.printable.strip() + " ", max_size=60)
        bodies: dict[str, st.SearchStrategy[bytes]] = {}
        for op in operations:
            if op.body is None:
                continue
            as_json = st.one_of(
                _from_schema(document, op.body), _mutated(document, op.body), HOSTILE_JSON
            ).map(lambda value: json.dumps(value).encode())
            bodies[op.method + op.path] = as_json | st.binary(max_size=200)

        before = [served.snapshot()]
        requests = [0]

        @settings(
            max_examples=FUZZ_EXAMPLES,
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        )
        @given(data=st.data())
        def exchange(data: st.DataObject) -> None:
            op = data.draw(st.sampled_from(operations), label="operation")
            path = op.path
            for name in ("workflow_id", "key_id", "name"):
                if "{" + name + "}" in path:
                    path = path.replace("{" + name + "}", data.draw(_path_value(), label=name))
            key = data.draw(keys, label="key")
            headers = {"Content-Type": "application/json"}
            if key is not None:
                # h11 will not send a header value with whitespace at either end.
                headers["Authorization"] = f"Bearer {key}".strip()
            if data.draw(st.booleans(), label="with Idempotency-Key"):
                headers["Idempotency-Key"] = data.draw(
                    st.text(alphabet=string.printable.strip(), max_size=300), label="id key"
                )
            body = None
            if op.method in ("POST", "PUT"):
                strategy = bodies.get(op.method + op.path, st.binary(max_size=100))
                body = data.draw(strategy, label="body")
            response = http.request(op.method, path, content=body, headers=headers)
            requests[0] += 1
            what = f"{op.method} {path[:80]} {body[:200]!r}" if body else f"{op.method} {path}"
            _check_error_shape(response, what)
            after = served.snapshot()
            if response.status_code in REFUSALS:
                assert after == before[0], f"{what} was refused but changed the database"
            before[0] = after

        exchange()
        assert requests[0] >= min(FUZZ_EXAMPLES, 50)
