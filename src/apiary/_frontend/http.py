"""The HTTP API of a frontend (routes and error mapping of docs/FRONTEND.md), on Starlette.

Handlers check the key, then the request (size, JSON, arguments against the workflow's
signature) before any database work, then run the workflow through the current version's
runtime. Every error is JSON ``{"error": {"type", "message"}}`` with the status of its
class; an application error is a 422 whose body is the same on every retry.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from apiary import _bookkeeping, _codec
from apiary._bookkeeping import VersionMismatch
from apiary._errors import (
    ApiaryError,
    AuthenticationError,
    DatabaseUnavailableError,
    FunctionError,
    InvalidArgumentsError,
    NotFoundError,
    NotInstalledError,
    PermissionDeniedError,
    RegistrationError,
    TransactionConflictError,
    WorkflowConflictError,
)
from apiary._frontend import schema
from apiary._frontend.frontend import Frontend
from apiary._frontend.keys import KeyStore, bearer_token
from apiary._frontend.openapi import openapi_document
from apiary._runtime import MAX_WORKFLOW_ID, Runtime

log = logging.getLogger("apiary.frontend")

STATUS_OF: list[tuple[type[BaseException], int]] = [
    (InvalidArgumentsError, 400),
    (RegistrationError, 400),
    (AuthenticationError, 401),
    (PermissionDeniedError, 403),
    (NotFoundError, 404),
    (WorkflowConflictError, 409),
    (FunctionError, 422),
    (DatabaseUnavailableError, 503),
    (TransactionConflictError, 503),
    (NotInstalledError, 503),
]

Handler = Callable[[Request], Awaitable[Response]]


class BodyTooLarge(InvalidArgumentsError):
    """The request body is over the configured limit (413)."""


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """A JSON answer through the shared codec (tagged types survive)."""
    return Response(_codec.dumps(data), status, headers, media_type="application/json")


def error_response(exc: BaseException) -> Response:
    """The JSON error of an exception, with the status of its class."""
    if isinstance(exc, BodyTooLarge):
        return json_response({"error": _error_body(exc)}, 413)
    for cls, status in STATUS_OF:
        if isinstance(exc, cls):
            headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
            if isinstance(exc, DatabaseUnavailableError):
                headers = {"Retry-After": "1"}
            return json_response({"error": _error_body(exc)}, status, headers)
    if isinstance(exc, ApiaryError):
        return json_response({"error": _error_body(exc)}, 500)
    log.exception("unexpected error", exc_info=exc)
    return json_response(
        {"error": {"type": "InternalError", "message": "internal error; see the server log"}},
        500,
    )


def _error_body(exc: BaseException) -> dict[str, Any]:
    body: dict[str, Any] = {"type": type(exc).__name__, "message": str(exc)}
    if isinstance(exc, BodyTooLarge):
        body["type"] = InvalidArgumentsError.__name__
    if isinstance(exc, FunctionError):
        body.update(exception=exc.type_name, detail=exc.message, function=exc.function)
    return body


#: Deepest nesting of arrays and objects in a request body. Python's JSON decoder gives
#: up near 1,000 levels with a RecursionError, and the argument checks and the codec after
#: it recurse too; arguments nest a few levels.
MAX_NESTING = 100
# JSON may escape a lone UTF-16 surrogate ("\ud800"). It decodes into a str that is not
# text: no database (nor the answer) can encode it as UTF-8.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89abcdefABCDEF]")


def decode_body(data: bytes) -> Any:
    """A request body's JSON value; :class:`InvalidArgumentsError` (400) for bytes that
    are not UTF-8, text that is not JSON, nesting deeper than :data:`MAX_NESTING`, or a
    string holding a lone surrogate."""
    try:
        text = data.decode("utf-8")
        value = _codec.loads(text)
    except RecursionError:
        raise InvalidArgumentsError(_too_deep()) from None
    except (UnicodeDecodeError, ValueError) as exc:
        raise InvalidArgumentsError(f"the request body is not valid JSON: {exc}") from None
    if text.count("[") + text.count("{") > MAX_NESTING or _SURROGATE_ESCAPE.search(text):
        _check_storable(value)
    return value


def _too_deep() -> str:
    return f"the request body nests arrays or objects more than {MAX_NESTING} levels deep"


def _check_storable(value: Any) -> None:
    # Iterative: a recursive walk could itself run out of stack on what it refuses.
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                raise InvalidArgumentsError(
                    "the request body holds a string with a lone UTF-16 surrogate "
                    "(an escape in \\ud800-\\udfff without its pair), which is not text"
                ) from None
        elif isinstance(item, dict | list):
            if depth >= MAX_NESTING:
                raise InvalidArgumentsError(_too_deep())
            if isinstance(item, dict):
                stack.extend((key, depth) for key in item)
                stack.extend((child, depth + 1) for child in item.values())
            else:
                stack.extend((child, depth + 1) for child in item)


def _guarded(handler: Handler) -> Handler:
    async def run(request: Request) -> Response:
        try:
            return await handler(request)
        except Exception as exc:
            return error_response(exc)

    run.__name__ = handler.__name__
    return run


class Api:
    """The routes of one :class:`Frontend`."""

    def __init__(self, frontend: Frontend) -> None:
        self.frontend = frontend
        # Runs in flight here, by workflow ID: a client's retry of a run this frontend is
        # still executing waits for it instead of starting a second one alongside.
        self._in_flight: dict[str, tuple[str, asyncio.Future[Any]]] = frontend.in_flight

    # -- helpers -----------------------------------------------------------------------

    @property
    def keys(self) -> KeyStore:
        assert self.frontend.keys is not None, "the frontend has not started"
        return self.frontend.keys

    async def authorize(self, request: Request, role: str) -> None:
        token = bearer_token(request.headers.get("authorization"))
        await self.keys.authorize_async(token, role)

    async def body(self, request: Request) -> Any:
        limit = self.frontend.config.max_body
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise BodyTooLarge(f"the request body is {declared} bytes; the limit is {limit}")
        data = bytearray()
        try:
            async for chunk in request.stream():
                data += chunk
                if len(data) > limit:
                    raise BodyTooLarge(f"the request body is over the limit of {limit} bytes")
        except ClientDisconnect:
            # A client that gave up mid-body: nothing ran, and no one reads the answer.
            raise InvalidArgumentsError("the client left before sending the whole body") from None
        if not data:
            return {}
        return decode_body(bytes(data))

    async def blocking(self, work: Callable[..., Any], *args: Any) -> Any:
        return await self.frontend.versions.in_executor(work, *args)

    # -- workflows -----------------------------------------------------------------------

    async def run_workflow(self, request: Request) -> Response:
        await self.authorize(request, "invoke")
        name = request.path_params["name"]
        runtime = self.frontend.versions.current
        workflow = runtime.app.workflows.get(name)
        if workflow is None:
            raise NotFoundError(f"no workflow {name!r}")
        args = schema.check_arguments(workflow, await self.body(request))
        workflow_id = request.headers.get("idempotency-key")
        if workflow_id is not None:
            if not workflow_id or len(workflow_id) > MAX_WORKFLOW_ID or "\x00" in workflow_id:
                raise InvalidArgumentsError(
                    f"Idempotency-Key must be 1 to {MAX_WORKFLOW_ID} characters"
                )
        else:
            workflow_id = runtime._next_id_ready() or await self.blocking(runtime._next_id)
        try:
            output = await self._run_once(runtime, name, workflow_id, args)
        except FunctionError as exc:
            return json_response(
                {"workflow_id": workflow_id, "status": "ERROR", "error": _error_body(exc)}, 422
            )
        return json_response({"workflow_id": workflow_id, "status": "SUCCESS", "output": output})

    async def _run_once(self, runtime: Runtime, name: str, workflow_id: str, args: Any) -> Any:
        request = name + _codec.canonical_dumps(args)
        running = self._in_flight.get(workflow_id)
        if running is not None and running[0] == request:
            # shield: a retry that gives up must not cancel the run it joined.
            return await asyncio.shield(running[1])
        task = asyncio.ensure_future(self._run(runtime, name, workflow_id, args))
        self._in_flight[workflow_id] = (request, task)
        task.add_done_callback(lambda _: self._in_flight.pop(workflow_id, None))
        return await asyncio.shield(task)

    async def _run(self, runtime: Runtime, name: str, workflow_id: str, args: Any) -> Any:
        for _ in range(3):
            try:
                return await runtime.run_async(name, workflow_id=workflow_id, **args)
            except VersionMismatch as exc:
                # A retry of a workflow that started on another version finishes there.
                runtime = await self.blocking(self.frontend.versions.runtime_for, exc.version)
        raise WorkflowConflictError(f"workflow {workflow_id!r} keeps changing app versions")

    async def workflow_status(self, request: Request) -> Response:
        await self.authorize(request, "invoke")
        workflow_id = request.path_params["workflow_id"]
        status = await self.blocking(self.frontend.versions.current.status, workflow_id)
        body: dict[str, Any] = {
            "workflow_id": status.workflow_id,
            "name": status.name,
            "status": status.status,
        }
        if status.status == "SUCCESS":
            body["output"] = status.output
        elif status.status == "ERROR" and status.error is not None:
            error = FunctionError.from_json(status.error, status.workflow_id)
            body["error"] = _error_body(error)
        return json_response(body)

    async def new_client(self, request: Request) -> Response:
        await self.authorize(request, "invoke")
        engine = self.frontend.versions.current._engine
        client_id = await self.blocking(
            lambda: engine.system(_bookkeeping.new_client_id, write=True)
        )
        return json_response({"client_id": client_id})

    async def health(self, request: Request) -> Response:
        versions = self.frontend.versions
        try:
            runtime = versions.current
            await self.blocking(runtime.ping)
        except Exception as exc:
            answer = error_response(exc)
            if answer.status_code != 503:  # whatever broke, the frontend cannot serve
                answer = json_response({"error": _error_body(exc)}, 503)
            return answer
        return json_response(
            {
                "status": "ok",
                "frontend_id": self.frontend.id,
                "app": runtime.app.name,
                "version": runtime.version,
            }
        )

    async def openapi(self, request: Request) -> Response:
        await self.authorize(request, "invoke")
        runtime = self.frontend.versions.current
        return json_response(openapi_document(runtime.app, version=runtime.version))

    # -- admin ---------------------------------------------------------------------------

    async def deploy(self, request: Request) -> Response:
        await self.authorize(request, "admin")
        body = await self.body(request)
        if not isinstance(body, dict) or not isinstance(body.get("source"), str):
            raise InvalidArgumentsError('deploy takes {"source": "<python>", "module": "<name>"}')
        module = body.get("module") or "app"
        if not isinstance(module, str):
            raise InvalidArgumentsError("module must be a string")
        deployment = await self.blocking(
            self.frontend.versions.deploy_source, module, body["source"]
        )
        runtime = self.frontend.versions.current
        return json_response(
            {
                "app": runtime.app.name,
                "version": deployment.version,
                "module": deployment.module,
                "workflows": sorted(runtime.app.workflows),
            }
        )

    async def list_apps(self, request: Request) -> Response:
        await self.authorize(request, "admin")
        versions = self.frontend.versions
        deployments = await self.blocking(versions.deployments)
        return json_response(
            {
                "app": versions.app_name,
                "current": versions.current.version,
                "deployments": [
                    {"version": d.version, "module": d.module, "deployed_at": d.deployed_at}
                    for d in deployments
                ],
            }
        )

    async def create_key(self, request: Request) -> Response:
        await self.authorize(request, "admin")
        body = await self.body(request)
        if not isinstance(body, dict):
            raise InvalidArgumentsError('create a key with {"role": "invoke" | "admin"}')
        created = await self.blocking(self.keys.create, body.get("role"), body.get("label"))
        return json_response(created.to_json(), 201)

    async def list_keys(self, request: Request) -> Response:
        await self.authorize(request, "admin")
        keys = await self.blocking(self.keys.list)
        return json_response({"keys": [key.to_json() for key in keys]})

    async def revoke_key(self, request: Request) -> Response:
        await self.authorize(request, "admin")
        key_id = request.path_params["key_id"]
        if not await self.blocking(self.keys.revoke, key_id):
            raise NotFoundError(f"no active key {key_id!r}")
        return json_response({"key_id": key_id, "revoked": True})

    # -- the application -----------------------------------------------------------------

    def routes(self) -> list[Route]:
        g = _guarded
        return [
            Route("/v1/workflows/{name}", g(self.run_workflow), methods=["POST"]),
            Route("/v1/workflows/{workflow_id:path}", g(self.workflow_status), methods=["GET"]),
            Route("/v1/clients", g(self.new_client), methods=["POST"]),
            Route("/v1/health", g(self.health), methods=["GET"]),
            Route("/openapi.json", g(self.openapi), methods=["GET"]),
            Route("/v1/apps", g(self.deploy), methods=["POST"]),
            Route("/v1/apps", g(self.list_apps), methods=["GET"]),
            Route("/v1/keys", g(self.create_key), methods=["POST"]),
            Route("/v1/keys", g(self.list_keys), methods=["GET"]),
            Route("/v1/keys/{key_id}", g(self.revoke_key), methods=["DELETE"]),
        ]


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    kind = "NotFoundError" if exc.status_code == 404 else "HTTPError"
    message = (
        f"no route {request.method} {request.url.path}"
        if exc.status_code in (404, 405)
        else str(exc.detail)
    )
    return json_response({"error": {"type": kind, "message": message}}, exc.status_code)


def create_app(frontend: Frontend) -> Starlette:
    """The ASGI application of a frontend; starting it starts the frontend."""
    api = Api(frontend)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, frontend.start)
        await frontend.start_recovery()
        try:
            yield
        finally:
            await frontend.stop()

    app = Starlette(
        routes=api.routes(),
        exception_handlers={HTTPException: _http_error},
        lifespan=lifespan,
    )
    # An API answers an unknown path with a JSON 404, not a redirect to the path with or
    # without a trailing slash (DELETE /v1/keys/%2F would otherwise be sent to /v1/keys/).
    app.router.redirect_slashes = False
    return app


__all__ = ["MAX_NESTING", "Api", "create_app", "decode_body", "error_response"]
