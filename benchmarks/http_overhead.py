"""Where an HTTP request's time goes: apiary serve against the RPC baseline, one client.

``apiary bench`` drives both HTTP systems with ``httpx.Client`` (one per thread). This
program takes the same two servers (``apiary serve`` of the counter workload with
``--no-trace``, and the RPC service of :mod:`apiary._bench.rpc_service`) on a database of
their own, and times the counter's ``read`` and ``increment`` one request at a time with
two load generators:

* ``httpx``: ``httpx.Client``, as ``apiary bench`` does;
* ``apiary.Client``: the client library (on ``httpx``), for ``apiary serve`` only;
* ``http.client``: the standard library's ``HTTPConnection``, kept alive;
* ``raw``: HTTP/1.1 written on a keep-alive socket by hand, which costs next to nothing.

Rounds are interleaved (system, client, operation). For each it prints the median
latency and the CPU per request of the server process and of this process (the client),
read from ``/proc``. Run::

    .venv/bin/python -m benchmarks.http_overhead --db-url postgresql://... [--requests 1500]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from apiary._bench import counter
from apiary._bench.peers import ApiaryHttp, HttpSystem, RpcBaseline
from apiary._bench.systems import PostgresDatabase
from apiary._bench.workloads import Workload

Call = Callable[[str, dict[str, Any]], Any]


def process_cpu(pid: int) -> float:
    """User + system seconds of a process."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def raw_client(system: HttpSystem) -> Call:
    """HTTP/1.1 POSTs of JSON on one keep-alive socket, answers read by Content-Length."""
    host, port = system.url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    reader = sock.makefile("rb")
    headers = "".join(f"{name}: {value}\r\n" for name, value in system.headers.items())

    def call(op: str, args: dict[str, Any]) -> Any:
        body = json.dumps(args).encode()
        head = (
            f"POST {system.path(op)} HTTP/1.1\r\nHost: {host}\r\n{headers}"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        sock.sendall(head.encode() + body)
        status = reader.readline()
        length = 0
        while (line := reader.readline()) not in (b"\r\n", b""):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        answer = reader.read(length)
        if not status.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(f"{system.name}: {status!r} {answer[:200]!r}")
        return json.loads(answer)["output"]

    return call


def stdlib_client(system: HttpSystem) -> Call:
    """``http.client.HTTPConnection`` with keep-alive."""
    import http.client

    host, port = system.url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port))
    headers = {**system.headers, "Content-Type": "application/json"}

    def call(op: str, args: dict[str, Any]) -> Any:
        conn.request("POST", system.path(op), body=json.dumps(args), headers=headers)
        answer = conn.getresponse()
        body = answer.read()
        if answer.status != 200:
            raise RuntimeError(f"{system.name}: HTTP {answer.status} {body[:200]!r}")
        return json.loads(body)["output"]

    return call


def library_client(system: HttpSystem) -> Call:
    """``apiary.Client`` with the system's key."""
    import apiary

    key = system.headers["Authorization"].removeprefix("Bearer ")
    client = apiary.Client(system.url, api_key=key)
    return lambda op, args: client.run(op, **args)


def main(argv: list[str] | None = None) -> None:
    """Time both servers with both clients and print a table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--db-url", required=True, help="a superuser's postgresql:// URL")
    parser.add_argument("--requests", type=int, default=1500, help="timed requests a round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--keys", type=int, default=10_000, help="counters in the database")
    args = parser.parse_args(argv)

    workload = Workload("counter", counter)
    database = PostgresDatabase(args.db_url, "apiary_http_overhead")
    database.create()
    work_dir = Path(tempfile.mkdtemp(prefix="apiary-http-overhead-"))
    systems: list[HttpSystem] = [
        ApiaryHttp("apiary-http:trace-off", database, workload, work_dir),
        RpcBaseline("rpc-baseline", database, workload, work_dir),
    ]
    systems[0].install()
    database.load(workload, {"keys": args.keys})
    results: dict[tuple[str, str, str], list[tuple[float, float, float]]] = {}
    try:
        for system in systems:
            system.open(1)
        kinds: list[tuple[str, Callable[[HttpSystem], Call]]] = [
            ("httpx", HttpSystem.runner),
            ("apiary.Client", library_client),
            ("http.client", stdlib_client),
            ("raw", raw_client),
        ]
        # Made afresh for each round of each: uvicorn closes a connection idle for 5 s.
        clients = {
            (system.name, kind): make
            for system in systems
            for kind, make in kinds
            if kind != "apiary.Client" or isinstance(system, ApiaryHttp)
        }
        rng = random.Random(1)
        for _ in range(args.rounds):
            for op in ("read", "increment"):
                for (name, kind), make in clients.items():
                    system = next(s for s in systems if s.name == name)
                    assert system.process is not None
                    call = make(system)
                    for _ in range(100):  # warm-up
                        call(op, {"counter_id": rng.randrange(args.keys)})
                    server0, me0 = process_cpu(system.process.pid), time.process_time()
                    latencies = []
                    for _ in range(args.requests):
                        start = time.perf_counter()
                        call(op, {"counter_id": rng.randrange(args.keys)})
                        latencies.append(time.perf_counter() - start)
                    server = (process_cpu(system.process.pid) - server0) / args.requests
                    mine = (time.process_time() - me0) / args.requests
                    results.setdefault((op, name, kind), []).append(
                        (statistics.median(latencies), server, mine)
                    )
    finally:
        for system in systems:
            system.close()
        database.drop()

    print("| operation | system | client | p50 ms | server CPU ms/req | client CPU ms/req |")
    print("|---|---|---|---:|---:|---:|")
    for (op, name, kind), rows in results.items():
        p50, server, mine = (statistics.median(column) * 1000 for column in zip(*rows, strict=True))
        print(f"| {op} | {name} | {kind} | {p50:.3f} | {server:.3f} | {mine:.3f} |")


if __name__ == "__main__":
    main()
