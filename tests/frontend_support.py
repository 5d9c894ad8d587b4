"""A real frontend on a real port, in a background thread, for tests."""

from __future__ import annotations

import contextlib
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import uvicorn

import apiary
from apiary._frontend.frontend import Frontend, FrontendConfig
from apiary._frontend.http import create_app


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class RunningFrontend:
    """A frontend serving on ``url``; ``admin`` and ``invoke`` are keys of those roles."""

    url: str
    frontend: Frontend
    server: uvicorn.Server
    thread: threading.Thread
    admin: str = ""
    invoke: str = ""

    def stop(self) -> None:
        """Stop serving (graceful: in-flight requests finish)."""
        self.server.should_exit = True
        self.thread.join(timeout=30)


@contextlib.contextmanager
def running_frontend(
    db: str, app: apiary.App | None, *, port: int | None = None, **options: float
) -> Iterator[RunningFrontend]:
    """Serve ``app`` on ``db`` until the block ends; keys are created once it is up.

    Traces are spooled into a temporary DuckDB file unless ``trace_store`` is given.
    """
    if "trace_store" not in options:
        options["trace_store"] = tempfile.mkdtemp(prefix="apiary-trace-") + "/trace.duckdb"  # type: ignore[assignment]
    config = FrontendConfig(db=db, app=app, **options)  # type: ignore[arg-type]
    frontend = Frontend(config, None if app is not None else "hotel")
    port = port or free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(frontend),
            host="127.0.0.1",
            port=port,
            log_level="warning",
            lifespan="on",
        )
    )
    thread = threading.Thread(target=server.run, name="frontend", daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the frontend did not start")
        time.sleep(0.02)
    running = RunningFrontend(f"http://127.0.0.1:{port}", frontend, server, thread)
    assert frontend.keys is not None
    running.admin = frontend.keys.create("admin", "test admin").key
    running.invoke = frontend.keys.create("invoke", "test invoke").key
    try:
        yield running
    finally:
        running.stop()
