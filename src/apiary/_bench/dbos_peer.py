"""``dbos``: the workloads in DBOS Transact, in a process of its own, driven over pipes.

DBOS is not a dependency of apiary: it runs with the Python of its own virtualenv, named by
``APIARY_BENCH_DBOS_PYTHON`` (default ``/tmp/dbos-venv/bin/python``), executing
:mod:`apiary._bench.dbos_worker` as a script (which imports nothing of apiary). The worker
gets the workload module's SQL texts at start, so it runs the same statements on the same
PostgreSQL database as the other systems; its system database is a second database,
``apiary_bench_dbos_sys``, made afresh. Each client thread sends an operation as a JSON
line and waits for its answer: the pipe adds a few tens of microseconds per operation.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from apiary._bench import dbos_worker
from apiary._bench.systems import (
    PostgresDatabase,
    Runner,
    SkipSystem,
    System,
    pg_available,
)
from apiary._bench.workloads import Workload
from apiary._runtime import Runtime

if TYPE_CHECKING:
    from apiary._bench.runner import Settings

DEFAULT_PYTHON = "/tmp/dbos-venv/bin/python"


class DbosSystem(System):
    """The DBOS worker process, started for each client count with as many threads."""

    def __init__(
        self, database: PostgresDatabase, workload: Workload, python: str, work_dir: Path
    ) -> None:
        super().__init__("dbos", database)
        self.workload = workload
        self.python = python
        self.log = work_dir / f"{workload.name}-dbos.log"
        assert database.server_url
        self.system_db = PostgresDatabase(database.server_url, "apiary_bench_dbos_sys")
        self.process: subprocess.Popen[str] | None = None
        self.waiting: dict[int, list[Any]] = {}
        self.lock = threading.Lock()
        self.ids = itertools.count()

    def install(self) -> None:
        with Runtime(self.workload.app, f"{self.database.url}?placement=client") as runtime:
            runtime.install()
        self.system_db.create()

    def open(self, clients: int) -> None:
        module = self.workload.module
        setup = {
            "workload": self.workload.name,
            "threads": clients,
            "app_url": self.database.url,
            "system_url": self.system_db.url,
            "sql": {k: v for k, v in vars(module).items() if k.endswith("_SQL")},
            "consts": {"RADIUS": getattr(module, "RADIUS", None)},
        }
        with self.log.open("a") as err:
            self.process = subprocess.Popen(
                [self.python, dbos_worker.__file__],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
                bufsize=1,
            )
        assert self.process.stdin is not None
        assert self.process.stdout is not None
        self.process.stdin.write(json.dumps(setup) + "\n")
        self.process.stdin.flush()
        ready = self.process.stdout.readline()
        if not ready:
            self.close()
            tail = self.log.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"dbos: the worker did not start:\n{tail}")
        threading.Thread(target=self._read, args=(self.process.stdout,), daemon=True).start()

    def _read(self, stream: Any) -> None:
        for line in stream:
            reply = json.loads(line)
            with self.lock:
                slot = self.waiting.pop(reply["id"])
            slot.append(reply)
            slot[0].set()

    def runner(self) -> Runner:
        process = self.process
        assert process is not None
        assert process.stdin is not None
        stdin = process.stdin

        def run(workflow: str, args: dict[str, Any]) -> Any:
            number = next(self.ids)
            done = threading.Event()
            slot: list[Any] = [done]
            line = json.dumps({"id": number, "workflow": workflow, "args": args}) + "\n"
            with self.lock:
                self.waiting[number] = slot
                stdin.write(line)
                stdin.flush()
            if not done.wait(120):
                raise TimeoutError("dbos: no answer in 120 s")
            reply = slot[1]
            if "error" in reply:
                raise RuntimeError(reply["error"])
            return reply["output"]

        return run

    def close(self) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        try:
            assert process.stdin is not None
            process.stdin.write("\n")
            process.stdin.close()
            process.wait(timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            process.kill()
            process.wait()


def make_dbos(
    settings: Settings, workload: Workload, work_dir: Path, database: PostgresDatabase | None
) -> System:
    """The ``dbos`` system, or :class:`SkipSystem` saying why it cannot run."""
    python = os.environ.get("APIARY_BENCH_DBOS_PYTHON", DEFAULT_PYTHON)
    if not Path(python).exists():
        raise SkipSystem(
            f"DBOS Transact not found: no {python} (python3 -m venv /tmp/dbos-venv && "
            "/tmp/dbos-venv/bin/pip install dbos, or set APIARY_BENCH_DBOS_PYTHON)"
        )
    found = subprocess.run(
        [python, "-c", "import dbos"], check=False, capture_output=True, text=True
    )
    if found.returncode != 0:
        raise SkipSystem(f"{python} cannot import dbos (pip install dbos in that virtualenv)")
    pg_available(settings.db_url)
    assert database is not None
    return DbosSystem(database, workload, python, work_dir)
