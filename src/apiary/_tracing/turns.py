"""Stores of one trace file within one process take turns (see :mod:`apiary._tracing.store`).

DuckDB shares one database between two connections to the same file in one process, so
their concurrent transactions conflict; :data:`turns` lets one store have a file for
writing, or any number have it read-only, and makes the others wait.
"""

from __future__ import annotations

import threading
import time


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
