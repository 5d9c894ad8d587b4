"""The client library: run workflows on Apiary frontends over HTTP, exactly once.

:class:`Client` (blocking, on the standard library's ``http.client``) and
:class:`AsyncClient` (``async``, on ``httpx.AsyncClient``) speak the protocol of
``docs/FRONTEND.md`` through one implementation that does no I/O, :class:`_Protocol`: it
builds each request, decodes each answer, and decides after each attempt whether to
answer, raise, or try again (where, and after how long). A call is a generator of
*actions*, "send this request to this URL" or "pause this long"; a client performs them,
with blocking calls or with ``await``, and sends each answer back in (or throws the
transport error in). So the retry policy exists once.

Exactly once from the caller's side: a client takes a client ID from the database once
(``POST /v1/clients``) and names its workflows ``{client_id}-{n}``. Each run carries its
workflow ID as ``Idempotency-Key``; a timeout, a lost connection or a 502/503/504 sends the
*same* request again, with the same ID, so a workflow that did run answers with its recorded
outcome instead of running twice.
"""

from __future__ import annotations

import asyncio
import http.client
import ssl
import threading
import time
from collections.abc import Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar, cast
from urllib.parse import SplitResult, urlsplit

from apiary._client_protocol import (
    _Pause,
    _Protocol,
    _require_httpx,
)
from apiary._runtime import WorkflowStatus

if TYPE_CHECKING:
    from apiary._client_protocol import _Plan

__all__ = ["AsyncClient", "Client"]

T = TypeVar("T")


# ------------------------------------------------------------------------------------------
# The clients: the I/O
# ------------------------------------------------------------------------------------------


class _Answer:
    """An answer, with what the protocol reads of one (as ``httpx.Response`` has it)."""

    __slots__ = ("content", "headers", "reason_phrase", "status_code", "url")

    def __init__(
        self, status_code: int, reason_phrase: str, url: str, headers: Any, content: bytes
    ) -> None:
        self.status_code = status_code
        self.reason_phrase = reason_phrase
        self.url = url
        self.headers = headers  # case-insensitive get(), as http.client gives them
        self.content = content


class _Connections:
    """Blocking HTTP/1.1 for :class:`Client`, on ``http.client``: one kept-alive
    connection per thread and frontend.

    It costs about a third of the CPU per request of ``httpx.Client``
    (``benchmarks/http_overhead.py``). A connection that fails is closed, never reused: an
    answer that arrives late must not be read as the next request's. A kept-alive
    connection the frontend closed meanwhile (uvicorn closes those idle for 5 s) is
    replaced and the request sent once more at once; any other failure becomes the
    ``httpx`` transport error the protocol retries on.
    """

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._local = threading.local()
        self._lock = threading.Lock()
        self._open: list[http.client.HTTPConnection] = []
        self._closed = False

    def request(
        self, method: str, url: str, headers: dict[str, str], content: bytes | None
    ) -> _Answer:
        parts = urlsplit(url)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        mine: dict[tuple[str, str], http.client.HTTPConnection] = self._local.__dict__.setdefault(
            "connections", {}
        )
        key = (parts.scheme, parts.netloc)
        conn = mine.get(key)
        reused = conn is not None
        while True:
            if conn is None:
                conn = mine[key] = self._connect(parts)
            try:
                conn.request(method, target, body=content, headers=headers)
                answer = conn.getresponse()
                body = answer.read()
            except (OSError, http.client.HTTPException, ValueError) as exc:
                self._forget(mine, key, conn)
                stale = (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError)
                if reused and isinstance(exc, stale):
                    conn, reused = None, False
                    continue
                raise _transport_error(exc) from exc
            if answer.will_close:
                self._forget(mine, key, conn)
            return _Answer(answer.status, answer.reason, url, answer.headers, body)

    def _connect(self, parts: SplitResult) -> http.client.HTTPConnection:
        with self._lock:
            if self._closed:
                raise RuntimeError("this client is closed")
        host, port = parts.hostname or "", parts.port
        conn: http.client.HTTPConnection
        if parts.scheme == "https":
            context = ssl.create_default_context()
            conn = http.client.HTTPSConnection(host, port, timeout=self.timeout, context=context)
        else:
            conn = http.client.HTTPConnection(host, port, timeout=self.timeout)
        with self._lock:
            self._open.append(conn)
        return conn

    def _forget(
        self,
        mine: dict[tuple[str, str], http.client.HTTPConnection],
        key: tuple[str, str],
        conn: http.client.HTTPConnection,
    ) -> None:
        mine.pop(key, None)
        conn.close()
        with self._lock:
            if conn in self._open:
                self._open.remove(conn)

    def close(self) -> None:
        """Close every thread's connections."""
        with self._lock:
            self._closed = True
            conns, self._open = self._open, []
        for conn in conns:
            conn.close()


def _transport_error(exc: BaseException) -> Exception:
    """The ``httpx`` transport error the protocol knows for a failure of ``http.client``."""
    import httpx

    message = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    if isinstance(exc, ValueError):  # a header http.client refuses to send
        return httpx.LocalProtocolError(message)
    if isinstance(exc, TimeoutError):
        return httpx.ReadTimeout(message)
    if isinstance(exc, ConnectionRefusedError):
        return httpx.ConnectError(message)
    return httpx.TransportError(message)


class Client:
    """A blocking client of Apiary frontends (``apiary serve``).

    Args:
        url: a frontend's base URL (``http://host:8080``), or several: each retry goes to
            the next one, and calls start at the last one that answered.
        api_key: the API key (``apk_...``); an ``invoke`` key runs workflows, an
            ``admin`` key may also deploy.
        timeout: seconds to wait for a connection and for each read of an answer. Make
            it longer than your workflows take: a run still going when it expires is
            asked for again, and the retry resumes the same run alongside the first
            (its functions still take effect once, but its steps may run twice).
        retry_for: seconds after the first attempt of a call during which failed attempts
            (no answer, or 502/503/504) are retried with the same workflow ID; then the
            call raises :class:`~apiary.DatabaseUnavailableError`. ``0``: one attempt.

    Safe to share between threads. Close it, or use it as a context manager.
    """

    def __init__(
        self,
        url: str | Sequence[str],
        api_key: str,
        *,
        timeout: float = 30.0,
        retry_for: float = 60.0,
    ) -> None:
        _require_httpx()
        import httpx

        self._protocol = _Protocol(url, api_key, retry_for)
        self._id_lock = threading.Lock()
        self._http = _Connections(timeout)
        self._transport_error = httpx.TransportError

    @property
    def urls(self) -> list[str]:
        """The frontends' base URLs."""
        return list(self._protocol.urls)

    def run(self, name: str, /, *, workflow_id: str | None = None, **args: Any) -> Any:
        """Run workflow ``name`` with ``args`` to completion and return its output.

        Without ``workflow_id`` the run is named ``{client_id}-{n}``; either way, every
        retry sends the same ID, so the workflow takes effect once. Running an ID that
        finished returns its recorded output (or raises its recorded error) again.

        Raises:
            FunctionError: the application raised; the workflow ended ``ERROR``.
            InvalidArgumentsError: arguments missing, unknown, of the wrong type, not
                JSON values, or a body over the frontend's limit.
            NotFoundError: no workflow ``name``.
            WorkflowConflictError: ``workflow_id`` names a run of another workflow or
                with other arguments.
            AuthenticationError, PermissionDeniedError: the key is not valid for this.
            DatabaseUnavailableError: no frontend answered within ``retry_for`` (the
                workflow may have run; retrying with the same ``workflow_id`` is safe).
        """
        body = self._protocol.encode_arguments(name, args)
        if workflow_id is None:
            workflow_id = self.new_workflow_id()
        request = self._protocol.run_request(name, workflow_id, body)
        self._protocol.started(workflow_id)
        return self._perform(self._protocol.attempts(request, self._protocol.decode_run))

    def new_workflow_id(self) -> str:
        """Take the next ``{client_id}-{n}`` now, to know a run's ID before it starts.

        Pass it to :meth:`run` as ``workflow_id`` (and again, if that raised
        :class:`~apiary.DatabaseUnavailableError`). The first call takes the client ID.
        """
        if self._protocol.client_id is None:
            with self._id_lock:  # one POST /v1/clients, however many threads ask at once
                if self._protocol.client_id is None:
                    request = self._protocol.client_id_request()
                    plan = self._protocol.attempts(request, self._protocol.decode_client_id)
                    self._protocol.adopt_client_id(self._perform(plan))
        return self._protocol.next_workflow_id()

    @property
    def last_workflow_id(self) -> str | None:
        """The workflow ID of the last :meth:`run` the calling thread made through this
        client (given or generated; set before the first attempt), else ``None``."""
        return self._protocol.last_workflow_id

    def status(self, workflow_id: str) -> WorkflowStatus:
        """The status row of a workflow run (``PENDING``, ``SUCCESS`` or ``ERROR``).

        Raises:
            NotFoundError: no run has this ID (read-only workflows keep no status row).
        """
        request = self._protocol.status_request(workflow_id)
        return self._perform(self._protocol.attempts(request, self._protocol.decode_status))

    def deploy(self, source: str, module: str) -> dict[str, Any]:
        """Deploy an app module's ``source`` as ``module`` (needs an admin key).

        Returns ``{"app", "version", "module", "workflows"}``. Raises
        :class:`~apiary.RegistrationError` if the code breaks a rule (nothing changes).
        """
        request = self._protocol.deploy_request(source, module)
        return self._perform(self._protocol.attempts(request, self._protocol.decode_object))

    def health(self) -> dict[str, Any]:
        """``{"status": "ok", ...}`` from the first frontend that has its database.

        Every URL is asked once (a probe should not wait ``retry_for``); if none is
        healthy, :class:`~apiary.DatabaseUnavailableError` says why.
        """
        request = self._protocol.health_request()
        plan = self._protocol.attempts(request, self._protocol.decode_object, tries_each=True)
        return self._perform(plan)

    def openapi(self) -> dict[str, Any]:
        """The frontend's OpenAPI 3.1 document: a request schema per workflow."""
        request = self._protocol.openapi_request()
        return self._perform(self._protocol.attempts(request, self._protocol.decode_object))

    def close(self) -> None:
        """Close the connections. The client cannot be used afterwards."""
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<apiary.Client {', '.join(self._protocol.urls)}>"

    def _perform(self, plan: _Plan[T]) -> T:
        """Carry out a plan's actions with blocking I/O; return its result."""
        try:
            action = next(plan)
            while True:
                if isinstance(action, _Pause):
                    time.sleep(action.seconds)
                    action = plan.send(None)
                    continue
                request = action.request
                try:
                    answer = self._http.request(
                        request.method, action.url, request.headers, request.body
                    )
                except self._transport_error as exc:
                    action = plan.throw(exc)
                else:
                    action = plan.send(answer)  # type: ignore[arg-type]
        except StopIteration as done:
            return cast(T, done.value)
        finally:
            plan.close()


class AsyncClient:
    """The ``async`` twin of :class:`Client`: the same arguments, methods and behaviour.

    Use it from one event loop; close it with ``await client.close()`` or use it with
    ``async with``.
    """

    def __init__(
        self,
        url: str | Sequence[str],
        api_key: str,
        *,
        timeout: float = 30.0,
        retry_for: float = 60.0,
    ) -> None:
        _require_httpx()
        import httpx

        self._protocol = _Protocol(url, api_key, retry_for)
        self._id_lock = asyncio.Lock()
        self._http = httpx.AsyncClient(timeout=timeout)
        self._transport_error = httpx.TransportError

    @property
    def urls(self) -> list[str]:
        """The frontends' base URLs."""
        return list(self._protocol.urls)

    async def run(self, name: str, /, *, workflow_id: str | None = None, **args: Any) -> Any:
        """Run workflow ``name`` with ``args`` to completion and return its output.

        See :meth:`Client.run`: the same naming, retries and errors.
        """
        body = self._protocol.encode_arguments(name, args)
        if workflow_id is None:
            workflow_id = await self.new_workflow_id()
        request = self._protocol.run_request(name, workflow_id, body)
        self._protocol.started(workflow_id)
        return await self._perform(self._protocol.attempts(request, self._protocol.decode_run))

    async def new_workflow_id(self) -> str:
        """Take the next ``{client_id}-{n}`` now; see :meth:`Client.new_workflow_id`."""
        if self._protocol.client_id is None:
            async with self._id_lock:  # one POST /v1/clients, however many tasks ask at once
                if self._protocol.client_id is None:
                    request = self._protocol.client_id_request()
                    plan = self._protocol.attempts(request, self._protocol.decode_client_id)
                    self._protocol.adopt_client_id(await self._perform(plan))
        return self._protocol.next_workflow_id()

    @property
    def last_workflow_id(self) -> str | None:
        """The workflow ID of the last :meth:`run` the calling task awaited through this
        client (runs in tasks of their own, ``asyncio.gather``'s, do not count), else
        ``None``."""
        return self._protocol.last_workflow_id

    async def status(self, workflow_id: str) -> WorkflowStatus:
        """The status row of a workflow run; see :meth:`Client.status`."""
        request = self._protocol.status_request(workflow_id)
        return await self._perform(self._protocol.attempts(request, self._protocol.decode_status))

    async def deploy(self, source: str, module: str) -> dict[str, Any]:
        """Deploy an app module (needs an admin key); see :meth:`Client.deploy`."""
        request = self._protocol.deploy_request(source, module)
        return await self._perform(self._protocol.attempts(request, self._protocol.decode_object))

    async def health(self) -> dict[str, Any]:
        """The first healthy frontend's health; see :meth:`Client.health`."""
        request = self._protocol.health_request()
        plan = self._protocol.attempts(request, self._protocol.decode_object, tries_each=True)
        return await self._perform(plan)

    async def openapi(self) -> dict[str, Any]:
        """The frontend's OpenAPI 3.1 document; see :meth:`Client.openapi`."""
        request = self._protocol.openapi_request()
        return await self._perform(self._protocol.attempts(request, self._protocol.decode_object))

    async def close(self) -> None:
        """Close the connections. The client cannot be used afterwards."""
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"<apiary.AsyncClient {', '.join(self._protocol.urls)}>"

    async def _perform(self, plan: _Plan[T]) -> T:
        """Carry out a plan's actions with ``await``; return its result."""
        try:
            action = next(plan)
            while True:
                if isinstance(action, _Pause):
                    await asyncio.sleep(action.seconds)
                    action = plan.send(None)
                    continue
                request = action.request
                try:
                    response = await self._http.request(
                        request.method, action.url, headers=request.headers, content=request.body
                    )
                except self._transport_error as exc:
                    action = plan.throw(exc)
                else:
                    action = plan.send(response)
        except StopIteration as done:
            return cast(T, done.value)
        finally:
            plan.close()
