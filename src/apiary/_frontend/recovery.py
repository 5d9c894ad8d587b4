"""Server-side recovery: frontends finish the workflows of frontends that died.

Every frontend has an ID and a heartbeat row in ``{sys}frontends``; the status row of each
workflow it starts names it as owner. Periodically every frontend renews its heartbeat and
looks for ``PENDING`` workflows whose owner's heartbeat is older than ``expiry`` seconds
(or, for owners that are not frontends, such as an application's own ``Runtime``, whose
status row has not changed for ``orphan_after`` seconds). It claims each with a
compare-and-set on the owner column, so that exactly one frontend wins, and finishes it on
the app version it started with. No client needs to come back for a workflow to complete.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

from apiary import _codec
from apiary._database import Database, Statement
from apiary._errors import ApiaryError, FunctionError
from apiary._frontend.versions import Versions

log = logging.getLogger("apiary.frontend")

#: Seconds between a cluster frontend's rounds of deleting finished workflows' outputs
#: left on other partitions (``Runtime.forget_outputs``).
FORGET_INTERVAL = 300.0

HEARTBEAT = Statement(
    "INSERT INTO {sys}frontends (frontend_id, address, started_at, heartbeat_at) "
    "VALUES (?, ?, ?, ?) ON CONFLICT (frontend_id) DO UPDATE "
    "SET heartbeat_at = excluded.heartbeat_at, address = excluded.address",
    system=True,
)
# A frontend that stops cleanly leaves its heartbeat expired: others may claim at once.
RETIRE = Statement("UPDATE {sys}frontends SET heartbeat_at = 0 WHERE frontend_id = ?", system=True)
# Orphans: PENDING workflows whose owner is gone (a frontend whose heartbeat expired,
# or another owner silent for orphan_after seconds), and this frontend's own that have
# been silent as long (a run that failed, e.g. on a 503, and that no client retried;
# the caller skips those still running here).
ORPHANS = Statement(
    "SELECT w.workflow_id, w.owner, w.version, w.name, w.inputs FROM {sys}workflows w "
    "LEFT JOIN {sys}frontends f ON f.frontend_id = w.owner "
    "WHERE w.status = 'PENDING' AND ((w.owner = ? AND w.updated_at < ?) OR ("
    "(w.owner IS NULL OR w.owner <> ?) AND ("
    "(f.frontend_id IS NULL AND w.updated_at < ?) OR f.heartbeat_at < ?))) "
    "ORDER BY w.created_at LIMIT ?",
    system=True,
)
CLAIM = Statement(
    "UPDATE {sys}workflows SET owner = ?, updated_at = ? "
    # NOT IN: PENDING, without steering the planner to the partial index (END_WORKFLOW).
    "WHERE workflow_id = ? AND status NOT IN ('SUCCESS', 'ERROR') "
    "AND owner IS NOT DISTINCT FROM ?",
    system=True,
)


def heartbeat(db: Database, frontend_id: str, address: str | None, started_at: float) -> None:
    """Renew a frontend's heartbeat row."""
    now = time.time()
    db.execute(HEARTBEAT, (frontend_id, address, started_at, now))


def find_orphans(
    db: Database, frontend_id: str, *, expiry: float, orphan_after: float, limit: int = 100
) -> list[tuple[Any, ...]]:
    """``PENDING`` workflows whose owner is gone, or this frontend's own left silent for
    ``orphan_after`` seconds: (id, owner, version, name, inputs)."""
    now = time.time()
    silent = now - orphan_after
    rows = db.query(ORPHANS, (frontend_id, silent, frontend_id, silent, now - expiry, limit))
    return [tuple(row) for row in rows]


def claim(db: Database, frontend_id: str, workflow_id: str, owner: str | None) -> bool:
    """Take over a workflow if its owner is still ``owner`` (exactly one claimer wins)."""
    return db.execute(CLAIM, (frontend_id, time.time(), workflow_id, owner)) == 1


class Recovery:
    """The heartbeat and recovery loop of one frontend."""

    def __init__(
        self,
        versions: Versions,
        frontend_id: str,
        *,
        address: str | None = None,
        interval: float = 2.0,
        expiry: float = 10.0,
        orphan_after: float = 60.0,
        busy: Callable[[str], bool] | None = None,
    ) -> None:
        self.versions = versions
        self.frontend_id = frontend_id
        self.address = address
        self.interval = interval
        self.expiry = expiry
        self.orphan_after = orphan_after
        #: Whether this frontend is running a workflow right now (a request in flight).
        self.busy = busy or (lambda workflow_id: False)
        self.started_at = time.time()
        self.recovered: list[str] = []
        self._task: asyncio.Task[None] | None = None
        self._running: set[asyncio.Task[None]] = set()
        self._next_forget = 0.0

    async def beat(self) -> None:
        """Renew the heartbeat (and pick up a version deployed elsewhere).

        On a cluster the heartbeat goes to every partition, since each holds the status
        rows of its workflow IDs (an unreachable partition is skipped until it returns).
        """
        engine = self.versions.current._engine
        failure: Exception | None = None
        for part in engine.partitions():
            try:
                await self.versions.in_executor(
                    lambda p=part: p.transact(
                        lambda db: heartbeat(db, self.frontend_id, self.address, self.started_at),
                        write=True,
                    )
                )
            except ApiaryError as exc:
                failure = failure or exc
        await self.versions.in_executor(self.versions.refresh)
        if failure is not None:
            raise failure

    async def sweep(self) -> int:
        """Claim and start finishing orphaned workflows; return how many were claimed."""
        runtime = self.versions.current
        claimed = 0
        failure: Exception | None = None
        for part in runtime._engine.partitions():
            try:
                claimed += await self._sweep_partition(part)
            except ApiaryError as exc:
                failure = failure or exc
        if runtime._engine.partitioned and time.monotonic() >= self._next_forget:
            self._next_forget = time.monotonic() + FORGET_INTERVAL
            await self.versions.in_executor(runtime.forget_outputs)
        if failure is not None:
            raise failure
        return claimed

    async def _sweep_partition(self, part: Any) -> int:
        orphans = await self.versions.in_executor(
            lambda: part.transact(
                lambda db: find_orphans(
                    db, self.frontend_id, expiry=self.expiry, orphan_after=self.orphan_after
                ),
                write=False,
            )
        )
        claimed = 0
        for workflow_id, owner, version, name, inputs in orphans:
            if self.busy(workflow_id) or any(
                task.get_name() == workflow_id for task in self._running
            ):
                continue
            won = await self.versions.in_executor(
                lambda w=workflow_id, o=owner: part.transact(
                    lambda db: claim(db, self.frontend_id, w, o), write=True
                )
            )
            if not won:
                continue  # another frontend claimed it first
            claimed += 1
            task = asyncio.create_task(self._finish(workflow_id, version, name, inputs))
            task.set_name(workflow_id)
            self._running.add(task)
            task.add_done_callback(self._running.discard)
        return claimed

    async def _finish(self, workflow_id: str, version: str | None, name: str, inputs: str) -> None:
        try:
            runtime = self.versions.current
            if version and version != runtime.version:
                runtime = await self.versions.in_executor(self.versions.runtime_for, version)
            await runtime.run_async(name, workflow_id=workflow_id, **_codec.loads(inputs))
        except FunctionError:
            pass  # it ended in its application error: finished all the same
        except ApiaryError as exc:
            log.warning("recovering workflow %s failed, will retry: %s", workflow_id, exc)
            return
        except Exception:
            log.exception("recovering workflow %s failed, will retry", workflow_id)
            return
        self.recovered.append(workflow_id)
        log.info("recovered workflow %s (version %s)", workflow_id, version)

    async def _loop(self) -> None:
        while True:
            try:
                await self.beat()
                await self.sweep()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the database may be down: keep beating
                log.warning("heartbeat or recovery failed: %s", exc)
            await asyncio.sleep(self.interval)

    def start(self) -> None:
        """Start the loop on the running event loop."""
        if self._task is None:
            self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        """Stop the loop, let claimed workflows finish, and retire the heartbeat."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._running:
            await asyncio.gather(*self._running, return_exceptions=True)
        for part in self.versions.current._engine.partitions():
            try:
                await self.versions.in_executor(
                    lambda p=part: p.transact(
                        lambda db: db.execute(RETIRE, (self.frontend_id,)), write=True
                    )
                )
            except Exception as exc:
                log.warning("could not retire heartbeat: %s", exc)
