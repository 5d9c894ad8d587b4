"""HTTP frontend benchmark: the hotel ``book_room`` workflow over HTTP and in-process.

The workflow is ``examples/hotel.py``'s ``book_room(hotel_id, day, customer)``:
``check_avail`` and ``reserve`` in one transaction, then the ``send_email`` step. The
database holds 100 hotels open for 30 days with a million rooms a day; every call picks a
random hotel and day and a customer name used once, so every booking succeeds and the
writes spread over 3,000 rows. Four systems run it on one database, in one run; N is the
number of clients:

* ``http``: ``apiary serve examples/hotel.py:app``, started by this program as a process of
  its own (one uvicorn worker, log level warning), driven by N asyncio tasks in this
  process sharing one :class:`apiary.AsyncClient`, each sending runs back to back (the
  client names each run ``{client_id}-{n}`` and sends it as ``Idempotency-Key``);
* ``wire``: the same server, N tasks writing HTTP/1.1 by hand on asyncio streams: a load
  generator that costs next to nothing, to see the server's own limit;
* ``async``: :meth:`apiary.Runtime.run_async` from N asyncio tasks in this process, the
  call the frontend makes for each request;
* ``threads``: :meth:`apiary.Runtime.run` from N threads.

The in-process runtime has as many threads as the frontend's (16). The clients run on
asyncio's own event loop, as a user's script does; ``async`` on uvloop, the server's loop
(uvicorn picks it when it is installed), so that in-process and server run the workflow
alike (``--client-loop``, ``--runtime-loop``). Tracing is as shipped on both sides: every
function's reads and writes are captured into the staging table, and the server's spooler
moves them into a DuckDB file in the temporary directory, the in-process runs' too (the
in-process runtime does not spool, as a frontend's runtimes do not). Per client count
every system gets a warm-up, then rounds are interleaved (http, wire, async, threads,
http, ...). Tables show medians over rounds of throughput, latency percentiles, and CPU time
per workflow read from ``/proc``: this process (the load generator, or everything when
in-process), the server and, on PostgreSQL, the database server's processes, and what
other processes on the machine used meanwhile (in cores); and for the
process that runs the workflows, its kernel time and context switches, and on PostgreSQL
the serialization failures its log shows. At the end the program checks that
``bookings`` has a row for every booking made, that the rooms taken agree, and that
every ``book_room`` run has a ``SUCCESS`` status row (none ``PENDING``). Run::

    .venv/bin/python -m benchmarks.http_hotel --seconds 3 --rounds 3
    .venv/bin/python -m benchmarks.http_hotel --engine postgres --url URL --seconds 3 --rounds 3

``--profile N`` instead drives the server with N clients while ``py-spy`` (not a
dependency of the project: ``pip install py-spy``) samples the thread holding its GIL, and
prints the top functions and files.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import importlib.metadata
import importlib.util
import json
import os
import platform
import random
import resource
import shutil
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

import apiary
from apiary._loading import load_app
from benchmarks.core_sqlite import Round
from benchmarks.pg_placement import DEFAULT_URL, with_database

ROOT = Path(__file__).resolve().parent.parent
APP_SPEC = "examples/hotel.py:app"
HOTELS, DAYS, ROOMS = 100, 30, 1_000_000
DATABASE = "apiary_http_bench"
#: Threads of the in-process runtime: as many as a frontend gives each app version.
MAX_WORKERS = 16
CLK_TCK = os.sysconf("SC_CLK_TCK")

SYSTEM_NAMES = {
    "http": "http, apiary.AsyncClient",
    "wire": "http, minimal asyncio client",
    "async": "in-process, run_async (tasks)",
    "threads": "in-process, run (threads)",
}
IN_PROCESS = ("async", "threads")

# --------------------------------------------------------------------------------------
# CPU accounting from /proc
# --------------------------------------------------------------------------------------


def process_times(pid: int | str) -> tuple[float, float]:
    """CPU seconds (user, system; all threads) a live process has used; 0 if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0, 0.0
    fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) "
    return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK  # utime, stime


def context_switches(pid: int | str) -> int:
    """Context switches (voluntary and not) of a process's threads so far: all of them for
    this process, the live ones for another (the server's threads live as long as it)."""
    if pid == "self":
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_nvcsw + usage.ru_nivcsw
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            status = (task / "status").read_text()
        except OSError:
            continue  # the thread ended
        for line in status.splitlines():
            if "ctxt_switches:" in line:
                total += int(line.split()[1])
    return total


def children_of(parent: int) -> list[int]:
    """PIDs of the processes whose parent is ``parent`` (PostgreSQL's backends)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat[stat.rindex(")") + 2 :].split()[1]) == parent:
                found.append(int(entry.name))
    return found


def machine_jiffies() -> tuple[int, int]:
    """(busy, total) clock ticks of all CPUs, from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return sum(values) - idle, sum(values)


class CpuMeter:
    """CPU used per round by this process, the HTTP server and PostgreSQL's processes;
    and the serialization failures PostgreSQL logged for the database, if its log is
    readable."""

    def __init__(
        self,
        server_pid: int | None,
        postmaster_pid: int | None = None,
        pg_log: Path | None = None,
        database: str = "",
    ) -> None:
        self.server_pid = server_pid
        self.postmaster_pid = postmaster_pid
        self.pg_log = pg_log
        self.database = database

    def _failures_since(self, offset: int) -> int:
        assert self.pg_log is not None
        with self.pg_log.open("rb") as log:
            log.seek(offset)
            text = log.read()
        # One ERROR line per failure, prefixed "user@database" (scripts/postgres-up's
        # log_line_prefix); other lines of the entry (CONTEXT, STATEMENT) do not repeat it.
        marker = f"@{self.database} ERROR:".encode()
        return sum(
            1
            for line in text.splitlines()
            if marker in line and b"could not serialize access" in line
        )

    def _snapshot(self) -> dict[str, Any]:
        snap: dict[str, Any] = {}
        for key, pid in (("this process", "self"), ("server", self.server_pid)):
            if pid is not None:
                user, system = process_times(pid)
                snap[key] = user + system
                snap[f"{key} sys"] = system
                snap[f"{key} switches"] = context_switches(pid)
        if self.postmaster_pid is not None:
            pids = [self.postmaster_pid, *children_of(self.postmaster_pid)]
            snap["postgres"] = {pid: sum(process_times(pid)) for pid in pids}
        if self.pg_log is not None:
            snap["log"] = self.pg_log.stat().st_size
        snap["machine"] = machine_jiffies()
        return snap

    @contextmanager
    def measure(self, into: dict[str, float]) -> Iterator[None]:
        """Fill ``into`` with CPU seconds (and context switches) per process group, the
        seconds measured, and the machine's busy share."""
        began = time.perf_counter()
        before = self._snapshot()
        yield
        after = self._snapshot()
        into["elapsed"] = time.perf_counter() - began
        for key, value in before.items():
            if key not in ("postgres", "machine", "log"):
                into[key] = after[key] - value
        if "log" in before:
            into["serialization failures"] = self._failures_since(before["log"])
        if "postgres" in before:
            # Backends that started during the round count from zero.
            into["postgres"] = sum(
                t - before["postgres"].get(p, 0.0) for p, t in after["postgres"].items()
            )
        busy = after["machine"][0] - before["machine"][0]
        into["busy"] = busy / max(1, after["machine"][1] - before["machine"][1])
        # CPU seconds of everything else on the machine: other people's jobs show here.
        mine = sum(into.get(key, 0.0) for key in ("this process", "server", "postgres"))
        into["others"] = busy / CLK_TCK - mine


# --------------------------------------------------------------------------------------
# Measuring
# --------------------------------------------------------------------------------------


@dataclass
class Measured(Round):
    """A round (workflows, seconds, latencies) with its bookings and CPU use."""

    booked: int = 0
    cpu: dict[str, float] = field(default_factory=dict)

    def per_workflow(self, key: str, scale: float = 1.0) -> float | None:
        """``cpu[key]`` per workflow, times ``scale`` (1000: CPU seconds to ms); ``None``
        if it was not measured."""
        return self.cpu[key] / self.workflows * scale if key in self.cpu else None


Call = Callable[[int, int, str], Any]


async def async_round(call: Call, clients: int, seconds: float, seed: int, tag: str) -> Measured:
    """``clients`` tasks call ``call(hotel, day, customer)`` back to back for ``seconds``."""
    latencies: list[list[float]] = [[] for _ in range(clients)]
    booked = [0] * clients
    clock = time.perf_counter
    deadline = clock() + seconds

    async def work(index: int) -> None:
        # Same hotels and days for every system: seeded by round and client.
        rng = random.Random(seed * 1000 + index)
        own = latencies[index]
        n = 0
        while True:
            hotel, day = rng.randint(1, HOTELS), rng.randint(1, DAYS)
            begun = clock()
            if begun >= deadline:
                break
            ok = await call(hotel, day, f"{tag}-{index}-{n}")
            own.append(clock() - begun)
            booked[index] += ok is True
            n += 1

    began = clock()
    deadline = began + seconds
    await asyncio.gather(*(work(i) for i in range(clients)))
    lats = [x for own in latencies for x in own]
    return Measured(len(lats), clock() - began, lats, booked=sum(booked))


def thread_round(call: Call, clients: int, seconds: float, seed: int, tag: str) -> Measured:
    """``clients`` threads call ``call(hotel, day, customer)`` back to back for ``seconds``."""
    start_line = threading.Barrier(clients + 1)
    latencies: list[list[float]] = [[] for _ in range(clients)]
    booked = [0] * clients
    errors: list[BaseException] = []
    clock = time.perf_counter
    deadline = 0.0

    def work(index: int) -> None:
        rng = random.Random(seed * 1000 + index)
        own = latencies[index]
        start_line.wait()
        n = 0
        try:
            while True:
                hotel, day = rng.randint(1, HOTELS), rng.randint(1, DAYS)
                begun = clock()
                if begun >= deadline:
                    break
                ok = call(hotel, day, f"{tag}-{index}-{n}")
                own.append(clock() - begun)
                booked[index] += ok is True
                n += 1
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    began = clock()
    deadline = began + seconds
    start_line.wait()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    lats = [x for own in latencies for x in own]
    return Measured(len(lats), clock() - began, lats, booked=sum(booked))


# --------------------------------------------------------------------------------------
# The server and the systems
# --------------------------------------------------------------------------------------


def apiary_command() -> list[str]:
    """The ``apiary`` command of this virtualenv."""
    script = Path(sys.executable).with_name("apiary")
    if not script.exists():
        found = shutil.which("apiary")
        if found is None:
            sys.exit("no apiary command next to this Python or on PATH: pip install -e .")
        script = Path(found)
    return [str(script)]


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Server:
    """``apiary serve`` in a process of its own, as an operator starts it."""

    def __init__(self, db: str, log: Path, trace_store: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        command = [*apiary_command(), "serve", APP_SPEC, "--db", db]
        command += ["--port", str(self.port), "--log-level", "warning"]
        # Explicit: on PostgreSQL the default store is ./apiary-trace.duckdb, in ROOT.
        command += ["--trace-store", str(trace_store)]
        with log.open("wb") as out:
            self.process = subprocess.Popen(command, cwd=ROOT, stdout=out, stderr=out)
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{self.url}/v1/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                sys.exit(f"apiary serve did not come up; its log:\n{log.read_text()}")
            time.sleep(0.2)

    def stop(self) -> None:
        """Stop the server (SIGTERM, as uvicorn expects; SIGKILL if it hangs)."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def new_loop(kind: str) -> asyncio.AbstractEventLoop:
    """A new event loop: ``asyncio``'s own or ``uvloop``."""
    if kind == "uvloop":
        import uvloop

        return uvloop.new_event_loop()
    return asyncio.new_event_loop()


class WireClient:
    """HTTP/1.1 written by hand on asyncio streams, keep-alive connections reused.

    Not a client anyone should use (no retries, no chunked answers): it shows how fast the
    server answers when the load generator costs next to nothing, which matters on a
    machine where the load generator and the server share two cores.
    """

    def __init__(self, port: int, key: str) -> None:
        self.port = port
        self.head = (
            f"POST /v1/workflows/book_room HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Authorization: Bearer {key}\r\nContent-Type: application/json\r\n"
        ).encode()
        self.free: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self.opened: list[asyncio.StreamWriter] = []

    async def run(self, hotel: int, day: int, customer: str) -> Any:
        body = json.dumps({"hotel_id": hotel, "day": day, "customer": customer}).encode()
        if self.free:
            reader, writer = self.free.pop()
        else:
            reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
            self.opened.append(writer)
        writer.write(
            b"%sIdempotency-Key: %s\r\nContent-Length: %d\r\n\r\n%s"
            % (self.head, customer.encode(), len(body), body)
        )
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(
            int(line.split(b":", 1)[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        answer = await reader.readexactly(length)
        self.free.append((reader, writer))
        if head[9:12] != b"200":
            raise AssertionError(f"minimal client: {head!r} {answer!r}")
        return json.loads(answer)["output"]

    async def close(self) -> None:
        """Close every connection (the next run opens new ones)."""
        for writer in self.opened:
            writer.close()
        self.opened, self.free = [], []


class Systems:
    """The contenders, sharing one database and one server; the clients share an event
    loop, ``async`` another (both run in this thread, one at a time)."""

    def __init__(self, db: str, server: Server, key: str, loops: dict[str, str]) -> None:
        self.loops = {role: new_loop(kind) for role, kind in loops.items()}
        # Tracing on, spooling left to the server's spooler, as a frontend's runtimes do.
        self.runtime = apiary.Runtime(
            load_app(APP_SPEC), db, max_workers=MAX_WORKERS, trace_store=None
        )
        self.client = apiary.AsyncClient(server.url, key)
        self.wire = WireClient(server.port, key)

    async def _http(self, hotel: int, day: int, customer: str) -> Any:
        return await self.client.run("book_room", hotel_id=hotel, day=day, customer=customer)

    async def _wire_round(self, clients: int, seconds: float, seed: int, tag: str) -> Measured:
        # uvicorn closes connections idle for 5 s (the other systems' rounds): start anew.
        await self.wire.close()
        return await async_round(self._wire, clients, seconds, seed, tag)

    async def _wire(self, hotel: int, day: int, customer: str) -> Any:
        return await self.wire.run(hotel, day, customer)

    async def _async(self, hotel: int, day: int, customer: str) -> Any:
        return await self.runtime.run_async("book_room", hotel_id=hotel, day=day, customer=customer)

    def _threads(self, hotel: int, day: int, customer: str) -> Any:
        return self.runtime.run("book_room", hotel_id=hotel, day=day, customer=customer)

    def run_round(self, key: str, clients: int, seconds: float, seed: int, tag: str) -> Measured:
        """One timed round of system ``key``."""
        if key == "threads":
            return thread_round(self._threads, clients, seconds, seed, tag)
        if key == "wire":
            return self.loops["client"].run_until_complete(
                self._wire_round(clients, seconds, seed, tag)
            )
        call: Callable[[int, int, str], Awaitable[Any]] = getattr(self, f"_{key}")
        loop = self.loops["runtime" if key in IN_PROCESS else "client"]
        return loop.run_until_complete(async_round(call, clients, seconds, seed, tag))

    def close(self) -> None:
        client_loop = self.loops["client"]
        client_loop.run_until_complete(self.client.close())
        client_loop.run_until_complete(self.wire.close())
        self.runtime.close()
        for loop in self.loops.values():
            loop.close()


# --------------------------------------------------------------------------------------
# The database
# --------------------------------------------------------------------------------------


def prepare_database(db: str, server_url: str | None) -> str:
    """Create the database afresh, install the app, open the hotels; return an invoke key."""
    if server_url is not None:
        import psycopg

        database = urlsplit(db).path.lstrip("/")
        with psycopg.connect(server_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{database}"')
    with apiary.Runtime(load_app(APP_SPEC), db) as runtime:
        runtime.install()
        for hotel in range(1, HOTELS + 1):
            runtime.run("open_hotel", hotel_id=hotel, first_day=1, days=DAYS, rooms=ROOMS)
    created = subprocess.run(
        [*apiary_command(), "keys", "create", "--role", "invoke", "--db", db],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    return created.stdout.strip()


def query(db: str, sql: str) -> list[tuple[Any, ...]]:
    """Rows of one query on the benchmark's database (SQLite file or PostgreSQL)."""
    if db.startswith("sqlite:"):
        lite = sqlite3.connect(db.removeprefix("sqlite:///"))
        try:
            return lite.execute(sql.replace("apiary.", "apiary_")).fetchall()
        finally:
            lite.close()
    import psycopg

    with psycopg.connect(db.split("?", maxsplit=1)[0], autocommit=True) as conn:
        return conn.execute(sql).fetchall()


def drain_traces(db: str, timeout: float = 120.0) -> None:
    """Wait until the server's spooler has moved every staged trace (it spools every
    second), so that each round's CPU includes spooling its own traces, not another's."""
    deadline = time.monotonic() + timeout
    while query(db, "SELECT count(*) FROM apiary.trace_staging")[0][0]:
        if time.monotonic() > deadline:
            raise AssertionError(f"traces still staged after {timeout:g} s: is the server up?")
        time.sleep(0.05)


def check(db: str, booked: int, workflows: int) -> str:
    """Bookings, rooms and status rows against the calls made; a summary line."""
    bookings = query(db, "SELECT count(*) FROM bookings")[0][0]
    taken = query(db, f"SELECT {HOTELS * DAYS * ROOMS} - sum(available) FROM rooms")[0][0]
    statuses = dict(
        query(
            db,
            "SELECT status, count(*) FROM apiary.workflows "
            "WHERE name = 'book_room' GROUP BY status",
        )
    )
    pending = query(db, "SELECT count(*) FROM apiary.workflows WHERE status = 'PENDING'")[0][0]
    if bookings != booked or taken != booked or pending or statuses.get("SUCCESS") != workflows:
        raise AssertionError(
            f"{workflows} book_room calls, {booked} booked; the database has {bookings} "
            f"bookings, {taken} rooms taken, status rows {statuses}, {pending} PENDING"
        )
    return (
        f"{workflows:,} book_room calls, {booked:,} booked: {bookings:,} rows in bookings, "
        f"{taken:,} rooms taken, {statuses['SUCCESS']:,} SUCCESS status rows, none PENDING"
    )


def postgres_meter(db: str, server_pid: int, pg_log: str | None) -> CpuMeter:
    """A meter that also follows the PostgreSQL server, if it runs on this machine."""
    try:
        directory = Path(query(db, "SHOW data_directory")[0][0])
        pid = int((directory / "postmaster.pid").read_text().split()[0])
    except Exception:
        return CpuMeter(server_pid)
    # scripts/postgres-up writes the server's log next to its data directory.
    log = Path(pg_log) if pg_log else directory.parent / "postgresql.log"
    return CpuMeter(
        server_pid,
        pid if Path(f"/proc/{pid}").exists() else None,
        log if log.is_file() else None,
        urlsplit(db).path.lstrip("/"),
    )


def machine(db: str) -> str:
    """One line describing the machine and versions."""
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        "unknown CPU",
    )
    versions = ", ".join(
        f"{name} {importlib.metadata.version(name)}"
        for name in ("httpx", "uvicorn", "starlette", "uvloop", "httptools")
    )
    engine = f"SQLite {sqlite3.sqlite_version}"
    if db.startswith("postgresql"):
        engine = f"PostgreSQL {query(db, 'SHOW server_version')[0][0]}, placement=db"
    return (
        f"{os.cpu_count()} CPUs ({cpu}), {platform.system()} {platform.release()}, "
        f"Python {platform.python_version()}, {engine}, {versions}"
    )


# --------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------


def median(rounds: list[Measured], metric: Callable[[Measured], float | None]) -> float | None:
    """Median of a metric over rounds (``None`` where no round has it)."""
    values = [v for v in map(metric, rounds) if v is not None]
    return statistics.median(values) if values else None


def fmt(value: float | None, spec: str) -> str:
    """A table cell: ``value`` formatted, or ``-``."""
    return "-" if value is None else format(value, spec)


def system_cpu(key: str, measured: Measured) -> float | None:
    """CPU ms per workflow of everything that runs the workflows: the server (it also
    spools the traces of in-process runs) and PostgreSQL, plus this process when the
    workflows run in it; not the HTTP load generator."""
    groups = ["server", "postgres"] + (["this process"] if key in IN_PROCESS else [])
    values = [measured.per_workflow(group, 1000) for group in groups]
    return sum(v for v in values if v is not None)


def table(results: dict[tuple[int, str], list[Measured]]) -> str:
    """Throughput, latency and CPU per workflow, as a Markdown table."""
    lines = [
        "| clients | system | workflows/s (median) | min - max | p50 ms | p99 ms "
        "| CPU ms/wf: this process | server | postgres | system total "
        "| machine busy | others (cores) |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for (clients, key), rounds in results.items():
        cells = [
            f"{clients}",
            SYSTEM_NAMES[key],
            fmt(median(rounds, lambda r: r.throughput), ",.0f"),
            f"{min(r.throughput for r in rounds):,.0f} - {max(r.throughput for r in rounds):,.0f}",
            fmt(median(rounds, lambda r: r.percentile(50)), ".2f"),
            fmt(median(rounds, lambda r: r.percentile(99)), ".2f"),
        ]
        for group in ("this process", "server", "postgres"):
            cells.append(
                fmt(median(rounds, partial(Measured.per_workflow, key=group, scale=1000)), ".3f")
            )
        cells.append(fmt(median(rounds, partial(system_cpu, key)), ".3f"))
        cells.append(fmt(median(rounds, lambda r: r.cpu["busy"] * 100), ".0f") + "%")
        cells.append(fmt(median(rounds, lambda r: r.cpu["others"] / r.cpu["elapsed"]), ".2f"))
        lines.append(f"| {' | '.join(cells)} |")
    return "\n".join(lines)


def work_table(results: dict[tuple[int, str], list[Measured]]) -> str:
    """CPU, kernel share and context switches of the process that runs the workflows."""
    lines = [
        "| clients | system | process | CPU ms/wf | of which kernel | context switches/wf "
        "| serialization failures/wf |",
        "|---:|---|---|---:|---:|---:|---:|",
    ]
    for (clients, key), rounds in results.items():
        process = "this process" if key in IN_PROCESS else "server"
        cells = [
            f"{clients}",
            SYSTEM_NAMES[key],
            process,
            fmt(median(rounds, partial(Measured.per_workflow, key=process, scale=1000)), ".3f"),
            fmt(
                median(rounds, partial(Measured.per_workflow, key=f"{process} sys", scale=1000)),
                ".3f",
            ),
            fmt(median(rounds, partial(Measured.per_workflow, key=f"{process} switches")), ".1f"),
            fmt(
                median(rounds, partial(Measured.per_workflow, key="serialization failures")), ".2f"
            ),
        ]
        lines.append(f"| {' | '.join(cells)} |")
    return "\n".join(lines)


def _ratio(tput: dict[str, float | None], a: str, b: str) -> str:
    top, bottom = tput.get(a), tput.get(b)
    return f"{top / bottom:.2f}x" if top is not None and bottom else "-"


def ratio_table(results: dict[tuple[int, str], list[Measured]]) -> str:
    """Throughput over HTTP against in-process, and the CPU the frontend adds."""
    lines = [
        "| clients | http / in-process threads | http / run_async "
        "| minimal client / run_async | system CPU ms/wf: http - run_async |",
        "|---:|---:|---:|---:|---:|",
    ]
    for clients in sorted({c for c, _ in results}):
        got = {k: rounds for (c, k), rounds in results.items() if c == clients}
        tput = {k: median(v, lambda r: r.throughput) for k, v in got.items()}
        extra = "-"
        if "http" in got and "async" in got:
            served = median(got["http"], partial(system_cpu, "http"))
            own = median(got["async"], partial(system_cpu, "async"))
            if served is not None and own is not None:
                extra = f"{served - own:.3f}"
        cells = [
            _ratio(tput, "http", "threads"),
            _ratio(tput, "http", "async"),
            _ratio(tput, "wire", "async"),
            extra,
        ]
        lines.append(f"| {clients} | {' | '.join(cells)} |")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------
# Profiling the server
# --------------------------------------------------------------------------------------


#: Modules on the stack of ``apiary serve`` below the event loop: left out of the profile's
#: inclusive table (every event-loop sample passes through them).
LAUNCH = ("_cli.py", "_frontend/cli.py", "_frontend/server.py")


def profile(systems: Systems, server: Server, load: str, clients: int, seconds: float,
            top: int, out: Path) -> None:  # fmt: skip
    """Sample the server with py-spy while ``clients`` tasks of system ``load`` drive it.

    Only the thread holding the GIL is sampled (``--gil``): what occupies the server's one
    interpreter. Time in C with the GIL released (SQLite executing, the event loop
    waiting in epoll, the kernel) is not in these samples.
    """
    pyspy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
    if pyspy is None:
        sys.exit("--profile needs py-spy: .venv/bin/pip install py-spy")
    systems.run_round(load, clients, 1.0, 0, f"profile-{load}{clients}w")  # warm-up
    command = f"{pyspy} record --pid {server.process.pid} --rate 250 --duration {int(seconds)} "
    command += f"--format raw --function --gil --nonblocking --output {out}"
    spy = subprocess.Popen(command.split(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(1.0)  # let py-spy attach before the load starts
    measured = systems.run_round(load, clients, seconds, 1, f"profile-{load}{clients}")
    _, errors = spy.communicate()
    if spy.returncode != 0:
        sys.exit(f"py-spy failed: {errors.decode()}")
    own: collections.Counter[str] = collections.Counter()
    files: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = on_loop = 0
    for line in out.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")  # outermost first; each "function (path:first line)"
        samples = int(count)
        total += samples
        on_loop += samples if "(uvicorn/server.py:" in stack else 0  # the event loop's thread
        own[frames[-1]] += samples
        files[frames[-1][frames[-1].rfind("(") + 1 : frames[-1].rfind(":")]] += samples
        for frame in set(frames):
            if "(apiary/" in frame and not any(f"(apiary/{m}" in frame for m in LAUNCH):
                inclusive[frame] += samples
    instants = seconds * 250
    print(
        f"{measured.throughput:,.0f} workflows/s with {clients} clients "
        f"({SYSTEM_NAMES[load]}) while sampled; the GIL was held in {total:,} of about "
        f"{instants:,.0f} samples ({total / instants * 100:.0f}%), by the event loop's thread "
        f"in {on_loop / total * 100:.0f}% of those, by the runtime's threads in the rest\n"
    )
    tables = (("self", own), ("self, by file", files), ("inclusive, apiary's", inclusive))
    for title, counter in tables:
        print(f"| {title} | % of GIL samples |\n|---|---:|")
        for name, samples in counter.most_common(top):
            print(f"| `{name}` | {samples / total * 100:.1f} |")
        print()


# --------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    """Parse arguments, set up database and server, run the benchmark, print the tables."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.http_hotel", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--engine", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument(
        "--url",
        default=DEFAULT_URL,
        help="postgres: a database on the server to use (a superuser role); the benchmark "
        f"creates its own database there, dropping it first (default {DEFAULT_URL})",
    )
    parser.add_argument("--database", default=DATABASE, help=f"default {DATABASE}")
    parser.add_argument(
        "--pg-log",
        metavar="PATH",
        help="postgres: the server's log, to count serialization failures (default: "
        "postgresql.log next to the data directory, as scripts/postgres-up writes it)",
    )
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    parser.add_argument("--seconds", type=float, default=3.0, help="length of a round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per system")
    parser.add_argument("--warmup", type=float, default=1.0, help="warm-up seconds per system")
    parser.add_argument(
        "--systems", nargs="+", choices=list(SYSTEM_NAMES), default=list(SYSTEM_NAMES)
    )
    parser.add_argument(
        "--profile", type=int, metavar="N", help="sample the server under N clients instead"
    )
    parser.add_argument(
        "--profile-load",
        choices=["http", "wire"],
        default="wire",
        help="--profile: the load generator (default wire, the minimal client)",
    )
    parser.add_argument(
        "--client-loop",
        choices=["asyncio", "uvloop"],
        default="asyncio",
        help="event loop of the HTTP clients (default asyncio)",
    )
    parser.add_argument(
        "--runtime-loop",
        choices=["asyncio", "uvloop"],
        default="uvloop" if importlib.util.find_spec("uvloop") else "asyncio",
        help="event loop of the in-process async system (default uvloop, the "
        "server's, when it is installed)",
    )
    parser.add_argument("--top", type=int, default=25, help="rows of profile output")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="apiary-http-bench-") as tmp:
        if args.engine == "sqlite":
            db, server_url = f"sqlite:///{tmp}/hotel.db", None
        else:
            db, server_url = with_database(args.url, args.database, "placement=db"), args.url
        key = prepare_database(db, server_url)
        described = machine(db)
        load_before = os.getloadavg()[0]
        print(f"machine: {described}; load average {load_before:.2f}", file=sys.stderr)
        server = Server(db, Path(tmp, "server.log"), Path(tmp, "trace.duckdb"))
        systems: Systems | None = None
        results: dict[tuple[int, str], list[Measured]] = {}
        booked = workflows = 0
        try:
            loops = {"client": args.client_loop, "runtime": args.runtime_loop}
            systems = Systems(db, server, key, loops)
            meter = CpuMeter(server.process.pid)
            if server_url is not None:
                meter = postgres_meter(db, server.process.pid, args.pg_log)
            if args.profile:
                profile(
                    systems,
                    server,
                    args.profile_load,
                    args.profile,
                    args.seconds,
                    args.top,
                    Path(tmp, "profile.txt"),
                )
                return
            for clients in args.clients:
                for name in args.systems:
                    warm = systems.run_round(name, clients, args.warmup, 0, f"{name}{clients}w")
                    booked, workflows = booked + warm.booked, workflows + warm.workflows
                drain_traces(db)
                for number in range(1, args.rounds + 1):
                    for name in args.systems:
                        cpu: dict[str, float] = {}
                        with meter.measure(cpu):
                            measured = systems.run_round(
                                name, clients, args.seconds, number, f"{name}{clients}r{number}"
                            )
                            drain_traces(db)  # CPU: spooling this round's traces included
                        measured.cpu = cpu
                        results.setdefault((clients, name), []).append(measured)
                        booked += measured.booked
                        workflows += measured.workflows
                        print(
                            f"  clients={clients} round {number}/{args.rounds} "
                            f"{SYSTEM_NAMES[name]:<30} {measured.throughput:8.0f} workflows/s",
                            file=sys.stderr,
                            flush=True,
                        )
        finally:
            if systems is not None:
                systems.close()
            server.stop()
        checked = check(db, booked, workflows)
        load_after = os.getloadavg()[0]

    print()
    print(f"Machine: {described}; load average {load_before:.2f} before, {load_after:.2f} after")
    print(
        f"Workload: book_room on {HOTELS} hotels x {DAYS} days, a new customer per call; "
        f"{args.rounds} rounds of {args.seconds:g} s, interleaved, after {args.warmup:g} s "
        f"warm-up; medians over rounds. CPU: /proc utime+stime per workflow. Event loops: "
        f"clients {args.client_loop}, in-process {args.runtime_loop}, server uvicorn's default."
    )
    print()
    print(table(results))
    print()
    print(ratio_table(results))
    print()
    print(work_table(results))
    print()
    print(f"Checked: {checked}")


if __name__ == "__main__":
    main()
