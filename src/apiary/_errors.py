"""The one error hierarchy of Apiary.

Every error the platform raises on purpose derives from :class:`ApiaryError`::

    ApiaryError
     ├── RegistrationError         app code breaks a rule; found when it is registered
     ├── InvalidArgumentsError     call arguments do not match the signature or are not JSON
     ├── NotFoundError             no workflow or function by that name / no such workflow ID
     ├── WorkflowConflictError     a workflow ID reused with another workflow or other arguments
     ├── FunctionError             application code raised; its transaction was rolled back
     ├── TransactionConflictError  conflicts persisted through every retry; nothing committed
     ├── NotInstalledError         the database lacks Apiary's tables: run ``install`` first
     ├── DatabaseUnavailableError  the database cannot be reached or opened; safe to retry
     ├── AuthenticationError       an HTTP request without a valid API key (401)
     └── PermissionDeniedError     an API key whose role does not allow the route (403)

This module imports only the standard library: it is part of the execution core that also
runs inside PostgreSQL's PL/Python, where only the server's own Python is available.
"""

from __future__ import annotations

from typing import Any


class ApiaryError(Exception):
    """Base class of every error Apiary raises on purpose."""


class RegistrationError(ApiaryError):
    """App code breaks a rule of the programming model (raised at registration).

    The message names the workflow and/or function and the problem.
    """


class InvalidArgumentsError(ApiaryError):
    """Arguments of a call do not match the signature, or are not JSON values."""


class NotFoundError(ApiaryError):
    """No workflow or function by that name, or no workflow with that ID."""


class WorkflowConflictError(ApiaryError):
    """A workflow ID was reused for another workflow or with different arguments."""


class FunctionError(ApiaryError):
    """Application code raised an exception; its transaction was rolled back.

    The original exception type name and message are kept, so that a retry of the same
    workflow ID, which returns the recorded error, raises an identical ``FunctionError``.

    Attributes:
        type_name: name of the exception class the application raised, e.g. ``"ValueError"``.
        message: ``str()`` of that exception.
        function: name of the function or step that raised.
        workflow_id: the workflow it ran in, if any.
    """

    def __init__(
        self,
        type_name: str,
        message: str,
        *,
        function: str | None = None,
        workflow_id: str | None = None,
    ) -> None:
        self.type_name = type_name
        self.message = message
        self.function = function
        self.workflow_id = workflow_id
        where = f" in {function}" if function else ""
        super().__init__(f"{type_name}{where}: {message}")

    def to_json(self) -> dict[str, Any]:
        """The error as a JSON object, as it is stored in the workflow status row."""
        return {"type": self.type_name, "message": self.message, "function": self.function}

    @classmethod
    def from_json(cls, data: dict[str, Any], workflow_id: str | None = None) -> FunctionError:
        """Rebuild an error stored by :meth:`to_json`."""
        return cls(
            str(data.get("type", "Error")),
            str(data.get("message", "")),
            function=data.get("function"),
            workflow_id=workflow_id,
        )


class TransactionConflictError(ApiaryError):
    """A transaction kept conflicting with concurrent ones through every retry.

    Nothing of it was committed; the call is safe to retry.
    """


class NotInstalledError(ApiaryError):
    """The database lacks Apiary's system tables: run ``Runtime.install()`` first."""


class DatabaseUnavailableError(ApiaryError):
    """The database cannot be reached or opened. Nothing was committed; safe to retry."""


class AuthenticationError(ApiaryError):
    """An HTTP request carried no API key, or one that is unknown or revoked."""


class PermissionDeniedError(ApiaryError):
    """An API key's role does not allow the route (an invoke key on an admin route)."""
