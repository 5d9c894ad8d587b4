"""Systems served over HTTP by a process of their own, and DBOS Transact.

* ``apiary-http``: ``apiary serve apiary._bench.<workload>:app`` on the PostgreSQL
  database (``placement=db``), as an operator runs it (tracing on, ``record="sfr"``);
* ``rpc-baseline``: the conventional service of :mod:`apiary._bench.rpc_service`;
* ``direct``: that service's handlers called in this process (:mod:`apiary._bench.direct`).

Both are one uvicorn process, started for each client count with a connection pool as
large as the clients, and driven by the client threads over HTTP/1.1 keep-alive
connections, one per thread, on the standard library's ``http.client`` (the transport of
:class:`apiary.Client`): the same load generator for both, so their ratio is the
end-to-end comparison. It costs about a third of the CPU per request of ``httpx``, which
shares the two cores with the servers (docs/BENCHMARKS.md, run I). Their databases are
the shared PostgreSQL database of the workload, checked with the other PostgreSQL systems.
"""

from __future__ import annotations

import importlib.util
import json
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from apiary._bench.systems import (
    SETTLE_WAIT,
    Database,
    PostgresDatabase,
    Runner,
    SkipSystem,
    System,
    pg_available,
)
from apiary._bench.workloads import Workload
from apiary._client import _Connections
from apiary._runtime import Runtime

if TYPE_CHECKING:
    from apiary._bench.runner import Settings

HTTP_SYSTEMS = ("apiary-http", "rpc-baseline")


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class HttpSystem(System):
    """A server process of its own, reached over HTTP by every client thread."""

    def __init__(self, name: str, database: Database, workload: Workload, work_dir: Path) -> None:
        super().__init__(name, database)
        self.workload = workload
        self.work_dir = work_dir
        self.process: subprocess.Popen[bytes] | None = None
        self.url = ""
        self.headers: dict[str, str] = {}
        self.clients: list[_Connections] = []
        self.log = work_dir / f"{workload.name}-{name}.log"

    def install(self) -> None:
        install_schema(self.workload, self.database)

    def command(self, port: int, clients: int) -> list[str]:
        """The server's command line."""
        raise NotImplementedError

    def open(self, clients: int) -> None:
        import httpx

        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                self.command(port, clients), stdout=out, stderr=out, cwd=self.work_dir
            )
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{self.url}{self.health}", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.close()
                tail = self.log.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"{self.name}: the server did not come up:\n{tail}")
            time.sleep(0.2)

    health = "/health"

    def path(self, workflow: str) -> str:
        """The route of an operation."""
        return f"/{workflow}"

    def runner(self) -> Runner:
        connections = _Connections(timeout=60)
        self.clients.append(connections)
        path, base = self.path, self.url
        headers = {**self.headers, "Content-Type": "application/json"}
        dumps, loads = json.dumps, json.loads

        def run(workflow: str, args: dict[str, Any]) -> Any:
            body = dumps(args, separators=(",", ":")).encode()
            answer = connections.request("POST", base + path(workflow), headers, body)
            if answer.status_code != 200:
                text = answer.content[:200].decode(errors="replace")
                raise RuntimeError(f"HTTP {answer.status_code}: {text}")
            return loads(answer.content)["output"]

        return run

    def close(self) -> None:
        for connections in self.clients:
            connections.close()
        self.clients = []
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.terminate()  # uvicorn shuts down on SIGTERM
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


class RpcBaseline(HttpSystem):
    """:mod:`apiary._bench.rpc_service` in a uvicorn process."""

    def command(self, port: int, clients: int) -> list[str]:
        return [
            sys.executable,
            "-m",
            "apiary._bench.rpc_service",
            "--workload",
            self.workload.name,
            "--db",
            self.database.url,
            "--port",
            str(port),
            "--pool",
            str(clients),
        ]


class ApiaryHttp(HttpSystem):
    """``apiary serve`` of the workload's app (placement=db), with an invoke key."""

    health = "/v1/health"
    #: A runtime of the app, for settling (see :meth:`settle`).
    spooling: Runtime | None = None

    def install(self) -> None:
        with Runtime(self.workload.app, self.database.url) as runtime:
            runtime.install()
        created = subprocess.run(
            [*apiary_command(), "keys", "create", "--role", "invoke", "--db", self.database.url],
            capture_output=True,
            text=True,
            check=True,
        )
        self.headers = {"Authorization": f"Bearer {created.stdout.strip().splitlines()[-1]}"}

    @property
    def trace_store(self) -> Path:
        """The DuckDB file the frontend spools its traces into."""
        return self.work_dir / f"{self.workload.name}-apiary-http-trace.duckdb"

    def settle(self) -> None:
        # The frontend's spooler process moves staged traces in rounds; what it has not
        # moved yet is moved from here, over the database. (Traces of read-only units
        # the frontend still holds, at most a quarter of a second's, are staged after.)
        if self.name.endswith(":trace-off"):
            return
        if self.spooling is None:  # made once: registering the app takes a while
            self.spooling = Runtime(
                self.workload.app, self.database.url, trace_store=str(self.trace_store)
            )
        self.spooling.spool(wait=SETTLE_WAIT)

    def close(self) -> None:
        super().close()
        spooling, self.spooling = self.spooling, None
        if spooling is not None:
            spooling.close()

    def command(self, port: int, clients: int) -> list[str]:
        module = f"apiary._bench.{self.workload.name}:app"
        db = f"{self.database.url}?pool_min={clients}&pool_max={max(clients, 16)}"
        return [
            *apiary_command(),
            "serve",
            module,
            "--db",
            db,
            "--port",
            str(port),
            "--log-level",
            "warning",
            "--trace-store",
            str(self.trace_store),
            *(["--no-trace"] if self.name.endswith(":trace-off") else []),
        ]

    def path(self, workflow: str) -> str:
        return f"/v1/workflows/{workflow}"


def install_schema(workload: Workload, database: Database) -> None:
    """Install a workload's schema (and Apiary's tables, which the checks read) for a
    system that is not Apiary, via client placement (no stored procedures)."""
    with Runtime(workload.app, f"{database.url}?placement=client") as runtime:
        runtime.install()


def apiary_command() -> list[str]:
    """The ``apiary`` command, run with this interpreter (and its import path)."""
    return [sys.executable, "-c", "import sys; from apiary._cli import main; sys.exit(main())"]


def make(
    name: str,
    settings: Settings,
    workload: Workload,
    work_dir: Path,
    database: PostgresDatabase | None,
) -> System:
    """The peer system ``name``, or :class:`SkipSystem` saying why it cannot run."""
    if name.partition(":")[0] in HTTP_SYSTEMS:
        pg_available(settings.db_url)
        _require("server", "httpx", "starlette", "uvicorn")
        if name == "rpc-baseline":
            _require("bench", "psycopg_pool")
        assert database is not None
        kind = RpcBaseline if name == "rpc-baseline" else ApiaryHttp
        return kind(name, database, workload, work_dir)
    if name == "direct":
        pg_available(settings.db_url)
        _require("bench", "psycopg_pool")
        assert database is not None
        from apiary._bench.direct import DirectCalls

        return DirectCalls(name, database, workload)
    if name == "dbos":
        from apiary._bench.dbos_peer import make_dbos

        return make_dbos(settings, workload, work_dir, database)
    raise SkipSystem(f"unknown system {name!r}")


def _require(extra: str, *modules: str) -> None:
    """Raise :class:`SkipSystem` naming the first of ``modules`` that is not installed,
    and the extra of the package that installs it."""
    for module in modules:
        if importlib.util.find_spec(module) is None:
            raise SkipSystem(f"{module} is not installed (pip install 'apiary[{extra}]')")
