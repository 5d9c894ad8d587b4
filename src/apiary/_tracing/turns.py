"""Stores of one trace file take turns (see :mod:`apiary._tracing.store`).

Within one process, DuckDB shares one database between two connections to the same file,
so their concurrent transactions conflict; :data:`turns` lets one store have a file for
writing, or any number have it read-only, and makes the others wait.

Across processes, DuckDB locks the file: one process may have it open for writing, or
several read-only. :func:`open_file` retries a locked file, and meanwhile leaves a mark
beside it (``<file>.wanted``) that asks the holder to let it go: a background spooler,
which keeps the file open across its rounds, looks for the mark (:func:`asked_for`).
"""

from __future__ import annotations

import os
import threading
import time

import duckdb

from apiary._errors import DatabaseUnavailableError

#: Seconds between tries of a file another process has locked.
LOCK_POLL = 0.05
#: Beside the file, the mark of a store of another process waiting for it.
WANTED_SUFFIX = ".wanted"


def open_file(
    path: str, read_only: bool, deadline: float, *, ask: bool = True
) -> duckdb.DuckDBPyConnection:
    """Connect to the DuckDB file ``path``, retrying while another process has it locked
    until ``deadline`` (``time.monotonic()``), and, with ``ask``, asking that process for
    it (a spooler's routine round does not ask: it tries again at the next one).

    Raises :class:`DatabaseUnavailableError` (caused by DuckDB's error) when the file is
    still locked at ``deadline``, or cannot be opened at all.
    """
    while True:
        try:
            return duckdb.connect(path, read_only=read_only)
        except duckdb.IOException as exc:
            # "Could not set lock on file ...: Conflicting lock is held in ... (PID n)"
            locked = "lock" in str(exc).lower()
            if locked and ask:
                _ask_for(path)  # also when giving up now: a caller may try again soon
            if not locked or time.monotonic() + LOCK_POLL > deadline:
                raise DatabaseUnavailableError(f"trace store {path!r}: {exc}") from exc
            time.sleep(LOCK_POLL)  # another process's round: wait for its end


def _ask_for(path: str) -> None:
    """Leave the mark asking the holder of ``path`` to let it go (best effort: in a folder
    this process cannot write to, it waits for the holder's own release)."""
    try:
        with open(path + WANTED_SUFFIX, "a"):
            pass
    except OSError:
        pass


def asked_for(path: str) -> bool:
    """Whether a store of another process waits for ``path`` (it left its mark). The
    mark is taken away: the caller is expected to let the file go."""
    try:
        os.remove(path + WANTED_SUFFIX)
    except OSError:
        return False
    return True


class Turns:
    """Which stores of this process have which files open: one writer, or readers."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._writers: dict[str, object] = {}
        self._readers: dict[str, int] = {}
        self._waiting: dict[str, int] = {}

    def take(self, key: str, read_only: bool, wait: float) -> bool:
        deadline = time.monotonic() + wait
        with self._changed:
            waiting = False
            try:
                while key in self._writers or (not read_only and self._readers.get(key)):
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return False
                    if not waiting:
                        waiting = True
                        self._waiting[key] = self._waiting.get(key, 0) + 1
                    self._changed.wait(left)
            finally:
                if waiting:
                    self._waiting[key] -= 1
                    if not self._waiting[key]:
                        del self._waiting[key]
            if read_only:
                self._readers[key] = self._readers.get(key, 0) + 1
            else:
                self._writers[key] = True
            return True

    def wanted(self, key: str) -> bool:
        """Whether a store of this process waits for file ``key``."""
        with self._changed:
            return bool(self._waiting.get(key))

    def give_back(self, key: str, read_only: bool) -> None:
        with self._changed:
            if read_only:
                self._readers[key] -= 1
                if not self._readers[key]:
                    del self._readers[key]
            else:
                del self._writers[key]
            self._changed.notify_all()


turns = Turns()
