"""App schemas: one schema text serves every engine."""

from __future__ import annotations

from collections.abc import Callable

import apiary
from tests.apps import notes

MakeRuntime = Callable[..., apiary.Runtime]


def test_a_schema_in_sqlites_dialect_installs_on_every_engine(make_runtime: MakeRuntime) -> None:
    rt = make_runtime(notes.app)
    first = rt.run("keep", workflow_id="n-1", body="first")
    second = rt.run("keep", workflow_id="n-2", body="second")
    assert rt.run("keep", workflow_id="n-1", body="first") == first  # replayed
    assert second > first  # generated keys
    blob_id = rt.call("add_note", body="blob", attachment=b"\x00\x01")
    assert rt.call("list_notes") == [
        [first, "first", None],
        [second, "second", None],
        [blob_id, "blob", b"\x00\x01"],
    ]


def test_installing_twice_changes_nothing(make_runtime: MakeRuntime) -> None:
    rt = make_runtime(notes.app)
    rt.run("keep", workflow_id="n-1", body="kept")
    rt.install()
    assert [row[1] for row in rt.call("list_notes")] == ["kept"]
