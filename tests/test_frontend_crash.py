"""Frontends killed with SIGKILL while clients run workflows through them.

Two ``apiary serve`` processes share one database. Client threads run workflows through
``apiary.Client`` given both URLs; other requests go to one frontend only and are
abandoned if it dies (a client that gave up). Meanwhile the frontends are killed and
restarted in turn. Afterwards every workflow that reached the database is ``SUCCESS``, the
abandoned ones finished by the surviving frontend's recovery, and every function took
effect exactly once.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import apiary
from apiary._frontend.keys import KeyStore
from tests.apps import ROOT, pipeline
from tests.frontend_support import free_port

pytestmark = pytest.mark.slow

MakeRuntime = Callable[..., apiary.Runtime]
SEED = int(os.environ.get("APIARY_CRASH_SEED", "7"))


class FrontendProcess:
    """``apiary serve tests.apps.pipeline:app`` in a process of its own."""

    def __init__(self, db: str, port: int, trace_store: str) -> None:
        self.db = db
        self.trace_store = trace_store
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "apiary._cli",
                "serve",
                "tests.apps.pipeline:app",
                "--db",
                self.db,
                "--port",
                str(self.port),
                "--heartbeat",
                "0.3",
                "--expiry",
                "1.5",
                "--log-level",
                "warning",
                "--trace-store",
                self.trace_store,
            ],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"frontend on port {self.port} exited at start")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/v1/health", timeout=1).status_code == 200:
                    return
            time.sleep(0.1)
        raise RuntimeError(f"frontend on port {self.port} did not start")

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@pytest.fixture
def frontends(
    make_runtime: MakeRuntime, engine_url: str, tmp_path: Path
) -> Iterator[tuple[list[FrontendProcess], str, apiary.Runtime]]:
    rt = make_runtime(pipeline.app)
    key = KeyStore(rt).create("invoke", "crash test").key
    store = str(tmp_path / "trace.duckdb")  # the two take turns spooling into it
    pair = [FrontendProcess(engine_url, free_port(), store) for _ in range(2)]
    try:
        for frontend in pair:
            frontend.start()
        yield pair, key, rt
    finally:
        for frontend in pair:
            frontend.stop()


def test_killed_frontends_lose_nothing_and_duplicate_nothing(
    frontends: tuple[list[FrontendProcess], str, apiary.Runtime],
) -> None:
    pair, key, rt = frontends
    rng = random.Random(SEED)
    print(f"seed {SEED}")
    results: dict[str, Any] = {}
    abandoned: list[str] = []
    failures: list[BaseException] = []
    stop = threading.Event()
    items = itertools.count(1)
    lock = threading.Lock()

    def client_loop() -> None:
        with apiary.Client([f.url for f in pair], key, timeout=10, retry_for=90) as client:
            while not stop.is_set():
                with lock:
                    item = next(items)
                try:
                    output = client.run("process", item=item)
                except BaseException as exc:
                    failures.append(exc)
                    return
                with lock:
                    results[str(client.last_workflow_id)] = (item, output)

    def abandoning_loop(target: FrontendProcess) -> None:
        # A client that gives up: one attempt at one frontend, never retried.
        number = 0
        with httpx.Client(timeout=2) as http:
            while not stop.is_set():
                number += 1
                workflow_id = f"abandoned-{target.port}-{number}"
                with lock:
                    item = next(items)
                    abandoned.append(workflow_id)
                try:
                    http.post(
                        f"{target.url}/v1/workflows/process",
                        json={"item": item},
                        headers={"Authorization": f"Bearer {key}", "Idempotency-Key": workflow_id},
                    )
                except httpx.HTTPError:
                    time.sleep(0.05)  # it is down: do not spin

    threads = [threading.Thread(target=client_loop) for _ in range(4)]
    threads += [threading.Thread(target=abandoning_loop, args=(f,)) for f in pair]
    for thread in threads:
        thread.start()
    try:
        # Kill the first frontend, bring it back, then kill the second.
        time.sleep(rng.uniform(0.8, 1.5))
        pair[0].kill()
        time.sleep(rng.uniform(1.0, 2.0))
        pair[0].start()
        time.sleep(rng.uniform(0.8, 1.5))
        pair[1].kill()
        time.sleep(rng.uniform(1.0, 2.0))
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=120)
    assert not failures, failures
    assert len(results) > 10, "too few workflows ran to prove anything"

    # The surviving frontend's recovery finishes what the dead ones left PENDING.
    deadline = time.monotonic() + 60
    while True:
        pending = rt._engine.transact(
            lambda db: db.query(
                apiary.Statement(
                    "SELECT workflow_id FROM {sys}workflows WHERE status = 'PENDING'",
                    system=True,
                ),
                (),
            ),
            write=False,
        )
        if not pending or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert pending == [], f"left PENDING: {pending}"

    statuses = rt._engine.transact(
        lambda db: db.query(
            apiary.Statement("SELECT workflow_id, status, output FROM {sys}workflows", system=True),
            (),
        ),
        write=False,
    )
    by_id = {row[0]: row for row in statuses}
    for workflow_id, (item, output) in results.items():
        assert output == 2 * item + 1
        assert by_id[workflow_id][1] == "SUCCESS"
    reached = [w for w in abandoned if w in by_id]
    assert all(by_id[w][1] == "SUCCESS" for w in reached)

    # Exactly once: one event per function per workflow, and the total adds up.
    counts = rt.call("event_counts")
    assert all(row[2] == 1 for row in counts), [row for row in counts if row[2] != 1]
    workflows_with_events = {row[0] for row in counts}
    assert workflows_with_events == set(by_id)
    outputs = [int(apiary._codec.loads(row[2])) for row in statuses]  # 2 * item + 1 each
    assert rt.call("total") == sum(outputs) - len(outputs)  # each item added twice
    print(
        f"{len(results)} workflows through the client; of the abandoned requests, "
        f"{len(reached)} reached the database and finished (by themselves or by recovery), "
        f"{len(abandoned) - len(reached)} never did"
    )
