"""Real processes for the chaos runs: a private PostgreSQL server and ``apiary serve``.

:class:`PostgresServer` makes its own cluster (through ``scripts/postgres-up``, on a free
port, in a fresh folder under ``/var/tmp``), so crashing it never touches the server the
rest of the suite shares. It runs as the ``postgres`` OS user: this process must be root
or that user. :class:`FrontendProcess` is one ``apiary serve`` process, killed with
SIGKILL and started again at will.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO

import httpx

ROOT = Path(__file__).resolve().parents[2]
PG_BIN = Path("/usr/lib/postgresql/15/bin")
POSTGRES_UP = ROOT / "scripts" / "postgres-up"
APP = "tests.chaos.bank:app"


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def can_run_postgres() -> str | None:
    """Why a private server cannot be run here, or ``None`` if it can."""
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        return "no 'postgres' OS user (install PostgreSQL 15: scripts/postgres-up)"
    if os.geteuid() != 0 and pwd.getpwuid(os.geteuid()).pw_name != "postgres":
        return "a private PostgreSQL server needs root or the postgres user"
    if not (PG_BIN / "pg_ctl").exists():
        return f"no {PG_BIN / 'pg_ctl'} (install PostgreSQL 15: scripts/postgres-up)"
    return None


class PostgresServer:
    """A private PostgreSQL 15 cluster with PL/Python, crashed and restarted at will."""

    def __init__(self, base: Path | None = None, port: int | None = None) -> None:
        if base is None:
            # Not under the test's tmp_path: the postgres user must reach it, and the
            # socket path must stay under 107 bytes.
            base = Path(tempfile.mkdtemp(prefix="apiary-chaos-", dir="/var/tmp"))
        base.chmod(0o755)
        self.base = base
        self.data = base / "data"
        self.port = port or free_port()
        self.url = ""
        self.log = base / "postgresql.log"
        self.crashes = 0

    def _as_postgres(self, *command: str) -> list[str]:
        if os.geteuid() == 0:
            return ["runuser", "-u", "postgres", "--", *command]
        return list(command)

    def start(self) -> str:
        """Start (initialising the cluster the first time); return the database URL."""
        env = {**os.environ, "APIARY_PG_DIR": str(self.data), "APIARY_PG_PORT": str(self.port)}
        done = subprocess.run(
            [str(POSTGRES_UP)],
            env=env,
            capture_output=True,
            text=True,
            check=False,
            timeout=300,
        )
        if done.returncode != 0:
            raise RuntimeError(f"scripts/postgres-up failed:\n{done.stderr[-3000:]}")
        match = re.search(r"APIARY_TEST_POSTGRES_URL=(\S+)", done.stdout)
        if match is None:
            raise RuntimeError(f"scripts/postgres-up printed no URL: {done.stdout!r}")
        self.url = match[1]
        return self.url

    def crash(self) -> None:
        """Stop the server the hard way: every backend dies at once, no checkpoint."""
        subprocess.run(
            self._as_postgres(
                str(PG_BIN / "pg_ctl"), "-D", str(self.data), "stop", "-m", "immediate", "-w"
            ),
            cwd="/",
            capture_output=True,
            check=True,
            timeout=120,
        )
        self.crashes += 1

    def stop(self) -> None:
        """Stop the server if it runs (immediately: its data is thrown away next)."""
        if (self.data / "postmaster.pid").exists():
            subprocess.run(
                self._as_postgres(
                    str(PG_BIN / "pg_ctl"), "-D", str(self.data), "stop", "-m", "immediate"
                ),
                cwd="/",
                capture_output=True,
                check=False,
                timeout=120,
            )

    def destroy(self) -> None:
        """Stop the server and remove its folder."""
        self.stop()
        shutil.rmtree(self.base, ignore_errors=True)

    def count_in_log(self, pattern: str) -> int:
        """How many lines of the server log match ``pattern`` (a regular expression)."""
        if not self.log.exists():
            return 0
        found = re.compile(pattern)
        with self.log.open(errors="replace") as log:
            return sum(1 for line in log if found.search(line))


class FrontendProcess:
    """``apiary serve tests.chaos.bank:app`` in a process of its own."""

    def __init__(
        self,
        db: str,
        *,
        trace_store: Path,
        log_dir: Path,
        env: dict[str, str],
        port: int | None = None,
    ) -> None:
        self.db = db
        self.trace_store = trace_store
        self.log_dir = log_dir
        self.env = env
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.kills = 0
        self._log: IO[bytes] | None = None

    def _spawn(self) -> subprocess.Popen[bytes]:
        self.starts += 1
        if self._log is not None:
            self._log.close()
        self._log = (self.log_dir / f"frontend-{self.port}-{self.starts}.log").open("wb")
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "apiary._cli",
                "serve",
                APP,
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
                str(self.trace_store),
            ],
            cwd=ROOT,
            env={**os.environ, **self.env},
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def start(self, timeout: float = 120.0) -> None:
        """Start and wait until it answers ``/v1/health`` with 200. A process that exits
        at start (its database is down) is started again until ``timeout``."""
        deadline = time.monotonic() + timeout
        self.process = self._spawn()
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                time.sleep(0.3)
                self.process = self._spawn()
                continue
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/v1/health", timeout=2).status_code == 200:
                    return
            time.sleep(0.1)
        raise RuntimeError(f"frontend on port {self.port} did not start in {timeout} s")

    def healthy(self) -> bool:
        """Whether it answers ``/v1/health`` with 200 now."""
        try:
            return httpx.get(f"{self.url}/v1/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def kill(self) -> None:
        """SIGKILL: no cleanup, no last spool, in-flight runs cut wherever they are."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)
        self.kills += 1

    def stop(self) -> None:
        """Stop gracefully (SIGTERM: in-flight runs finish, staged traces are spooled)."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self._log is not None:
            self._log.close()
            self._log = None

    def logs(self) -> list[Path]:
        """Every log file this frontend's processes wrote."""
        return sorted(self.log_dir.glob(f"frontend-{self.port}-*.log"))
