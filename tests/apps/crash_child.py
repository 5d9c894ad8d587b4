"""The child process of the crash tests; the parent kills it with SIGKILL.

Usage::

    python -m tests.apps.crash_child URL loop FIRST THREADS RECOVER
        If RECOVER is 1, first finish what a killed predecessor left PENDING. Then run
        pipeline.process(item) as workflow ``w-<item>`` for item = FIRST, FIRST+1, ... on
        THREADS threads, printing each workflow ID (flushed) before starting it, until
        killed.

    python -m tests.apps.crash_child URL once MODULE WORKFLOW WORKFLOW_ID ARGS_JSON
        Run one workflow of tests.apps.MODULE (which may be told to die in a step).

The parent has installed the app; the child only opens the database.
"""

from __future__ import annotations

import importlib
import itertools
import json
import sys
import threading

import apiary
from tests.apps import pipeline

#: A loop child stops by itself after this many workflows (the parent kills it first).
LOOP_LIMIT = 100_000


def run_loop(url: str, first: int, threads: int, recover: bool) -> None:
    """Run ``process`` workflows until killed, announcing each before it starts."""
    numbers = itertools.count(first)
    announce = threading.Lock()

    with apiary.Runtime(pipeline.app, url) as rt:
        if recover:
            rt.recover()

        def worker() -> None:
            while True:
                with announce:
                    item = next(numbers)
                    if item >= first + LOOP_LIMIT:
                        return
                    sys.stdout.write(pipeline.workflow_id(item) + "\n")
                    sys.stdout.flush()
                rt.run("process", workflow_id=pipeline.workflow_id(item), item=item)

        pool = [threading.Thread(target=worker) for _ in range(threads)]
        for thread in pool:
            thread.start()
        for thread in pool:
            thread.join()


def run_once(url: str, module: str, workflow: str, workflow_id: str, args: str) -> None:
    """Run one workflow; print its output if the process survives."""
    app = importlib.import_module(f"tests.apps.{module}").app
    with apiary.Runtime(app, url) as rt:
        sys.stdout.write("started\n")
        sys.stdout.flush()
        output = rt.run(workflow, workflow_id=workflow_id, **json.loads(args))
        sys.stdout.write(f"finished {output!r}\n")


def main(argv: list[str]) -> None:
    """Dispatch on the mode."""
    url, mode, *rest = argv
    if mode == "loop":
        run_loop(url, int(rest[0]), int(rest[1]), rest[2] == "1")
    elif mode == "once":
        run_once(url, *rest)
    else:
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
