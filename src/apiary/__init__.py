"""Apiary: transactional functions and workflows that run inside the database.

Write functions whose SQL is declared with :func:`sql`; each runs as one serializable ACID
transaction next to the data. Compose them into workflows (static DAGs) that run to
completion, every function taking effect exactly once through crashes and retries.

>>> import apiary
>>> app = apiary.App("hotel")
"""

from apiary._app import App
from apiary._client import AsyncClient, Client
from apiary._database import Statement
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
from apiary._execution import StepContext, TxContext
from apiary._graph import transaction
from apiary._runtime import Runtime, WorkflowStatus
from apiary._sql import sql

__version__ = "0.1.0"

__all__ = [
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
