"""Shared fixtures: every behaviour test runs once per engine.

``engine_url`` is parametrized by the engines under test; a test that takes it (or
``make_runtime``) is written once and proven on each. Each test gets a fresh database:
a new SQLite file in ``tmp_path``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import apiary

ENGINES = [e for e in os.environ.get("APIARY_TEST_ENGINES", "sqlite").split(",") if e]


@pytest.fixture(params=ENGINES)
def engine_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A URL of a fresh, empty database on one of the engines under test."""
    engine = request.param
    if engine == "sqlite":
        return f"sqlite:///{tmp_path / 'apiary.db'}"
    raise pytest.UsageError(f"unknown engine {engine!r} in APIARY_TEST_ENGINES")


@pytest.fixture
def make_runtime(engine_url: str) -> Iterator[Callable[..., apiary.Runtime]]:
    """Build installed runtimes on the test's database; all are closed at teardown."""
    made: list[apiary.Runtime] = []

    def make(app: apiary.App, *, install: bool = True, **options: Any) -> apiary.Runtime:
        rt = apiary.Runtime(app, engine_url, **options)
        made.append(rt)
        if install:
            rt.install()
        return rt

    yield make
    for rt in made:
        rt.close()
