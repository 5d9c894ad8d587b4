"""What the execution core needs from a database, and how conflicts are retried.

A :class:`Statement` is a declared prepared statement; a :class:`Database` adapter runs
one (each engine has its own: ``sqlite3``, psycopg, PL/Python's ``plpy``); adapters raise
:class:`TransactionConflict` for serialization failures, and engines retry the whole
transaction on the schedule of :func:`retry_attempts` and :func:`backoff_delay`.

Part of the execution core: standard library only (it also runs inside PostgreSQL).
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator, Sequence
from typing import Any, Protocol


class Statement:
    """A parameterized prepared statement, declared once with :func:`apiary.sql`.

    ``text`` is portable SQL with ``?`` placeholders. Engines prepare it once per
    connection (SQLite's statement cache, ``plpy.prepare`` plans, server-side prepares).
    The registrar attaches its analysis (read or write, tables) as ``info``.
    """

    __slots__ = ("info", "system", "text")

    def __init__(self, text: str, *, system: bool = False) -> None:
        if not isinstance(text, str):
            raise TypeError(f"apiary.sql() takes the SQL text as a str, not {type(text).__name__}")
        self.text = text
        self.system = system
        self.info: Any = None

    def __repr__(self) -> str:
        return f"Statement({self.text!r})"


class Database(Protocol):
    """What the execution core needs from a database: run a prepared statement.

    Implementations map a :class:`Statement` to the engine's prepared form (caching it)
    and raise :class:`TransactionConflict` for serialization failures and deadlocks.
    """

    def query(self, stmt: Statement, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        """Run a statement that returns rows; return them as tuples."""
        ...

    def execute(self, stmt: Statement, params: Sequence[Any]) -> int:
        """Run a statement for its effect; return the number of rows affected."""
        ...


class TransactionConflict(BaseException):
    """Signal: the transaction lost a serialization conflict and must be retried whole.

    Adapters raise it. It derives from ``BaseException`` so that application code with
    ``except Exception`` cannot swallow it; the context is also poisoned, so a unit whose
    code swallowed it anyway still fails and is retried rather than committing partially.
    """


#: How long a transaction that keeps losing serialization conflicts is retried.
RETRY_SECONDS = 30.0


def retry_attempts(seconds: float = RETRY_SECONDS) -> Iterator[int]:
    """Attempt numbers 1, 2, ... until ``seconds`` have passed since the first.

    The caller sleeps :func:`backoff_delay` between attempts (with ``time.sleep`` or
    ``asyncio.sleep``). A time budget, not a count: under heavy contention a transaction
    may lose many rounds in a row, and giving up then would only move the retry to the
    caller.
    """
    deadline = time.monotonic() + seconds
    attempt = 0
    while True:
        attempt += 1
        yield attempt
        if time.monotonic() >= deadline:
            return


def backoff_delay(attempt: int, *, base: float = 0.001, cap: float = 0.1) -> float:
    """Seconds to wait before retry ``attempt`` (1-based): jittered exponential backoff.

    Full jitter spreads the retries of transactions that conflicted with each other, so
    they do not collide again in lock step.
    """
    return random.uniform(0, min(cap, base * (2 ** min(attempt, 16))))
