"""One frontend: its identity, its app versions, its keys and its recovery loop."""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import socket
import sys
import threading
import uuid
from dataclasses import dataclass
from typing import Any

from apiary._app import App
from apiary._errors import NotFoundError, NotInstalledError, RegistrationError
from apiary._frontend.keys import KeyStore
from apiary._frontend.recovery import Recovery
from apiary._frontend.versions import FIND_DEPLOYMENT, Versions
from apiary._runtime import DEFAULT_STORE, SPOOL_INTERVAL, Runtime, _trace_store
from apiary._tracing.spool_process import SpoolerProcess

log = logging.getLogger("apiary.frontend")


@dataclass
class FrontendConfig:
    """How a frontend runs. Every field has a command-line flag in ``apiary serve``.

    Attributes:
        db: the database URL.
        app: the app to serve at start (``MODULE:APP``), or ``None`` to serve the newest
            version deployed in the database.
        max_body: largest request body, in bytes (larger: 413).
        key_ttl: seconds a verified (or refused) key is cached.
        heartbeat: seconds between heartbeats and recovery sweeps.
        expiry: seconds after which a silent frontend's workflows are claimed.
        orphan_after: seconds after which a ``PENDING`` workflow of an owner that is not
            a frontend (an application's own runtime) is claimed, and after which this
            frontend resumes its own ``PENDING`` workflows that are not running (a run
            that failed on an outage and that no client retried).
        max_workers: threads per app version for database calls and steps.
        address: where this frontend listens (stored with its heartbeat, for operators).
        trace_store: the DuckDB file this frontend spools traces into (opened per round,
            so several frontends on one machine take turns); by default
            ``<database>-trace.duckdb`` beside a SQLite database and
            ``apiary-trace.duckdb`` in the working directory for PostgreSQL; ``None``:
            do not spool (another process does).
        trace: capture what every function reads and writes (``False``: nothing is
            traced, nothing spooled; for benchmarks and for apps that need no trace).
    """

    db: str
    app: App | None = None
    max_body: int = 1 << 20
    key_ttl: float = 5.0
    heartbeat: float = 2.0
    expiry: float = 10.0
    orphan_after: float = 60.0
    max_workers: int = 16
    address: str | None = None
    trace_store: str | None = DEFAULT_STORE
    trace: bool = True


class Frontend:
    """A frontend's state; :func:`apiary._frontend.http.create_app` serves it over HTTP."""

    def __init__(self, config: FrontendConfig, app_name: str | None = None) -> None:
        #: Workflow runs in flight here, by workflow ID (the HTTP layer's): recovery
        #: leaves them alone.
        self.in_flight: dict[str, Any] = {}
        if config.app is None and app_name is None:
            raise ValueError("a frontend needs an app, or the name of one deployed before")
        self.config = config
        self.id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        name = config.app.name if config.app is not None else str(app_name)
        self.versions = Versions(
            name, config.db, owner=self.id, max_workers=config.max_workers, trace=config.trace
        )
        self.keys: KeyStore | None = None
        self.recovery: Recovery | None = None
        self.spooler: SpoolerProcess | None = None
        self._spooler_lock = threading.Lock()

    def start(self) -> None:
        """Serve the configured app (deploying it if this version is new), then the
        newest deployed version; blocking (run it off the event loop)."""
        app = self.config.app
        if app is not None:
            self._serve_initial(app)
        else:
            self._serve_deployed()
        runtime = self.versions.current
        self.keys = KeyStore(runtime, ttl=self.config.key_ttl)
        self.recovery = Recovery(
            self.versions,
            self.id,
            address=self.config.address,
            interval=self.config.heartbeat,
            expiry=self.config.expiry,
            orphan_after=self.config.orphan_after,
            busy=self.in_flight.__contains__,
        )
        store = self.config.trace_store
        if store == DEFAULT_STORE:
            store = _trace_store(self.config.db) or "apiary-trace.duckdb"
        if store and self.config.trace:
            # In a process of its own, so that storing traces takes no time from serving.
            self.spooler = SpoolerProcess(
                self.config.db, store, runtime.app.schemas, SPOOL_INTERVAL
            )
            self.versions.on_new_current = self._follow_schemas
            self.spooler.start()
        log.info("frontend %s serves app %r version %s", self.id, runtime.app.name, runtime.version)

    def _serve_initial(self, app: App) -> None:
        module_name = app.modules()[0] if app.modules() else "app"
        module = sys.modules.get(module_name)
        try:
            source = inspect.getsource(module)  # type: ignore[arg-type]
        except (OSError, TypeError) as exc:
            raise RegistrationError(
                f"cannot read the source of module {module_name!r} to record the deployment"
            ) from exc
        probe = Runtime(app, self.config.db)
        try:
            known = probe._engine.transact(
                lambda db: db.query(FIND_DEPLOYMENT, (app.name, probe.version)), write=False
            )
        except NotInstalledError:
            known = []
        finally:
            probe.close()
        if known:
            # Restarting with an unchanged module keeps a newer deploy current.
            self.versions.deploy_app_known(app, known[0][3])
            self.versions.refresh()
        else:
            self.versions.deploy_app(app, module_name, source)

    def _serve_deployed(self) -> None:
        self.versions.load_newest()
        if self.versions.current is None:  # pragma: no cover - load_newest raises
            raise NotFoundError("nothing deployed")

    async def start_recovery(self) -> None:
        """Begin heartbeats and recovery (claims start at once)."""
        assert self.recovery is not None
        await self.recovery.beat()
        await self.recovery.sweep()
        self.recovery.start()

    def _follow_schemas(self, runtime: Runtime) -> None:
        """A new version declares other tables: restart the spooler with its schemas.

        The spooler types each app table's events from the ``CREATE TABLE`` it was given;
        a table it does not know would be stored as text. The new spooler starts before
        the old one stops (they take turns on the store file).
        """
        schemas = list(runtime.app.schemas)
        with self._spooler_lock:
            old = self.spooler
            if old is None or old.schemas == schemas:
                return
            new = SpoolerProcess(self.config.db, old.store, schemas, SPOOL_INTERVAL)
            new.start()
            self.spooler = new
        old.stop()

    async def stop(self) -> None:
        """Stop recovery, retire the heartbeat, spool what is staged, close every runtime."""
        if self.recovery is not None:
            await self.recovery.stop()
        self.versions.close()  # stages the read-only units' traces still held
        spooler, self.spooler = self.spooler, None
        if spooler is not None:  # spools a last round, then exits
            await asyncio.get_running_loop().run_in_executor(None, spooler.stop)
