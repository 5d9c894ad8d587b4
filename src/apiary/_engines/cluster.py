"""The cluster engine: an app partitioned over several PostgreSQL databases.

``cluster:PATH`` names a TOML file (``cluster:///etc/apiary/cluster.toml`` for an absolute
path; ``?routing=proxy`` overrides its routing)::

    partitions = [                      # N databases, N a power of two, in this order
        "postgresql://apiary:pw@db1:5432/apiary_p0",
        "postgresql://apiary:pw@db1:5432/apiary_p1",
        "postgresql://apiary:pw@db2:5432/apiary_p2",
        "postgresql://apiary:pw@db2:5432/apiary_p3",
    ]
    proxy = "postgresql://apiary:pw@db1:5432/apiary_proxy"   # PL/Proxy routing functions
    routing = "direct"                  # or "proxy"

Every partition is a complete Apiary database (system tables, the app's schema, its
compiled units); each partitioned table carries a ``CHECK`` constraint that admits only
the rows whose key the partition owns (:mod:`apiary._partitioning`). A unit runs on the
partition that owns its key: called directly on that partition (``routing = "direct"``:
this process computes the partition) or through the same-named PL/Proxy function in the
proxy database (``"proxy"``), which computes it in SQL and calls the partition. A
workflow's status row lives on the partition of its workflow ID, with its steps' outputs;
a unit's recorded output lives with the unit. Tables of the frontend (API keys,
deployments, heartbeats) live on partition 0, the *control* partition.
"""

from __future__ import annotations

import concurrent.futures
import itertools
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import psycopg

from apiary import _bookkeeping
from apiary._app import AppInfo
from apiary._capture import CapturePlan
from apiary._database import Database
from apiary._engines._base import DeclaredStatement, Engine
from apiary._engines.cluster_config import ROUTINGS, ClusterConfig, ClusterConfigError
from apiary._engines.cluster_install import PROXY_CLUSTER, install_partition, install_proxy
from apiary._engines.pgwire import unit_outcome
from apiary._engines.postgres import PostgresEngine
from apiary._errors import (
    ApiaryError,
    DatabaseUnavailableError,
    FunctionError,
)
from apiary._partitioning import combine, key_text, partition_hash
from apiary._units import UnitOutcome, UnitRequest, UnitSpec, resolve

__all__ = [
    "OUTPUT_RETENTION",
    "PROXY_CLUSTER",
    "ROUTINGS",
    "ClusterConfig",
    "ClusterConfigError",
    "ClusterEngine",
]

T = TypeVar("T")

log = logging.getLogger("apiary.cluster")

#: Recorded outputs of units that ran off their workflow's home partition are kept this
#: many seconds after the workflow ended (see :meth:`ClusterEngine.forget_outputs`).
OUTPUT_RETENTION = 3600.0


class _ProxyEngine(PostgresEngine):
    """The proxy database: units are called through their PL/Proxy functions."""

    def call_keyed(self, unit: UnitSpec, request: UnitRequest, key: str) -> Any:
        sql, params = self._unit_call(unit, request)
        sql = sql[: -len(")")] + ", %s)"
        return self._call(sql, (*params, key), repeatable=unit.read_only or unit.recorded)

    def call_all(self, unit: UnitSpec, request: UnitRequest) -> list[Any]:
        sql, params = self._unit_call(unit, request)
        sql = "SELECT * FROM " + sql.removeprefix("SELECT ")
        return list(self._call(sql, params, repeatable=True, rows=True))

    def _call_failure(self, exc: BaseException, repeatable: bool, lost: int) -> Exception | None:
        # PL/Proxy reports a partition it cannot reach as an internal error (XX000).
        if (
            isinstance(exc, psycopg.Error)
            and exc.sqlstate == "XX000"
            and ("PQconnectPoll" in str(exc) or "REMOTE FATAL" in str(exc))
        ):
            if repeatable and lost + 1 < 3:
                return None
            return DatabaseUnavailableError(f"a partition is unreachable: {exc}")
        return super()._call_failure(exc, repeatable, lost)


class ClusterEngine(Engine):
    """Units routed to the partition that owns their key; see the module docstring."""

    name = "cluster"
    partitioned = True

    def __init__(self, config: ClusterConfig, executor: concurrent.futures.Executor) -> None:
        super().__init__(executor)
        self.config = config
        self.routing = config.routing
        self.parts = [PostgresEngine.from_url(url, executor) for url in config.partitions]
        if config.routing == "proxy" and any(p.placement != "db" for p in self.parts):
            raise ClusterConfigError(
                f"{config.source}: routing = 'proxy' calls the units' stored procedures, so "
                "no partition may use placement=client"
            )
        self.count = len(self.parts)
        self.proxy: _ProxyEngine | None = None
        if config.proxy is not None:
            base = PostgresEngine.from_url(config.proxy, executor)
            self.proxy = _ProxyEngine(
                base.conninfo,
                executor,
                pool_min=base.pool_min,
                pool_max=base.pool_max,
                pool_timeout=base.pool_timeout,
            )
        self._spread = itertools.count()

    @classmethod
    def from_url(cls, url: str, executor: concurrent.futures.Executor) -> ClusterEngine:
        """Open ``cluster:PATH``; see the module docstring."""
        return cls(ClusterConfig.from_url(url), executor)

    def bind(
        self,
        app: AppInfo,
        functions: Mapping[str, Callable[..., Any]],
        plans: Mapping[str, CapturePlan] | None = None,
    ) -> None:
        """Bind the app on every partition (and the proxy)."""
        super().bind(app, functions, plans)
        for part in self._engines():
            part.bind(app, functions, plans)

    def _engines(self) -> list[PostgresEngine]:
        return [*self.parts, *([self.proxy] if self.proxy is not None else [])]

    # -- routing ---------------------------------------------------------------------

    def partition_index(self, key: Any) -> int:
        """The partition owning a key (an integer or a string)."""
        return partition_hash(key_text(key)) & (self.count - 1)

    def partitions(self) -> Sequence[Engine]:
        """Every partition's engine."""
        return self.parts

    def home(self, workflow_id: str) -> Engine:
        """The partition holding a workflow's status row (that of its ID)."""
        return self.parts[self.partition_index(workflow_id)]

    def run_unit(self, unit: UnitSpec, request: UnitRequest) -> UnitOutcome:
        """Run a unit on the partition that owns its key (or on every partition)."""
        route = unit.route
        if route is None:  # an app without partitioning, on a cluster of one partition
            if self.count > 1:
                raise ApiaryError(f"unit {unit.id!r} has no partition route")
            return self.parts[0].run_unit(unit, request)
        workflow_id = request.workflow_id
        if route.kind == "all":
            return self._run_everywhere(unit, request, route.combine)
        if route.kind == "key":
            key = key_text(resolve(route.template, request.params, request.inputs))
            index = partition_hash(key) & (self.count - 1)
        elif workflow_id is not None:  # replicated tables only: stay on the home partition
            key = workflow_id
            index = partition_hash(key) & (self.count - 1)
        else:
            index = next(self._spread) % self.count
            key = str(index)  # partition_hash(str(i)) need not be i: direct routing only
        home = workflow_id is None or self.partition_index(workflow_id) == index
        request.home = home
        if self.routing == "proxy" and self.proxy is not None and route.kind == "key":
            data = self.proxy.call_keyed(unit, request, key)
            outcome = unit_outcome(data)
            if outcome.trace is not None:
                self.parts[index]._traces.add(outcome.trace)
            return outcome
        return self.parts[index].run_unit(unit, request)

    def _run_everywhere(self, unit: UnitSpec, request: UnitRequest, how: Any) -> UnitOutcome:
        """A read-only unit on every partition, its member's outputs merged."""
        workflow_id = request.workflow_id
        home = None if workflow_id is None else self.partition_index(workflow_id)
        if self.routing == "proxy" and self.proxy is not None:
            request.home = False  # records (if it must) on each partition, like steps
            outcomes = [unit_outcome(data) for data in self.proxy.call_all(unit, request)]
            for outcome in outcomes:
                if outcome.trace is not None:
                    self.parts[0]._traces.add(outcome.trace)
        else:
            outcomes = []
            for index, part in enumerate(self.parts):
                one = UnitRequest(
                    workflow_id,
                    request.params,
                    request.inputs,
                    request.start,
                    request.call_id,
                    request.trace,
                    home=home is None or home == index,
                )
                outcomes.append(part.run_unit(unit, one))
        for outcome in outcomes:
            if outcome.finished is not None:
                return outcome
        node = unit.members[0].node
        values = [(o.outputs or {}).get(node) for o in outcomes]
        try:
            merged = combine(how, values)
        except Exception as exc:
            raise FunctionError(
                type(exc).__name__,
                f"combining the results of every partition failed: {exc}",
                function=unit.members[0].function,
                workflow_id=workflow_id,
            ) from exc
        return UnitOutcome({node: merged})

    # -- bookkeeping -----------------------------------------------------------------

    def system(self, op: Callable[..., T], *args: Any, write: bool, **kwargs: Any) -> T:
        """Run a bookkeeping function on the partition it concerns."""
        name = op.__name__
        if name == "list_pending":
            pending: list[Any] = []
            for part in self.parts:
                pending += part.system(op, write=write)  # type: ignore[arg-type]
            return pending  # type: ignore[return-value]
        if name == "new_client_id":
            return self._new_client_id()  # type: ignore[return-value]
        if not args or not isinstance(args[0], str):
            raise TypeError(f"{name}: a cluster routes bookkeeping by workflow ID")
        return self.home(args[0]).system(op, *args, write=write, **kwargs)

    def _new_client_id(self) -> int:
        """A client ID from any partition that answers: its own number times N plus its index."""
        start = next(self._spread)
        failure: DatabaseUnavailableError | None = None
        for step in range(self.count):
            index = (start + step) % self.count
            try:
                local = self.parts[index].system(_bookkeeping.new_client_id, write=True)
            except DatabaseUnavailableError as exc:
                failure = failure or exc
                continue
            return int(local) * self.count + index
        assert failure is not None
        raise failure

    def forget_outputs(self, retention: float = OUTPUT_RETENTION) -> int:
        """Delete outputs that units recorded off their workflow's home partition, for
        workflows that ended more than ``retention`` seconds ago; return how many.

        They outlive the workflow so that a late run of the same workflow ID, which read
        its status as ``PENDING`` before another run finished it, finds them instead of
        running the unit again. Unreachable partitions are skipped until the next time.
        """
        cutoff = time.time() - retention
        removed = 0
        for index, part in enumerate(self.parts):
            try:
                found = part.system(_bookkeeping.output_workflows, write=False)
                by_home: dict[int, list[str]] = {}
                for workflow_id in found:
                    home = self.partition_index(workflow_id)
                    if home != index:
                        by_home.setdefault(home, []).append(workflow_id)
                done: list[str] = []
                for home, ids in by_home.items():
                    done += self.parts[home].system(
                        _bookkeeping.finished_before, ids, cutoff, write=False
                    )
                if done:
                    removed += part.system(_bookkeeping.forget_outputs, done, write=True)
            except DatabaseUnavailableError as exc:
                log.warning("partition %d: outputs not swept this time: %s", index, exc)
        return removed

    def transact(self, work: Callable[[Database], T], *, write: bool) -> T:
        """Run ``work`` on the control partition (partition 0)."""
        return self.parts[0].transact(work, write=write)

    def flush_traces(self) -> int:
        """Stage every partition's held read-only traces."""
        return sum(part.flush_traces() for part in self.parts)

    # -- install ---------------------------------------------------------------------

    def install(
        self,
        app: AppInfo,
        statements: Sequence[DeclaredStatement],
        units: Sequence[UnitSpec] = (),
        plans: Mapping[str, CapturePlan] | None = None,
    ) -> None:
        """Install the app on every partition, then the routing functions on the proxy."""
        for index, part in enumerate(self.parts):
            part.install(app, statements, units, plans)
            with part.connect() as conn:
                install_partition(conn, app, index, self.count, self.config.partitions[index])
        if self.proxy is not None:
            with self.proxy.connect() as conn:
                install_proxy(conn, app, units, self.config.partitions)

    def close(self) -> None:
        """Close every partition's (and the proxy's) connections."""
        for part in self._engines():
            part.close()
