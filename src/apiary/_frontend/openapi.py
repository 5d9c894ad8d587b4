"""The OpenAPI 3.1 document of a frontend (``GET /openapi.json``).

One path per workflow, its request body the workflow's JSON Schema from
:mod:`apiary._frontend.schema`, plus the fixed routes of docs/FRONTEND.md. The answers
described here are those of :mod:`apiary._frontend.http`; keep the two in step.
"""

from __future__ import annotations

import inspect
import typing
from typing import Any

from apiary._app import App, WorkflowDef
from apiary._frontend.schema import request_schema
from apiary._runtime import MAX_WORKFLOW_ID

__all__ = ["openapi_document"]

# -- OpenAPI ---------------------------------------------------------------------------------
# The answers below are those of apiary._frontend.http; keep the two in step.


def _ref(kind: str, name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/{kind}/{name}"}


def _content(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def _obj(*required: str, **properties: dict[str, Any]) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        schema["required"] = list(required)
    return schema


def _typed(json_type: str | list[str], description: str | None = None) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": json_type}
    if description is not None:
        schema["description"] = description
    return schema


def _array(items: dict[str, Any]) -> dict[str, Any]:
    return {"type": "array", "items": items}


# Error answers: status -> (component name, description).
_ERRORS: dict[str, tuple[str, str]] = {
    "400": (
        "BadRequest",
        "Malformed JSON; arguments missing, unknown or of the wrong type (checked against "
        "the signature before any database work); or a bad Idempotency-Key. Do not retry.",
    ),
    "401": ("Unauthorized", "No API key, or an unknown or revoked one (AuthenticationError)."),
    "403": ("Forbidden", "The key's role does not allow this route (PermissionDeniedError)."),
    "404": ("NotFound", "Unknown workflow name, workflow ID, key or route."),
    "409": (
        "Conflict",
        "The Idempotency-Key names a run of another workflow or with other arguments "
        "(WorkflowConflictError).",
    ),
    "413": ("PayloadTooLarge", "The body is over the server's limit (--max-body)."),
    "503": (
        "Unavailable",
        "The database is unavailable, or conflicts outlasted the retries "
        "(DatabaseUnavailableError, TransactionConflictError). Nothing was committed that "
        "a retry would repeat: retry with the same Idempotency-Key.",
    ),
}


def _components() -> dict[str, Any]:
    # Built afresh on every call: the caller may change the document it gets.
    function_error = _obj(
        "type",
        "message",
        type=_typed("string", "FunctionError"),
        message=_typed("string"),
        exception=_typed("string", "The class of the exception the application raised."),
        detail=_typed("string", "The exception's message."),
        function=_typed(["string", "null"], "The function or step that raised."),
    )
    key = {
        "key_id": _typed("string"),
        "role": {"type": "string", "enum": ["invoke", "admin"]},
        "label": _typed(["string", "null"]),
        "created_at": {},
    }
    schemas: dict[str, Any] = {
        "Error": _obj(
            "error",
            error=_obj(
                "type",
                "message",
                type=_typed("string", "The ApiaryError class, e.g. InvalidArgumentsError."),
                message=_typed("string"),
            ),
        ),
        "FunctionError": function_error,
        "WorkflowResult": _obj(
            "workflow_id",
            "status",
            "output",
            workflow_id=_typed("string"),
            status=_typed("string", "SUCCESS"),
            output={"description": "The workflow's output, a JSON value."},
        ),
        "WorkflowFailure": _obj(
            "workflow_id",
            "status",
            "error",
            workflow_id=_typed("string"),
            status=_typed("string", "ERROR"),
            error=_ref("schemas", "FunctionError"),
        ),
        "WorkflowStatus": _obj(
            "workflow_id",
            "status",
            workflow_id=_typed("string"),
            name=_typed("string"),
            status={"type": "string", "enum": ["PENDING", "SUCCESS", "ERROR"]},
            output={"description": "Set on success."},
            error=_ref("schemas", "FunctionError"),
        ),
        "ClientId": _obj("client_id", client_id=_typed("integer")),
        "Health": _obj(
            "status",
            status=_typed("string", "ok, or unavailable (with a 503)"),
            error=_typed("string", "Why the database cannot be reached."),
            app=_typed("string"),
            version=_typed("string"),
            frontend_id={},
        ),
        "Deploy": _obj(
            "source",
            source=_typed("string", "The Python source of the app module."),
            module=_typed("string", "The module's name."),
        ),
        "Deployed": _obj(
            app=_typed("string"),
            version=_typed("string"),
            module=_typed("string"),
            workflows=_array(_typed("string")),
        ),
        "Deployments": _obj(
            app=_typed("string"),
            current=_typed("string", "The version served."),
            deployments=_array(
                _obj(version=_typed("string"), module=_typed("string"), deployed_at={})
            ),
        ),
        "NewKey": _obj(
            "role",
            role={"type": "string", "enum": ["invoke", "admin"]},
            label=_typed(["string", "null"]),
        ),
        "CreatedKey": _obj(
            "key",
            **key,
            key=_typed("string", "apk_<id>_<secret>: shown in this answer only."),
        ),
        "Keys": _obj("keys", keys=_array(_obj(**key, revoked_at={}))),
        "Revoked": _obj("key_id", key_id=_typed("string"), revoked=_typed("boolean")),
    }
    responses = {
        name: {"description": description, "content": _content(_ref("schemas", "Error"))}
        for name, description in _ERRORS.values()
    }
    bearer = {
        "type": "http",
        "scheme": "bearer",
        "description": "An API key (apk_<id>_<secret>), made with `apiary keys create`.",
    }
    return {"schemas": schemas, "responses": responses, "securitySchemes": {"bearer": bearer}}


class _Route(typing.NamedTuple):
    path: str
    method: str
    operation_id: str
    tag: str
    summary: str
    answer: str  # a schema component, or "" for any JSON object
    errors: tuple[str, ...]
    body: str | None = None  # the request body's schema component
    status: str = "200"


_ADMIN = ("401", "403", "503")
_ADMIN_WITH_BODY = ("400", "401", "403", "413", "503")
_ROUTES = (
    _Route(
        "/v1/workflows/{workflow_id}",
        "get",
        "get_workflow_status",
        "workflows",
        "A workflow's status row.",
        "WorkflowStatus",
        ("401", "403", "404", "503"),
    ),
    _Route(
        "/v1/clients",
        "post",
        "create_client",
        "clients",
        "A new client ID, for clients that name their workflows {client_id}-{n}.",
        "ClientId",
        _ADMIN,
    ),
    _Route("/v1/health", "get", "health", "meta", "Whether the database answers.", "Health", ()),
    _Route("/openapi.json", "get", "openapi", "meta", "This document.", "", ("401", "403")),
    _Route(
        "/v1/apps",
        "post",
        "deploy_app",
        "admin",
        "Deploy an app module: registered, installed and served from the next request.",
        "Deployed",
        _ADMIN_WITH_BODY,
        body="Deploy",
    ),
    _Route("/v1/apps", "get", "list_apps", "admin", "Deployed versions.", "Deployments", _ADMIN),
    _Route(
        "/v1/keys",
        "post",
        "create_key",
        "admin",
        "Create an API key; the key is in this answer only.",
        "CreatedKey",
        _ADMIN_WITH_BODY,
        body="NewKey",
        status="201",
    ),
    _Route(
        "/v1/keys", "get", "list_keys", "admin", "API keys, never their secrets.", "Keys", _ADMIN
    ),
    _Route(
        "/v1/keys/{key_id}",
        "delete",
        "revoke_key",
        "admin",
        "Revoke an API key (within --key-ttl seconds on every frontend).",
        "Revoked",
        ("401", "403", "404", "503"),
    ),
)

_PATH_PARAMETERS: dict[str, tuple[str, dict[str, Any]]] = {
    "workflow_id": (
        "The workflow ID (the Idempotency-Key of its run).",
        {"type": "string", "minLength": 1, "maxLength": MAX_WORKFLOW_ID},
    ),
    "key_id": ("The key's ID: the <id> of apk_<id>_<secret>.", {"type": "string"}),
}


def _fixed_operation(route: _Route) -> dict[str, Any]:
    answer = _ref("schemas", route.answer) if route.answer else {"type": "object"}
    responses: dict[str, Any] = {route.status: {"description": "OK", "content": _content(answer)}}
    for status in route.errors:
        responses[status] = _ref("responses", _ERRORS[status][0])
    operation: dict[str, Any] = {
        "operationId": route.operation_id,
        "tags": [route.tag],
        "summary": route.summary,
    }
    names = [part[1:-1] for part in route.path.split("/") if part.startswith("{")]
    if names:
        operation["parameters"] = [
            {
                "name": name,
                "in": "path",
                "required": True,
                "description": _PATH_PARAMETERS[name][0],
                "schema": dict(_PATH_PARAMETERS[name][1]),
            }
            for name in names
        ]
    if route.body is not None:
        operation["requestBody"] = {
            "required": True,
            "content": _content(_ref("schemas", route.body)),
        }
    if route.operation_id == "health":
        # No key needed; a 503 carries the health object, not an error.
        operation["security"] = []
        responses["503"] = {
            "description": "The database cannot be reached.",
            "content": _content(answer),
        }
    operation["responses"] = responses
    return operation


def _workflow_operation(workflow: WorkflowDef) -> dict[str, Any]:
    body = request_schema(workflow)
    doc = inspect.getdoc(workflow.fn) or ""
    operation: dict[str, Any] = {
        "operationId": f"run_{workflow.name}",
        "tags": ["workflows"],
        "summary": doc.splitlines()[0] if doc else f"Run the workflow {workflow.name}.",
    }
    if doc:
        operation["description"] = doc
    idempotency_key = {
        "name": "Idempotency-Key",
        "in": "header",
        "required": False,
        "description": "Names the run (its workflow ID): a retry with the same key runs "
        "nothing again and gets the recorded answer.",
        "schema": {"type": "string", "minLength": 1, "maxLength": MAX_WORKFLOW_ID},
    }
    operation["parameters"] = [idempotency_key]
    # An empty body counts as {}: needed only when a parameter has no default.
    operation["requestBody"] = {
        "required": bool(body.get("required")),
        "content": _content(body),
    }
    answers = {
        "200": ("The workflow ran to completion.", "WorkflowResult"),
        "422": (
            "The application raised; every retry of this key gets this answer.",
            "WorkflowFailure",
        ),
    }
    responses: dict[str, Any] = {
        status: {"description": text, "content": _content(_ref("schemas", name))}
        for status, (text, name) in answers.items()
    }
    for status in ("400", "401", "403", "404", "409", "413", "503"):
        responses[status] = _ref("responses", _ERRORS[status][0])
    operation["responses"] = dict(sorted(responses.items()))
    return operation


def openapi_document(app: App, *, version: str, title: str | None = None) -> dict[str, Any]:
    """The OpenAPI 3.1 document of the frontend's routes for ``app`` (``/openapi.json``).

    One ``POST /v1/workflows/<name>`` per workflow (sorted by name), with the request
    schema from its signature and its docstring as description, and the fixed routes of
    ``docs/FRONTEND.md``. Every route but ``GET /v1/health`` needs a bearer API key.
    Equal apps give equal documents; each call returns a new one.
    """
    paths: dict[str, Any] = {}
    for name in sorted(app.workflows):
        paths[f"/v1/workflows/{name}"] = {"post": _workflow_operation(app.workflows[name])}
    for route in _ROUTES:
        paths.setdefault(route.path, {})[route.method] = _fixed_operation(route)
    return {
        "openapi": "3.1.0",
        "jsonSchemaDialect": "https://json-schema.org/draft/2020-12/schema",
        "info": {
            "title": title if title is not None else app.name,
            "version": version,
            "description": f"The workflows of the Apiary app {app.name!r}; each runs "
            "exactly once per Idempotency-Key.",
        },
        "tags": [
            {"name": "workflows", "description": "Run workflows and read their status."},
            {"name": "clients", "description": "Client IDs, for naming workflow runs."},
            {"name": "admin", "description": "Deploys and API keys (admin keys only)."},
            {"name": "meta", "description": "Health and this document."},
        ],
        "paths": paths,
        "components": _components(),
        "security": [{"bearer": []}],
    }
