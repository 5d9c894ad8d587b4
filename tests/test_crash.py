"""Crash tests: real child processes running workflows, killed with SIGKILL.

The parent installs the app, starts a child (``tests/apps/crash_child.py``) on the same
database, kills it, and then finishes what it left behind with ``recover()`` and with
retries of every workflow the child announced. Afterwards every function must have taken
effect exactly once. The kill points are random (seeded; the seed is printed and can be
set with ``APIARY_CRASH_SEED``) or chosen: a step of the app sends itself SIGKILL.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import pickle
import queue
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import apiary
from tests.apps import ROOT, assert_same, pipeline, recorded_outputs, values

pytestmark = pytest.mark.slow

MakeRuntime = Callable[..., apiary.Runtime]

ROUNDS = 5
#: Longest wait for a child to start and announce its first workflow.
START_TIMEOUT = 60


def child_command(url: str, *args: str) -> list[str]:
    """The command line of a crash child."""
    return [sys.executable, "-m", "tests.apps.crash_child", url, *args]


def child_env(**extra: str) -> dict[str, str]:
    """The child's environment: this checkout importable, no inherited kill orders."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("APIARY_TEST_")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in [str(ROOT), env.get("PYTHONPATH")] if p)
    env.update(extra)
    return env


class LoopChild:
    """A child running ``process`` workflows; its announced workflow IDs are collected."""

    def __init__(self, url: str, first: int, threads: int, recover: bool, stderr: Path) -> None:
        self._stderr = stderr.open("ab")
        self.proc = subprocess.Popen(
            child_command(url, "loop", str(first), str(threads), "1" if recover else "0"),
            cwd=ROOT,
            env=child_env(),
            stdout=subprocess.PIPE,
            stderr=self._stderr,
        )
        self.lines: queue.Queue[bytes | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def wait_until_running(self) -> bool:
        """Block until the child announced its first workflow; False if it exited first."""
        first = self.lines.get(timeout=START_TIMEOUT)
        self.lines.put(first)  # keep it for announced()
        return first is not None

    def kill(self) -> int:
        """SIGKILL the child; return its exit status."""
        self.proc.send_signal(signal.SIGKILL)
        code = self.proc.wait(timeout=60)
        self._reader.join(timeout=60)
        assert self.proc.stdout is not None
        self.proc.stdout.close()
        self._stderr.close()
        return code

    def announced(self) -> list[int]:
        """Items of every workflow the child announced (complete lines only)."""
        items: list[int] = []
        while True:
            line = self.lines.get_nowait() if not self.lines.empty() else None
            if line is None:
                return items
            if line.endswith(b"\n"):
                items.append(int(line.decode().strip().removeprefix("w-")))


def in_flight(rt: apiary.Runtime, items: list[int]) -> dict[str, int]:
    """How the last workflows a child announced were left: not started, PENDING, finished."""
    found: dict[str, int] = {}
    for item in items:
        try:
            state = rt.status(pipeline.workflow_id(item)).status
        except apiary.NotFoundError:
            state = "not started"
        found[state] = found.get(state, 0) + 1
    return found


def test_random_kills_leave_every_workflow_done_exactly_once(
    make_runtime: MakeRuntime, tmp_path: Path
) -> None:
    seed = int(os.environ.get("APIARY_CRASH_SEED", random.randrange(2**32)))
    print(f"crash test seed: {seed} (set APIARY_CRASH_SEED={seed} to repeat the delays)")
    rng = random.Random(seed)
    rt = make_runtime(pipeline.app)
    url = rt.url
    stderr = tmp_path / "children.stderr"

    announced: list[int] = []
    next_item = 0
    for round_number in range(ROUNDS):
        threads = rng.randint(2, 4)
        delay = rng.uniform(0.05, 0.5)
        # Sometimes the child first recovers what its predecessor left (and may be killed
        # while doing so); otherwise the leftovers pile up for the parent.
        recover = rng.random() < 0.5
        child = LoopChild(url, next_item, threads, recover, stderr)
        try:
            running = child.wait_until_running()
            if running:
                # Only a random delay: this is where the kill lands mid-workflow.
                time.sleep(delay)
        finally:
            code = child.kill()
        items = child.announced()
        print(
            f"round {round_number}: {threads} threads, recover={recover}, "
            f"killed after {delay:.3f}s (exit {code}), {len(items)} workflows announced, "
            f"left: {in_flight(rt, items[-2 * threads :])}"
        )
        assert running, f"seed {seed}: child exited early:\n{stderr.read_text()}"
        assert code == -signal.SIGKILL, f"seed {seed}: child ended by itself:\n{stderr.read_text()}"
        announced.extend(items)
        next_item = max([next_item - 1, *items]) + 1
    # A crashed child leaves no Python traceback; anything in stderr is a failure of its own.
    assert "Traceback" not in stderr.read_text(), stderr.read_text()
    assert len(announced) == len(set(announced)), f"seed {seed}: an item was announced twice"
    assert announced, f"seed {seed}: no child ever started a workflow"

    # Two runtimes (two frontends) recover at the same time, then retries of every
    # announced ID are spread over both, on several threads.
    other = make_runtime(pipeline.app, install=False)
    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        recoveries = [pool.submit(r.recover) for r in (rt, other)]
        recovered = {workflow_id for done in recoveries for workflow_id in done.result()}
        print(f"recover() finished {len(recovered)} workflows left pending")
        assert recovered <= {pipeline.workflow_id(item) for item in announced}
        outputs = list(
            pool.map(
                lambda item: (rt, other)[item % 2].run(
                    "process", workflow_id=pipeline.workflow_id(item), item=item
                ),
                announced,
            )
        )
    assert outputs == [2 * item + 1 for item in announced], f"seed {seed}"
    for item in announced:
        status = rt.status(pipeline.workflow_id(item))
        assert (status.status, status.output) == ("SUCCESS", 2 * item + 1)
    assert rt.recover() == []  # nothing is pending any more
    assert recorded_outputs(rt) == 0

    by_call = {(wid, fn): (n, low, high) for wid, fn, n, low, high in rt.call("event_counts")}
    expected: dict[tuple[str, str], tuple[int, str | None, str | None]] = {}
    for item in announced:
        workflow_id = pipeline.workflow_id(item)
        key = f"{workflow_id}/stamp"
        expected[(workflow_id, "first")] = (1, None, None)
        expected[(workflow_id, "second")] = (1, key, key)
    duplicates = {call: found for call, found in by_call.items() if found[0] != 1}
    assert not duplicates, f"seed {seed}: functions executed more than once: {duplicates}"
    assert by_call == expected, f"seed {seed}"
    assert rt.call("total") == 2 * sum(announced), f"seed {seed}"


def run_child_once(
    url: str, module: str, workflow: str, workflow_id: str, args: dict[str, Any], **env: str
) -> tuple[int, str, str]:
    """Run one workflow in a child process; return its exit status, stdout and stderr."""
    proc = subprocess.run(
        child_command(url, "once", module, workflow, workflow_id, json.dumps(args)),
        cwd=ROOT,
        env=child_env(**env),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return proc.returncode, proc.stdout, proc.stderr


@pytest.mark.parametrize("die_at", ["look", "look#2"])
def test_a_crash_in_a_step_resumes_from_the_recorded_outputs(
    make_runtime: MakeRuntime, tmp_path: Path, die_at: str
) -> None:
    # roundtrip: emit (function) -> look (step) -> look#2 (step) -> settle (function).
    values.SEEN.clear()
    rt = make_runtime(values.app)
    seen_file = tmp_path / "seen.pickle"
    payload = values.JSON_PAYLOAD
    code, out, err = run_child_once(
        rt.url,
        "values",
        "roundtrip",
        "v-crash",
        {"tag": "t", "payload": payload},
        APIARY_TEST_DIE_AT=die_at,
        APIARY_TEST_SEEN=str(seen_file),
    )
    assert code == -signal.SIGKILL, (code, out, err)
    assert out == "started\n"

    # The child died inside a step: emit committed and recorded its output.
    assert rt.status("v-crash").status == "PENDING"
    assert rt.call("counts", tag="t") == {"emit": 1}
    assert recorded_outputs(rt) >= 1
    child_key, child_value = pickle.loads(seen_file.read_bytes())
    expected = values.expected("t", payload)
    assert child_key == f"v-crash/{die_at}"
    assert_same(child_value, expected)

    assert rt.recover() == ["v-crash"]
    # Here, recorded units returned their outputs (emit, and look when the child died in
    # look#2) without running; the step that died ran again under the same key, on the
    # replayed value, type for type.
    rerun = ["v-crash/look", "v-crash/look#2"] if die_at == "look" else ["v-crash/look#2"]
    assert [key for key, _ in values.SEEN] == rerun
    for _, value in values.SEEN:
        assert_same(value, child_value)
    assert rt.call("counts", tag="t") == {"emit": 1, "settle": 1}
    status = rt.status("v-crash")
    assert status.status == "SUCCESS"
    assert_same(status.output, expected)
    assert_same(rt.run("roundtrip", workflow_id="v-crash", tag="t", payload=payload), expected)
    assert [key for key, _ in values.SEEN] == rerun
    assert recorded_outputs(rt) == 0
    assert rt.recover() == []
    values.SEEN.clear()


def test_a_crash_between_two_writes_runs_each_write_once(
    make_runtime: MakeRuntime, tmp_path: Path
) -> None:
    rt = make_runtime(pipeline.app)
    code, out, err = run_child_once(
        rt.url,
        "pipeline",
        "process",
        "w-7",
        {"item": 7},
        APIARY_TEST_DIE_AT="stamp",
        APIARY_TEST_SEEN=str(tmp_path / "seen.pickle"),
    )
    assert code == -signal.SIGKILL, (code, out, err)
    assert rt.status("w-7").status == "PENDING"
    assert rt.call("event_counts") == [["w-7", "first", 1, None, None]]
    assert rt.call("total") == 7

    # A retry by ID (here, not recover()) resumes the run: first is not executed again.
    assert rt.run("process", workflow_id="w-7", item=7) == 15
    assert rt.call("event_counts") == [
        ["w-7", "first", 1, None, None],
        ["w-7", "second", 1, "w-7/stamp", "w-7/stamp"],
    ]
    assert rt.call("total") == 14
    assert rt.recover() == []
    with pytest.raises(apiary.WorkflowConflictError):
        rt.run("process", workflow_id="w-7", item=8)
