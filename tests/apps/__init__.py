"""Apps shared by the behaviour tests and by the child processes of the crash tests.

Transactional functions here touch nothing but the database: on PostgreSQL they run inside
the server (``placement=db``), where Python lists of the test process do not exist. Steps
run in the scheduler, so they may record what they saw in the module's journals.

A child process may be told to die at a chosen step (``APIARY_TEST_DIE_AT=<step name>``):
the step first pickles what it saw to ``APIARY_TEST_SEEN`` (a file path), then sends itself
SIGKILL, like a crash of the scheduler's machine at that moment.
"""

from __future__ import annotations

import importlib.util
import os
import pickle
import signal
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import apiary

ROOT = Path(__file__).resolve().parents[2]


def load_example(name: str) -> ModuleType:
    """Import ``examples/<name>.py`` (the shipped example, not a copy) once per process."""
    module_name = f"apiary_example_{name}"
    module = sys.modules.get(module_name)
    if module is None:
        spec = importlib.util.spec_from_file_location(module_name, ROOT / "examples" / f"{name}.py")
        assert spec is not None
        assert spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        spec.loader.exec_module(module)
    return module


def assert_same(actual: Any, expected: Any, path: str = "value") -> None:
    """Equal values of identical types, all the way down (``1 == 1.0 == True`` won't do)."""
    assert type(actual) is type(expected), f"{path}: {actual!r} is not a {type(expected)}"
    if isinstance(expected, dict):
        assert sorted(actual) == sorted(expected), f"{path}: keys differ"
        for key in expected:
            assert_same(actual[key], expected[key], f"{path}[{key!r}]")
    elif isinstance(expected, list):
        assert len(actual) == len(expected), f"{path}: lengths differ"
        for index, (a, e) in enumerate(zip(actual, expected, strict=True)):
            assert_same(a, e, f"{path}[{index}]")
    else:
        assert actual == expected, f"{path}: {actual!r} != {expected!r}"
        if hasattr(expected, "utcoffset"):
            assert actual.utcoffset() == expected.utcoffset(), f"{path}: offsets differ"


def recorded_outputs(rt: apiary.Runtime) -> int:
    """Rows in the recorded-outputs system table (a look behind the public API)."""
    count = apiary.Statement("SELECT count(*) FROM {sys}outputs", system=True)
    rows = rt._engine.transact(lambda db: db.query(count, ()), write=False)
    return int(rows[0][0])


def die_if_asked(point: str, seen: Any) -> None:
    """In a child told to die at ``point``: save ``seen``, then SIGKILL this process."""
    if os.environ.get("APIARY_TEST_DIE_AT") != point:
        return
    path = os.environ.get("APIARY_TEST_SEEN")
    if path:
        Path(path).write_bytes(pickle.dumps(seen))
    os.kill(os.getpid(), signal.SIGKILL)
