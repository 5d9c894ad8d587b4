"""Deployed app versions: the registrar over HTTP.

A deploy uploads a module's source. It is registered like any module (every registration
check runs when it is executed), installed (on PostgreSQL its units are compiled into
stored procedures) and recorded in ``{sys}deployments``; from then on it is the app's
current version, on this frontend at once and on the others at their next poll. Every
version keeps a :class:`~apiary.Runtime`, so that a workflow that started on an older
version finishes on it.
"""

from __future__ import annotations

import asyncio
import importlib.abc
import importlib.util
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from apiary._app import App
from apiary._database import Statement
from apiary._errors import ApiaryError, NotFoundError, RegistrationError
from apiary._runtime import Runtime

RECORD_DEPLOYMENT = Statement(
    "INSERT INTO {sys}deployments (app, version, module, source, deployed_at) "
    "VALUES (?, ?, ?, ?, ?) ON CONFLICT (app, version) DO UPDATE "
    "SET deployed_at = excluded.deployed_at",
    system=True,
)
LATEST_DEPLOYMENT = Statement(
    "SELECT version, module, source, deployed_at FROM {sys}deployments WHERE app = ? "
    "ORDER BY deployed_at DESC LIMIT 1",
    system=True,
)
FIND_DEPLOYMENT = Statement(
    "SELECT version, module, source, deployed_at FROM {sys}deployments "
    "WHERE app = ? AND version = ?",
    system=True,
)
LIST_DEPLOYMENTS = Statement(
    "SELECT version, module, deployed_at FROM {sys}deployments WHERE app = ? "
    "ORDER BY deployed_at DESC",
    system=True,
)


class _SourceLoader(importlib.abc.Loader):
    """Loads a module from text, and gives that text to ``inspect`` (the app's version
    is a digest of its source, and PostgreSQL receives the source)."""

    def __init__(self, source: str) -> None:
        self.source = source

    def get_source(self, fullname: str) -> str:
        return self.source

    def exec_module(self, module: ModuleType) -> None:
        exec(compile(self.source, module.__file__ or module.__name__, "exec"), module.__dict__)


def load_module(name: str, source: str) -> ModuleType:
    """Execute ``source`` as module ``name`` (registered in ``sys.modules``)."""
    if not name.replace(".", "_").isidentifier():
        raise RegistrationError(f"module name {name!r} is not a Python module name")
    loader = _SourceLoader(source)
    spec = importlib.util.spec_from_loader(name, loader, origin=f"<deployed {name}>")
    if spec is None:  # pragma: no cover - spec_from_loader returns a spec for a loader
        raise RegistrationError(f"cannot make a module {name!r}")
    module = importlib.util.module_from_spec(spec)
    module.__file__ = f"<deployed {name}>"
    previous = sys.modules.get(name)
    sys.modules[name] = module
    try:
        loader.exec_module(module)
    except BaseException as exc:
        if previous is not None:
            sys.modules[name] = previous
        else:
            sys.modules.pop(name, None)
        if isinstance(exc, RegistrationError):
            raise
        # SystemExit too: a module that calls sys.exit() at import is a module that
        # failed to load, not a request to stop the server (it would answer 500).
        if isinstance(exc, Exception | SystemExit):
            raise RegistrationError(
                f"module {name!r} failed to load: {type(exc).__name__}: {exc}"
            ) from exc
        raise
    return module


def find_app(module: ModuleType, expected: str | None = None) -> App:
    """The one :class:`App` a module defines (named ``expected`` when given)."""
    apps = [value for value in vars(module).values() if isinstance(value, App)]
    if expected is not None:
        apps = [app for app in apps if app.name == expected]
    if len(apps) != 1:
        wanted = f"an apiary.App named {expected!r}" if expected else "one apiary.App"
        raise RegistrationError(
            f"module {module.__name__!r} must define {wanted}; it defines "
            f"{[a.name for a in apps] or 'none'}"
        )
    return apps[0]


@dataclass(frozen=True)
class Deployment:
    """One deployed version of the app."""

    version: str
    module: str
    deployed_at: float


class Versions:
    """The app's versions on one frontend: a runtime each; the newest is current."""

    def __init__(
        self, app_name: str, db_url: str, *, owner: str, max_workers: int = 8, trace: bool = True
    ) -> None:
        self.app_name = app_name
        self.trace = trace
        self.db_url = db_url
        self.owner = owner
        self.max_workers = max_workers
        self._runtimes: dict[str, Runtime] = {}
        self._current: Runtime | None = None
        self._current_at = 0.0
        self._lock = threading.Lock()
        #: Called with the runtime of each version that becomes the current one.
        self.on_new_current: Callable[[Runtime], None] | None = None

    # -- runtimes ----------------------------------------------------------------------

    def _runtime(self, app: App) -> Runtime:
        # pin_version: a PENDING workflow of another version is handed back to be finished
        # on that version's runtime (see handle_version_mismatch in the HTTP layer).
        # trace_store=None: the frontend runs one spooler for all versions (Frontend).
        return Runtime(
            app,
            self.db_url,
            owner=self.owner,
            max_workers=self.max_workers,
            pin_version=True,
            trace=self.trace,
            trace_store=None,
        )

    @property
    def current(self) -> Runtime:
        """The runtime of the newest deployed version."""
        if self._current is None:
            raise NotFoundError(f"no version of app {self.app_name!r} is deployed yet")
        return self._current

    def all(self) -> list[Runtime]:
        """Every loaded runtime."""
        with self._lock:
            return list(self._runtimes.values())

    def _adopt(self, runtime: Runtime, deployed_at: float) -> Runtime:
        with self._lock:
            existing = self._runtimes.get(runtime.version)
            if existing is not None and existing is not runtime:
                runtime.close()
                runtime = existing
            self._runtimes[runtime.version] = runtime
            newer = deployed_at >= self._current_at and self._current is not runtime
            if deployed_at >= self._current_at:
                self._current, self._current_at = runtime, deployed_at
        if newer and self.on_new_current is not None:
            self.on_new_current(runtime)
        return runtime

    # -- deploying -----------------------------------------------------------------------

    def deploy_app(self, app: App, module: str, source: str) -> Deployment:
        """Install ``app`` (from ``module`` with ``source``) and make it the current version."""
        if app.name != self.app_name:
            raise RegistrationError(
                f"this frontend serves app {self.app_name!r}; the module defines {app.name!r}"
            )
        runtime = self._runtime(app)
        try:
            runtime.install()
            deployed_at = time.time()
            runtime._engine.transact(
                lambda db: db.execute(
                    RECORD_DEPLOYMENT, (app.name, runtime.version, module, source, deployed_at)
                ),
                write=True,
            )
        except BaseException:
            runtime.close()
            raise
        self._adopt(runtime, deployed_at)
        return Deployment(runtime.version, module, deployed_at)

    def deploy_source(self, module: str, source: str) -> Deployment:
        """Register, install and serve a module uploaded as text.

        Raises :class:`RegistrationError` (nothing changes) if it does not load, breaks a
        registration rule, or does not install.
        """
        if not isinstance(source, str) or not source.strip():
            raise RegistrationError("the deployed source is empty")
        previous = sys.modules.get(module)
        loaded = load_module(module, source)
        try:
            app = find_app(loaded, self.app_name)
            return self.deploy_app(app, module, source)
        except BaseException as exc:
            # The running version keeps its module.
            if previous is not None:
                sys.modules[module] = previous
            else:
                sys.modules.pop(module, None)
            if isinstance(exc, ApiaryError) and not isinstance(exc, RegistrationError):
                raise RegistrationError(f"module {module!r} does not install: {exc}") from exc
            raise

    def deploy_app_known(self, app: App, deployed_at: float) -> Runtime:
        """Serve ``app`` whose version is already deployed (and installed) as it was."""
        return self._adopt(self._runtime(app), deployed_at)

    # -- loading versions deployed elsewhere ---------------------------------------------

    def load_newest(self) -> Runtime:
        """Serve the newest version deployed in the database (no app given at start)."""
        probe = Runtime(App(self.app_name), self.db_url)
        try:
            rows = probe._engine.transact(
                lambda db: db.query(LATEST_DEPLOYMENT, (self.app_name,)), write=False
            )
        finally:
            probe.close()
        if not rows:
            raise NotFoundError(
                f"no version of app {self.app_name!r} is deployed in {self.db_url}; serve a "
                "module (apiary serve MODULE:APP) or deploy one first"
            )
        return self._load_row(rows[0])

    def _load_row(self, row: tuple[Any, ...]) -> Runtime:
        version, module, source, deployed_at = row
        with self._lock:
            existing = self._runtimes.get(version)
        if existing is not None:
            return self._adopt(existing, deployed_at)
        loaded = load_module(module, source)
        app = find_app(loaded, self.app_name)
        runtime = self._runtime(app)
        if runtime.version != version:
            runtime.close()
            raise RegistrationError(
                f"deployed version {version} of {self.app_name!r} loads as {runtime.version} "
                "here (the source depends on something outside the module)"
            )
        return self._adopt(runtime, deployed_at)

    def refresh(self) -> bool:
        """Load the newest deployed version if it is not current; True if it changed."""
        probe = self._current or next(iter(self._runtimes.values()), None)
        if probe is None:
            return False
        row = probe._engine.transact(
            lambda db: db.query(LATEST_DEPLOYMENT, (self.app_name,)), write=False
        )
        if not row or (self._current is not None and row[0][0] == self._current.version):
            return False
        self._load_row(row[0])
        return True

    def runtime_for(self, version: str) -> Runtime:
        """The runtime of ``version``, loaded from ``{sys}deployments`` if needed."""
        with self._lock:
            found = self._runtimes.get(version)
        if found is not None:
            return found
        rows = self.current._engine.transact(
            lambda db: db.query(FIND_DEPLOYMENT, (self.app_name, version)), write=False
        )
        if not rows:
            raise NotFoundError(f"version {version} of app {self.app_name!r} was never deployed")
        # An older version has an older deployed_at, so loading it leaves the current one.
        return self._load_row(rows[0])

    def deployments(self) -> list[Deployment]:
        """Every deployed version, newest first."""
        rows = self.current._engine.transact(
            lambda db: db.query(LIST_DEPLOYMENTS, (self.app_name,)), write=False
        )
        return [Deployment(version, module, at) for version, module, at in rows]

    async def in_executor(self, work: Any, *args: Any) -> Any:
        """Run blocking work on the current runtime's threads, off the event loop."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.current._pool, work, *args)

    def close(self) -> None:
        """Close every runtime."""
        with self._lock:
            runtimes, self._runtimes = list(self._runtimes.values()), {}
            self._current = None
        for runtime in runtimes:
            runtime.close()
