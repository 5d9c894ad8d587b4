"""The timed rounds the benchmark programs share.

Standard library only: ``dbos_sqlite`` runs it in DBOS's own virtualenv, without apiary.
"""

from __future__ import annotations

import random
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

#: Makes the next operation of thread ``index``: a call to time, its arguments drawn from
#: ``rng`` (outside the timed part).
NextCall = Callable[[int, random.Random], Callable[[], Any]]


@dataclass
class Round:
    """One timed round of one system: operations done, wall time, their latencies."""

    ops: int
    seconds: float
    latencies: list[float]

    @property
    def throughput(self) -> float:
        """Operations per second."""
        return self.ops / self.seconds

    def percentile(self, q: float) -> float:
        """Latency percentile ``q`` (0-100) in milliseconds, nearest rank (NaN if none)."""
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))] * 1000


class RoundStats:
    """Medians over the ``rounds`` of one system (a mixin for the programs' results)."""

    rounds: list[Round]

    def median(self, metric: Callable[[Round], float]) -> float:
        """Median of a metric over rounds."""
        return statistics.median(metric(r) for r in self.rounds)

    @property
    def throughput(self) -> float:
        """Median operations per second."""
        return self.median(lambda r: r.throughput)

    @property
    def p50(self) -> float:
        """Median over rounds of the round's p50 latency, ms."""
        return self.median(lambda r: r.percentile(50))

    @property
    def p99(self) -> float:
        """Median over rounds of the round's p99 latency, ms."""
        return self.median(lambda r: r.percentile(99))


def run_threads(threads: int, next_call: NextCall, seconds: float, seed: int) -> Round:
    """Run operations from ``threads`` threads, started together, for ``seconds``.

    Thread ``i`` draws its arguments from ``random.Random(seed * 1000 + i)``, so every
    system gets the same sequence in a round. The first exception of any thread is raised.
    """
    start_line = threading.Barrier(threads + 1)
    counts = [0] * threads
    latencies: list[list[float]] = [[] for _ in range(threads)]
    errors: list[BaseException] = []
    deadline = 0.0

    def work(index: int) -> None:
        rng = random.Random(seed * 1000 + index)
        own = latencies[index]
        clock = time.perf_counter
        start_line.wait()
        done = 0
        try:
            while True:
                call = next_call(index, rng)
                begun = clock()
                if begun >= deadline:
                    break
                call()
                own.append(clock() - begun)
                done += 1
        except BaseException as exc:
            errors.append(exc)
        counts[index] = done

    workers = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    began = time.perf_counter()
    deadline = began + seconds
    start_line.wait()
    for worker in workers:
        worker.join()
    elapsed = time.perf_counter() - began
    if errors:
        raise errors[0]
    return Round(sum(counts), elapsed, [x for own in latencies for x in own])


__all__ = ["NextCall", "Round", "RoundStats", "run_threads"]
