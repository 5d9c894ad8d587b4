"""The benchmark's workloads, each defined by one module of this package.

A workload module (``hotel``, ``shop``, ``retwis``, ``counter``) defines:

* ``app`` and ``logged_app``: the application, and the same with manual logging;
* ``*_SQL``: the text of every statement, for baselines that run the same SQL;
* ``SCALES``: named parameter sets (``tiny`` for smoke tests, ``default``);
* ``MIX``: operation name -> share of the operations;
* ``data(params)``: the initial rows, ``(table, columns, rows)`` per table;
* ``operation(op, rng, params, uid)``: the workflow name and arguments of one operation;
* ``check(query, params, done)``: the invariants after a run, given a function that runs
  SQL on the database and ``done`` (see :class:`Tally`); raises ``AssertionError``.
"""

from __future__ import annotations

import bisect
import itertools
import json
import random
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from apiary._app import App
from apiary._bench import counter, hotel, retwis, shop

Rows = Iterator[tuple[str, Sequence[str], Iterator[tuple[Any, ...]]]]
Query = Callable[[str], list[tuple[Any, ...]]]


class Tally:
    """What finished operations answered, for the invariants.

    ``done[op]`` counts the operations that completed; ``done["op=true"]`` (and ``false``)
    count boolean answers; ``done["op+"]`` adds up integer answers.
    """

    def __init__(self) -> None:
        self.done: Counter[str] = Counter()

    def add(self, op: str, output: Any) -> None:
        """Count one completed operation and its answer."""
        done = self.done
        done[op] += 1
        if isinstance(output, bool):
            done[f"{op}={json.dumps(output)}"] += 1
        elif isinstance(output, int):
            done[f"{op}+"] += output

    def merge(self, other: Tally) -> None:
        """Add another tally's counts to this one."""
        self.done.update(other.done)


@dataclass(frozen=True)
class Workload:
    """One workload: its apps, data, operation mix and invariants (a module's contents)."""

    name: str
    module: ModuleType

    @property
    def app(self) -> App:
        """The application."""
        app: App = self.module.app
        return app

    @property
    def logged_app(self) -> App:
        """The application with manual logging."""
        app: App = self.module.logged_app
        return app

    @property
    def mix(self) -> dict[str, float]:
        """Operation name -> share."""
        mix: dict[str, float] = self.module.MIX
        return mix

    @property
    def description(self) -> str:
        """The first line of the module's docstring."""
        return (self.module.__doc__ or self.name).strip().splitlines()[0]

    def params(self, scale: str) -> dict[str, int]:
        """The data parameters of a named scale."""
        scales: dict[str, dict[str, int]] = self.module.SCALES
        if scale not in scales:
            raise ValueError(
                f"workload {self.name}: no scale {scale!r} (known: {', '.join(scales)})"
            )
        return dict(scales[scale])

    def data(self, params: Mapping[str, int]) -> Rows:
        """The initial rows."""
        rows: Rows = self.module.data(params)
        return rows

    def operations(
        self, params: Mapping[str, int], seed: int, prefix: str
    ) -> Iterator[tuple[str, str, dict[str, Any]]]:
        """An endless, seeded sequence of ``(op, workflow, arguments)`` in the mix's shares.

        ``prefix`` makes the operations' unique IDs (customers, orders, posts) distinct
        from those of every other sequence.
        """
        rng = random.Random(seed)
        names = list(self.mix)
        bounds = list(itertools.accumulate(self.mix[n] for n in names))
        total = bounds[-1]
        operation = self.module.operation
        for number in itertools.count():
            op = names[min(bisect.bisect_right(bounds, rng.random() * total), len(names) - 1)]
            workflow, args = operation(op, rng, params, f"{prefix}-{number}")
            yield op, workflow, args

    def check(self, query: Query, params: Mapping[str, int], tally: Tally) -> str:
        """Check the invariants; returns a summary, raises ``AssertionError``."""
        summary: str = self.module.check(query, params, tally.done)
        return summary


WORKLOADS: dict[str, Workload] = {
    module.NAME: Workload(module.NAME, module) for module in (hotel, shop, retwis, counter)
}
