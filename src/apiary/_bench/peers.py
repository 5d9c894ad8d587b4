"""Systems other than Apiary: the RPC service baseline and DBOS Transact.

Neither is built yet; asking for them reports them as skipped, with the reason, so a
table never silently lacks a column.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from apiary._bench.systems import SkipSystem, System
from apiary._bench.workloads import Workload

if TYPE_CHECKING:
    from apiary._bench.runner import Settings


def make(name: str, settings: Settings, workload: Workload, work_dir: Path) -> System:
    """The peer system ``name``, or :class:`SkipSystem` saying why it cannot run."""
    if name == "rpc-baseline":
        raise SkipSystem("not built yet: the RPC service baseline (Starlette + psycopg pool)")
    if name == "dbos":
        raise SkipSystem("not built yet: the DBOS Transact driver (a subprocess in its own venv)")
    raise SkipSystem(f"unknown system {name!r}")
