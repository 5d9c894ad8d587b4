"""The spooler: moves staged traces from the OLTP database to the DuckDB trace store.

Each committed unit stages one row in ``{sys}trace_staging`` (:mod:`apiary._capture`).
:meth:`Spooler.spool_once` moves one batch in three steps:

1. read the ``batch`` lowest staged ids (one OLTP read transaction);
2. store them in DuckDB and record their ids in ``spooled``, in one DuckDB transaction
   (:meth:`TraceStore.ingest`);
3. delete exactly those ids from staging (one OLTP write transaction).

Crash safety: a crash before step 2 commits leaves the rows staged; a crash between 2 and
3 leaves them staged *and* in ``spooled``, so the next spool skips storing them and
deletes them. Nothing is lost and nothing is stored twice. Staged ids are not in commit
order (a transaction that took id 7 may commit after the one that took id 8), so the
spooler never keeps a high-water mark: it deletes the ids it read, and a row committed
later with a lower id is simply read by a later spool.

DuckDB lets one process at a time open a file for writing. :meth:`Spooler.start` runs a
background thread only if this process gets the file; when another process holds it,
that process spools, and ``start`` logs once and returns ``False``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Protocol, TypeVar

from apiary._database import Database, Statement
from apiary._errors import DatabaseUnavailableError
from apiary._tracing.layout import StagedRow
from apiary._tracing.store import TraceStore

T = TypeVar("T")

log = logging.getLogger("apiary.trace")

#: Seconds the last round at :meth:`Spooler.stop` waits for a store busy in this process.
STOP_WAIT = 5.0
#: Seconds a background spooler in ``release`` mode keeps the store open across rounds
#: at most, when no one asks for it (see :meth:`Spooler._round`).
HOLD = 10.0
#: Seconds between looks, while a ``release`` spooler waits for its next round, for
#: another store asking for the file.
ASKED_POLL = 0.1
#: Seconds a ``release`` spooler leaves the store alone after letting it go because
#: another store asked for it: enough for one that retries every tenth of a second.
YIELD_GRACE = 1.0

_STAGED = Statement(
    "SELECT id, workflow_id, invocation_id, payload FROM {sys}trace_staging ORDER BY id LIMIT ?",
    system=True,
)
# One DELETE text for every batch, so that engines prepare it once: ids come in chunks of
# _CHUNK, the last chunk padded by repeating an id (harmless in IN).
_CHUNK = 100
_DELETE = Statement(
    f"DELETE FROM {{sys}}trace_staging WHERE id IN ({', '.join('?' * _CHUNK)})", system=True
)


class TransactionRunner(Protocol):
    """What the spooler needs from an engine: run ``work`` in one OLTP transaction."""

    def transact(self, work: Callable[[Database], T], *, write: bool) -> T:
        """Run ``work(db)`` in one transaction and return its result."""
        ...


class Spooler:
    """Moves staged traces of ``engine``'s database into ``store``, ``batch`` rows at a time.

    ``engine`` is an engine (``Runtime._engine``) or anything with its ``transact``.
    Calls are serialized; the background thread (:meth:`start`) uses the same methods.
    """

    def __init__(self, engine: TransactionRunner, store: TraceStore, batch: int = 1000) -> None:
        if batch < 1:
            raise ValueError(f"batch must be at least 1, not {batch}")
        self.engine = engine
        self.store = store
        self.batch = batch
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._warned = False
        self._release = False
        self._full = False
        self._opened_at = 0.0
        self._yielded_at = -YIELD_GRACE

    def spool_once(self) -> int:
        """Move one batch from each database holding data (one, or a cluster's
        partitions); return how many staged rows it removed from staging.

        A partition that cannot be reached does not hold up the others: they are spooled,
        then its error is raised.
        """
        parts = self.engine.partitions() if hasattr(self.engine, "partitions") else [self.engine]
        moved = 0
        self._full = False
        failure: BaseException | None = None
        with self._lock:
            for part in parts:
                try:
                    found, stored = self._move(part)
                except DatabaseUnavailableError as exc:
                    failure = failure or exc
                    continue
                moved += len(stored)
                self._full = self._full or len(found) >= self.batch
        if failure is not None:
            raise failure
        return moved

    def _move(self, part: TransactionRunner) -> tuple[list[StagedRow], list[int]]:
        """One batch of one database. A connection that broke since the last round (the
        server restarted) fails once and is replaced: the batch is tried once more (moving
        is safe to repeat: the store skips what it already holds)."""
        for attempt in (0, 1):
            try:
                found = part.transact(self._read, write=False)
                if not found:
                    return found, []
                stored = self.store.ingest(found)
                self._delete(part, stored)
                return found, list(stored)
            except DatabaseUnavailableError:
                if attempt:
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    def spool_all(self) -> int:
        """Move batches until staging is empty; return how many rows were moved."""
        total = 0
        while True:
            total += self.spool_once()
            if not self._full:  # every read saw all there was
                return total

    def _read(self, db: Database) -> list[StagedRow]:
        rows = db.query(_STAGED, (self.batch,))
        return [(int(i), w, v, str(p)) for i, w, v, p in rows]

    def _delete(self, part: TransactionRunner, ids: Sequence[int]) -> None:
        """Delete staged rows by id (after they are safely in the store)."""

        def delete(db: Database) -> None:
            for start in range(0, len(ids), _CHUNK):
                chunk = list(ids[start : start + _CHUNK])
                db.execute(_DELETE, chunk + [chunk[0]] * (_CHUNK - len(chunk)))

        if ids:
            part.transact(delete, write=True)

    # -- background thread -----------------------------------------------------------

    def start(self, interval: float = 1.0, *, release: bool = False) -> bool:
        """Spool in a daemon thread, every ``interval`` seconds while staging is empty.

        Without ``release``, the store stays open (locked) while the thread runs, and
        ``False`` is returned, doing nothing, if another process holds it: that process
        spools (logged once). With ``release``, the thread lets the store go between
        rounds whenever another store, of this process or another (``apiary trace``,
        another spooler), waits for it, and at least every :data:`HOLD` seconds; a round
        that finds it taken waits for the next.
        """
        if self._thread is not None:
            return True
        self._release = release
        if not release:
            try:
                self.store.open(wait=0)
            except DatabaseUnavailableError as exc:
                if not self._warned:
                    self._warned = True
                    log.warning("not spooling traces: another process has the store (%s)", exc)
                return False
        self._stopping.clear()
        self._thread = threading.Thread(
            target=self._run, args=(interval,), name="apiary-spooler", daemon=True
        )
        self._thread.start()
        return True

    def stop(self) -> None:
        """Stop the thread, then spool what remains once. The store stays open."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        self._stopping.set()
        thread.join()
        if self._release:
            self._round(wait=STOP_WAIT, ask=True)
        else:
            self.spool_all()

    @property
    def running(self) -> bool:
        """Whether the background thread runs."""
        return self._thread is not None

    def _run(self, interval: float) -> None:
        failure: str | None = None
        while not self._stopping.is_set():
            try:
                if self._release:
                    self._round()
                else:
                    self.spool_once()
                failure = None
            except Exception as exc:  # the database may be down: keep trying
                if repr(exc) != failure:  # once per distinct failure, not every interval
                    log.exception("spooling traces failed; retrying every %s s", interval)
                failure = repr(exc)
                self._full = False
            if not self._full:  # staging was drained: wait (a full batch: go on)
                self._pause(interval)

    def _pause(self, interval: float) -> None:
        """Wait ``interval`` seconds for the next round; in ``release`` mode, let the
        store go as soon as another store asks for it."""
        if not self._release:
            self._stopping.wait(interval)
            return
        deadline = time.monotonic() + interval
        while not self._stopping.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self._stopping.wait(min(left, ASKED_POLL))
            self._yield_if_asked()

    def _yield_if_asked(self) -> bool:
        """Close the store if another store waits for it (``release`` mode), and leave
        it alone for :data:`YIELD_GRACE` seconds; return whether it did."""
        if not (self.store.is_open and self.store.wanted()):
            return False
        with self._lock:
            self.store.close()
        self._yielded_at = time.monotonic()
        return True

    def _round(self, wait: float = 0.0, ask: bool = False) -> int:
        """Spool until staging is empty with the store open (``release`` mode).

        The store is opened if it is not, and kept open for the next round unless another
        store waits for it (:meth:`TraceStore.wanted`), it has been held :data:`HOLD`
        seconds, or the spooler stops: opening a DuckDB file and closing it (which
        checkpoints it) cost as much as storing a second's traces (BENCHMARKS.md,
        "Holding the trace store between rounds"). If another process, or another store
        of this process, has the store open, wait up to ``wait`` seconds (asking a holder
        in another process for it only with ``ask``: the last round, at stop), then leave
        the round to the next (or to that holder).
        """
        if not self.store.is_open:
            if not ask and time.monotonic() - self._yielded_at < YIELD_GRACE:
                return 0  # it was just handed to a store that asked: its turn first
            try:
                self.store.open(wait=wait, ask=ask)
            except DatabaseUnavailableError:
                return 0  # someone else has it right now: try at the next round
            self._opened_at = time.monotonic()
        try:
            self.spool_all()
        except BaseException:
            self.store.close()
            raise
        if not self._yield_if_asked() and (
            self._stopping.is_set() or time.monotonic() - self._opened_at >= HOLD
        ):
            self.store.close()
        return 0

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<Spooler {self.store.path!r} batch={self.batch} {state}>"
