"""The client library's protocol, without I/O: requests, answers, retries.

:class:`_Protocol` builds each request of ``docs/FRONTEND.md``, decodes each answer, and
decides after each attempt whether to answer, raise, or try again (where, and after how
long). A call is a generator of *actions*, "send this request to this URL" or "pause this
long"; :mod:`apiary._client` performs them, blocking or with ``await``. So the retry policy
exists once, for both clients.
"""

from __future__ import annotations

import contextvars
import random
import re
import threading
import time
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, TypeVar
from urllib.parse import quote, urlsplit

from apiary import _codec
from apiary._errors import (
    ApiaryError,
    AuthenticationError,
    DatabaseUnavailableError,
    FunctionError,
    InvalidArgumentsError,
    NotFoundError,
    PermissionDeniedError,
    RegistrationError,
    WorkflowConflictError,
)
from apiary._runtime import MAX_WORKFLOW_ID, WorkflowStatus

if TYPE_CHECKING:
    import httpx


T = TypeVar("T")

#: Seconds of the first pause between two attempts; each failure doubles it, up to
#: :data:`MAX_BACKOFF`. Each pause is drawn between half the value and the value (jitter),
#: so that clients that lost the same frontend do not all come back at the same instant.
FIRST_BACKOFF: Final = 0.05
MAX_BACKOFF: Final = 2.0
#: Answers that mean "not now": a proxy without a live frontend behind it (502, 504) or a
#: frontend without its database (503). Nothing was committed that a retry would repeat.
RETRY_STATUSES: Final = frozenset({502, 503, 504})

#: The error class of each final status; the error JSON's ``type`` picks among several.
_ERRORS: Final[dict[int, tuple[type[ApiaryError], ...]]] = {
    400: (InvalidArgumentsError, RegistrationError),
    401: (AuthenticationError,),
    403: (PermissionDeniedError,),
    404: (NotFoundError,),
    409: (WorkflowConflictError,),
    413: (InvalidArgumentsError,),
}

# A workflow ID travels in a header: HTTP carries header values as bytes that servers read
# as Latin-1 and strip of surrounding blanks, so only printable ASCII without leading or
# trailing spaces comes out on the server as it went in.
_HEADER_SAFE = re.compile(r"[\x21-\x7e](?:[\x20-\x7e]*[\x21-\x7e])?")

# The last run each thread (or asyncio task) started, and through which client: a context
# variable, so that ``last_workflow_id`` answers each caller about its own run even when
# many threads or tasks share a client.
_LAST_RUN: contextvars.ContextVar[tuple[_Protocol, str]] = contextvars.ContextVar("last_run")


def _require_httpx() -> None:
    try:
        import httpx  # noqa: F401
    except ImportError as exc:
        raise ImportError(
            "apiary.Client needs httpx, which is not installed: pip install 'apiary[client]'"
        ) from exc


@dataclass(frozen=True)
class _Request:
    """One request of the protocol, before it is sent to a frontend."""

    method: str
    path: str  # after the frontend's base URL: "/v1/workflows/book_room"
    headers: dict[str, str]
    body: bytes | None
    what: str  # for messages: "run workflow 'book_room' as '7-42'"
    workflow_id: str | None = None


@dataclass(frozen=True)
class _Send:
    """Action: send ``request`` to ``url``; send the answer back (or throw the error in)."""

    url: str
    request: _Request


@dataclass(frozen=True)
class _Pause:
    """Action: wait ``seconds``, then resume the plan."""

    seconds: float


#: The attempts of one call: actions out, answers in, the decoded result at the end.
_Plan = Generator["_Send | _Pause", "httpx.Response | None", T]
_Decode = Callable[[_Request, "httpx.Response"], T]


class _Protocol:
    """Everything of a client but the I/O: requests, answers, numbering, retries.

    Safe to share between threads: the mutable state (the client ID, the counter and the
    preferred frontend) is guarded by a lock.
    """

    def __init__(self, url: str | Sequence[str], api_key: str, retry_for: float) -> None:
        import httpx

        if not isinstance(api_key, str):
            raise TypeError(f"api_key must be a str, not {type(api_key).__name__}")
        if not retry_for >= 0:
            raise ValueError(f"retry_for must be >= 0 seconds, not {retry_for!r}")
        self.urls = _base_urls(url)
        self.retry_for = float(retry_for)
        self._api_key = api_key
        self._lock = threading.Lock()
        self._preferred = 0  # the frontend a call tries first: the last one that answered
        self._client_id: int | None = None
        self._count = 0
        self._random = random.Random()
        # Transport errors that mean "no answer came": timeouts, refused or reset
        # connections, DNS failures, a proxy that failed. The others (a URL of another
        # scheme, a request httpx itself refuses) would fail again, identically.
        self._transport_error = httpx.TransportError
        self._final = (httpx.UnsupportedProtocol, httpx.LocalProtocolError)

    # -- requests --------------------------------------------------------------------

    def _request(
        self,
        method: str,
        path: str,
        what: str,
        body: Any = None,
        workflow_id: str | None = None,
    ) -> _Request:
        headers = {"Authorization": f"Bearer {self._api_key}", "Accept": "application/json"}
        content = None
        if body is not None:
            headers["Content-Type"] = "application/json"
            content = body if isinstance(body, bytes) else _codec.dumps(body).encode()
        if workflow_id is not None:
            headers["Idempotency-Key"] = workflow_id
        return _Request(method, path, headers, content, what, workflow_id)

    def encode_arguments(self, name: str, args: Mapping[str, Any]) -> bytes:
        """The body of a run: the arguments as a JSON object (the codec's tagged form)."""
        if not isinstance(name, str) or not name:
            raise InvalidArgumentsError(f"a workflow name must be a non-empty str, not {name!r}")
        try:
            return _codec.dumps(dict(args)).encode()
        except TypeError as exc:
            raise InvalidArgumentsError(
                f"arguments of workflow {name!r} are not JSON values: {exc}"
            ) from None

    def run_request(self, name: str, workflow_id: str, body: bytes) -> _Request:
        """``POST /v1/workflows/{name}`` named by ``workflow_id``."""
        _check_workflow_id(workflow_id)
        what = f"run workflow {name!r} as {workflow_id!r}"
        return self._request("POST", f"/v1/workflows/{_segment(name)}", what, body, workflow_id)

    def status_request(self, workflow_id: str) -> _Request:
        """``GET /v1/workflows/{workflow_id}``."""
        if not isinstance(workflow_id, str) or not workflow_id:
            raise InvalidArgumentsError(f"workflow_id must be a non-empty str, not {workflow_id!r}")
        what = f"read the status of workflow {workflow_id!r}"
        return self._request("GET", f"/v1/workflows/{_segment(workflow_id)}", what)

    def client_id_request(self) -> _Request:
        """``POST /v1/clients``."""
        return self._request("POST", "/v1/clients", "get a client ID")

    def deploy_request(self, source: str, module: str) -> _Request:
        """``POST /v1/apps``."""
        if not isinstance(source, str) or not isinstance(module, str):
            raise InvalidArgumentsError("deploy takes the module's source and name as str")
        body = {"source": source, "module": module}
        return self._request("POST", "/v1/apps", f"deploy module {module!r}", body)

    def health_request(self) -> _Request:
        """``GET /v1/health``."""
        return self._request("GET", "/v1/health", "check health")

    def openapi_request(self) -> _Request:
        """``GET /openapi.json``."""
        return self._request("GET", "/openapi.json", "read the OpenAPI document")

    # -- workflow IDs ----------------------------------------------------------------

    @property
    def client_id(self) -> int | None:
        """The client ID, once one was taken."""
        return self._client_id

    def adopt_client_id(self, client_id: int) -> None:
        """Use ``client_id`` from now on (the first one taken wins)."""
        with self._lock:
            if self._client_id is None:
                self._client_id = client_id

    def next_workflow_id(self) -> str:
        """``{client_id}-{n}``, n counting from 1 (the client ID must be known)."""
        with self._lock:
            assert self._client_id is not None, "take a client ID first"
            self._count += 1
            return f"{self._client_id}-{self._count}"

    def started(self, workflow_id: str) -> None:
        """Remember ``workflow_id`` as the calling thread's (or task's) last run."""
        _LAST_RUN.set((self, workflow_id))

    @property
    def last_workflow_id(self) -> str | None:
        """The workflow ID of the last run the calling thread (or task) started, if any."""
        last = _LAST_RUN.get(None)
        return last[1] if last is not None and last[0] is self else None

    # -- answers ---------------------------------------------------------------------

    def decode_run(self, request: _Request, response: httpx.Response) -> Any:
        """The output of a run; :class:`FunctionError` (422) and the other errors raised."""
        body = self._answer(request, response)
        return body.get("output")

    def decode_status(self, request: _Request, response: httpx.Response) -> WorkflowStatus:
        """A status row as :meth:`apiary.Runtime.status` gives it."""
        body = self._answer(request, response)
        error = body.get("error")
        if isinstance(error, dict) and "exception" in error:
            # The HTTP form of a FunctionError; the status row keeps the application's
            # exception type and message, as the embedded Runtime.status reports them.
            error = {
                "type": error.get("exception"),
                "message": error.get("detail"),
                "function": error.get("function"),
            }
        return WorkflowStatus(
            str(body.get("workflow_id")),
            str(body.get("name")),
            str(body.get("status")),
            body.get("output"),
            error,
        )

    def decode_client_id(self, request: _Request, response: httpx.Response) -> int:
        """The ``client_id`` of a ``POST /v1/clients`` answer."""
        client_id = self._answer(request, response).get("client_id")
        if not isinstance(client_id, int) or isinstance(client_id, bool):
            raise ApiaryError(f"{request.what}: the frontend answered {client_id!r}")
        return client_id

    def decode_object(self, request: _Request, response: httpx.Response) -> dict[str, Any]:
        """A JSON object answer, as it is."""
        return self._answer(request, response)

    def _answer(self, request: _Request, response: httpx.Response) -> dict[str, Any]:
        """The JSON object of a 2xx answer; any other answer raises its error."""
        status = response.status_code
        body = _json_object(response)
        if 200 <= status < 300:
            if body is None:
                raise ApiaryError(
                    f"{request.what}: {response.url} answered {status} without a JSON object"
                )
            return body
        raise _error_of(request, response, body)

    # -- retries ---------------------------------------------------------------------

    def attempts(
        self, request: _Request, decode: _Decode[T], *, tries_each: bool = False
    ) -> _Plan[T]:
        """Send ``request`` until a frontend gives a final answer; return it decoded.

        After a failure (no answer, or 502/503/504) the next attempt goes to the next URL,
        after a pause (exponential backoff with jitter, at least a 503's ``Retry-After``
        but at most :data:`MAX_BACKOFF`), until ``retry_for`` seconds have passed since the
        first attempt; then :class:`DatabaseUnavailableError`. With ``tries_each``, every
        URL gets one attempt even when ``retry_for`` is shorter.
        """
        started = time.monotonic()
        first = self._preferred
        count = len(self.urls)
        attempt = 0
        while True:
            index = (first + attempt) % count
            url = self.urls[index]
            attempt += 1
            pause = 0.0
            try:
                response = yield _Send(url + request.path, request)
                assert response is not None
            except self._transport_error as exc:
                if isinstance(exc, self._final):
                    raise
                failure: str = f"{url}: {type(exc).__name__}: {exc or 'no detail'}"
                cause: BaseException | None = exc
            else:
                if response.status_code not in RETRY_STATUSES:
                    self._answered(index)
                    return decode(request, response)
                failure = f"{url} answered {response.status_code}: {_message_of(response)}"
                cause = None
                pause = _retry_after(response)
            self._failed(index)
            elapsed = time.monotonic() - started
            remaining = self.retry_for - elapsed
            if remaining <= 0 and not (tries_each and attempt < count):
                raise _unavailable(request, self.urls, attempt, elapsed, failure) from cause
            backoff = min(MAX_BACKOFF, FIRST_BACKOFF * 2 ** min(attempt - 1, 16))
            pause = min(max(pause, self._random.uniform(backoff / 2, backoff)), MAX_BACKOFF)
            if remaining > 0:
                yield _Pause(min(pause, remaining))

    def _answered(self, index: int) -> None:
        self._preferred = index

    def _failed(self, index: int) -> None:
        # Concurrent calls that lose the same frontend move the preference on once.
        with self._lock:
            if self._preferred == index:
                self._preferred = (index + 1) % len(self.urls)


def _base_urls(url: str | Sequence[str]) -> list[str]:
    urls = [url] if isinstance(url, str) else list(url)
    if not urls:
        raise ValueError("a client needs at least one frontend URL")
    bases = []
    for each in urls:
        if not isinstance(each, str):
            raise TypeError(f"a frontend URL must be a str, not {type(each).__name__}")
        parts = urlsplit(each)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"a frontend URL looks like http://host:port, not {each!r}")
        if parts.query or parts.fragment:
            raise ValueError(f"a frontend URL takes no query or fragment: {each!r}")
        bases.append(each.rstrip("/"))
    return bases


def _segment(value: str) -> str:
    """``value`` as one path segment: '/' and everything else escaped."""
    quoted = quote(value, safe="")
    # "." and ".." are unreserved, so quote() keeps them, but as whole segments httpx
    # would resolve them as relative paths ("/v1/workflows/.." is "/v1").
    return quoted.replace(".", "%2E") if quoted in (".", "..") else quoted


def _check_workflow_id(workflow_id: object) -> None:
    if not isinstance(workflow_id, str):
        raise InvalidArgumentsError(f"workflow_id must be a str, not {type(workflow_id).__name__}")
    if not _HEADER_SAFE.fullmatch(workflow_id) or len(workflow_id) > MAX_WORKFLOW_ID:
        raise InvalidArgumentsError(
            f"workflow_id must be 1 to {MAX_WORKFLOW_ID} printable ASCII characters, without "
            f"leading or trailing spaces (it is sent as the Idempotency-Key header), "
            f"not {workflow_id!r}"
        )


def _json_object(response: httpx.Response) -> dict[str, Any] | None:
    try:
        body = _codec.loads(response.content.decode("utf-8"))
    except ValueError:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        return None
    return body if isinstance(body, dict) else None


def _message_of(response: httpx.Response) -> str:
    """The ``error.message`` of an error answer, else its reason phrase."""
    body = _json_object(response)
    error = body.get("error") if body is not None else None
    if isinstance(error, dict) and error.get("message"):
        return str(error["message"])
    if isinstance(error, str):  # GET /v1/health's 503: {"status": ..., "error": "..."}
        return error
    return response.reason_phrase or f"HTTP {response.status_code}"


def _retry_after(response: httpx.Response) -> float:
    """A ``Retry-After`` in seconds (the HTTP-date form is ignored), else 0."""
    try:
        return max(0.0, float(response.headers.get("retry-after", "0")))
    except ValueError:
        return 0.0


def _error_of(request: _Request, response: httpx.Response, body: Any) -> ApiaryError:
    """The error a final, non-2xx answer stands for."""
    status = response.status_code
    error = body.get("error") if isinstance(body, dict) else None
    error = error if isinstance(error, dict) else {}
    type_name = str(error.get("type") or "")
    message = _message_of(response)
    if status == 422 or "exception" in error:
        # The application raised: the same answer on every retry of this workflow ID.
        workflow_id = body.get("workflow_id") if isinstance(body, dict) else None
        return FunctionError(
            str(error.get("exception") or type_name or "Error"),
            str(error.get("detail", message)),
            function=error.get("function"),
            workflow_id=workflow_id or request.workflow_id,
        )
    classes = _ERRORS.get(status)
    if classes is not None:
        cls = next((c for c in classes if c.__name__ == type_name), classes[0])
        return cls(message)
    kind = f" {type_name}" if type_name else ""
    return ApiaryError(f"{request.what}: {response.url} answered {status}{kind}: {message}")


def _unavailable(
    request: _Request, urls: list[str], attempts: int, elapsed: float, failure: str
) -> DatabaseUnavailableError:
    which = "the frontend" if len(urls) == 1 else f"any of the {len(urls)} frontends"
    message = (
        f"could not {request.what}: no answer from {which} after {attempts} attempt"
        f"{'s' if attempts != 1 else ''} in {elapsed:.1f} s; last error: {failure}"
    )
    if request.workflow_id is not None:
        message += (
            f". The workflow may have run: retrying with workflow_id={request.workflow_id!r} "
            "is safe (it takes effect at most once)"
        )
    return DatabaseUnavailableError(message)
