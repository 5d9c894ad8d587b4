"""Running a frontend under uvicorn: ``apiary serve``."""

from __future__ import annotations

import json
import os
from typing import Any

from starlette.applications import Starlette

from apiary._frontend.frontend import Frontend, FrontendConfig
from apiary._frontend.http import create_app
from apiary._loading import load_app
from apiary._runtime import DEFAULT_STORE

#: Environment variable carrying the configuration to each worker process.
CONFIG_VARIABLE = "APIARY_FRONTEND_CONFIG"


def build(options: dict[str, Any]) -> Starlette:
    """The ASGI application for ``options`` (``apiary serve``'s flags as a dict)."""
    app = load_app(options["app"]) if options.get("app") else None
    config = FrontendConfig(
        db=options["db"],
        app=app,
        max_body=int(options.get("max_body", 1 << 20)),
        key_ttl=float(options.get("key_ttl", 5.0)),
        heartbeat=float(options.get("heartbeat", 2.0)),
        expiry=float(options.get("expiry", 10.0)),
        orphan_after=float(options.get("orphan_after", 60.0)),
        address=options.get("address"),
        trace_store=options.get("trace_store", DEFAULT_STORE),
        trace=bool(options.get("trace", True)),
    )
    return create_app(Frontend(config, options.get("app_name")))


def app_from_environment() -> Starlette:
    """Factory for uvicorn's worker processes (the configuration is in the environment)."""
    return build(json.loads(os.environ[CONFIG_VARIABLE]))


def serve(options: dict[str, Any], *, host: str, port: int, workers: int, log_level: str) -> None:
    """Serve until interrupted. With several workers, each process is a frontend of its own
    (its own ID, heartbeat and recovery), sharing the port."""
    import uvicorn

    options = {**options, "address": f"http://{host}:{port}"}
    if workers > 1:
        os.environ[CONFIG_VARIABLE] = json.dumps(options)
        uvicorn.run(
            "apiary._frontend.server:app_from_environment",
            factory=True,
            host=host,
            port=port,
            workers=workers,
            log_level=log_level,
            lifespan="on",
        )
    else:
        uvicorn.run(build(options), host=host, port=port, log_level=log_level, lifespan="on")
