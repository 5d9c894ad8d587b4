"""A spooler in a process of its own, for runtimes and frontends.

Storing traces in DuckDB is CPU work in Python (decoding payloads, building columns). A
spooler thread inside the application's process takes that time from the application's
threads, under the same interpreter lock. :class:`SpoolerProcess` runs the same
:class:`~apiary._tracing.spool.Spooler` in a child process instead, started with
``python -m apiary._tracing.spool_process``: it opens its own connections to the
database, spools a round every ``interval`` seconds (taking the DuckDB file for the round
only, as a background spooler does), and, when told to stop or when its parent is gone
(its standard input closes, also when the parent is killed), spools a last round and
exits. The configuration (with the database URL, which may hold a password) goes
through standard input, never the command line.
"""

from __future__ import annotations

import concurrent.futures
import json
import logging
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

log = logging.getLogger("apiary.trace")

#: Seconds :meth:`SpoolerProcess.stop` waits for the last round before killing the child.
STOP_TIMEOUT = 60.0


class SpoolerProcess:
    """A child process spooling the staged traces of database ``url`` into ``store``.

    ``schemas`` are the app's ``CREATE TABLE`` statements (``App.schemas``): the child
    types the event tables from them.
    """

    def __init__(self, url: str, store: str, schemas: Sequence[str], interval: float) -> None:
        self.url = url
        self.store = os.path.abspath(store)
        self.schemas = list(schemas)
        self.interval = interval
        self._child: subprocess.Popen[str] | None = None

    def start(self) -> None:
        """Start the child (once)."""
        if self._child is not None:
            return
        package_root = str(Path(__file__).resolve().parents[2])  # the folder of apiary/
        path = [package_root, *filter(None, [os.environ.get("PYTHONPATH")])]
        self._child = subprocess.Popen(
            [sys.executable, "-m", "apiary._tracing.spool_process"],
            stdin=subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": os.pathsep.join(path)},
            text=True,
        )
        config = {
            "url": self.url,
            "store": self.store,
            "schemas": self.schemas,
            "interval": self.interval,
        }
        assert self._child.stdin is not None
        self._child.stdin.write(json.dumps(config) + "\n")
        self._child.stdin.flush()

    @property
    def running(self) -> bool:
        """Whether the child was started and has not exited."""
        return self._child is not None and self._child.poll() is None

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Tell the child to spool a last round and exit; wait for it (then kill it)."""
        child, self._child = self._child, None
        if child is None:
            return
        try:
            assert child.stdin is not None
            child.stdin.write("stop\n")
            child.stdin.close()
        except (BrokenPipeError, OSError):
            pass  # it has exited already
        try:
            child.wait(timeout)
        except subprocess.TimeoutExpired:
            log.warning("the spooler process %s did not stop in %s s; killed", child.pid, timeout)
            child.kill()
            child.wait()
        if child.returncode:
            log.warning("the spooler process exited with status %s", child.returncode)

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<SpoolerProcess {self.store!r} {state}>"


def main() -> int:
    """The child: spool until standard input says ``stop`` or closes."""
    from apiary._engines import open_engine
    from apiary._tracing.spool import Spooler
    from apiary._tracing.store import TraceStore
    from apiary._tracing.tables import tables_of

    logging.basicConfig(format="apiary spooler: %(levelname)s %(message)s")
    config = json.loads(sys.stdin.readline())
    executor = concurrent.futures.ThreadPoolExecutor(1)
    engine = open_engine(config["url"], executor)
    store = TraceStore(config["store"], tables_of(config["schemas"]))
    spooler = Spooler(engine, store)
    try:
        spooler.start(float(config["interval"]), release=True)
        sys.stdin.readline()  # "stop", or "" when the parent is gone
        spooler.stop()
    finally:
        store.close()
        engine.close()
        executor.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
