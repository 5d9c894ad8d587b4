"""The ``apiary`` command, run in-process (``main(argv)``), on real SQLite files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from apiary._cli import main
from tests.apps import ROOT

HOTEL = f"{ROOT / 'examples' / 'hotel.py'}:app"


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_demo_runs_every_check(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, out, _ = run_cli(capsys, "demo", "--db", f"sqlite:///{tmp_path / 'demo.db'}")
    assert code == 0, out
    assert "nothing overbooked: yes" in out
    assert "same answer, nothing executed twice: yes" in out
    assert "one update, by 'demo-ann', none from the replay: yes" in out
    assert (tmp_path / "demo-trace.duckdb").is_file()
    assert "Demo passed" in out
    assert "check_avail" in out
    assert "recorded" in out


def test_install_run_replay_and_conflict(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    db = f"sqlite:///{tmp_path / 'hotel.db'}"
    code, out, _ = run_cli(capsys, "install", HOTEL, "--db", db)
    assert code == 0
    assert "installed app 'hotel'" in out
    args = ["--arg", "hotel_id=1", "--arg", "first_day=1", "--arg", "days=3", "--arg", "rooms=1"]
    code, out, _ = run_cli(capsys, "run", HOTEL, "open_hotel", "--db", db, *args)
    assert code == 0
    assert json.loads(out)["output"] == 3

    book = ["--arg", "hotel_id=1", "--arg", "day=2", "--arg", "customer=123"]
    code, out, _ = run_cli(
        capsys, "run", HOTEL, "book_room", "--db", db, *book, "--workflow-id", "w1"
    )
    first = json.loads(out)
    assert code == 0
    assert first == {"workflow_id": "w1", "status": "SUCCESS", "output": True}
    code, out, _ = run_cli(
        capsys, "run", HOTEL, "book_room", "--db", db, *book, "--workflow-id", "w1"
    )
    assert json.loads(out) == first  # replayed, not booked twice

    code, out, _ = run_cli(capsys, "run", HOTEL, "hotel_report", "--db", db, "--arg", "hotel_id=1")
    report = json.loads(out)["output"]
    # customer=123 stayed a string: the parameter is annotated str.
    assert report["bookings"] == [[2, "123"]]
    assert report["rooms"] == [[1, 1], [2, 0], [3, 1]]

    other = ["--arg", "hotel_id=1", "--arg", "day=3", "--arg", "customer=bob"]
    code, _, err = run_cli(
        capsys, "run", HOTEL, "book_room", "--db", db, *other, "--workflow-id", "w1"
    )
    assert code == 2
    assert "WorkflowConflictError" in err


def test_run_reports_an_application_error_as_json(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    db = f"sqlite:///{tmp_path / 'hotel.db'}"
    assert run_cli(capsys, "install", HOTEL, "--db", db)[0] == 0
    opened = ["--arg", "hotel_id=1", "--arg", "first_day=1", "--arg", "days=1", "--arg", "rooms=2"]
    assert run_cli(capsys, "run", HOTEL, "open_hotel", "--db", db, *opened)[0] == 0
    book = ["--arg", "hotel_id=1", "--arg", "day=1", "--arg", "customer=ann"]
    assert run_cli(capsys, "run", HOTEL, "book_room", "--db", db, *book)[0] == 0
    code, out, _ = run_cli(capsys, "run", HOTEL, "book_room", "--db", db, *book)
    result = json.loads(out)
    assert code == 1
    assert result["status"] == "ERROR"
    assert result["error"]["function"] == "reserve"
    assert "UNIQUE" in result["error"]["message"].upper()


def test_explain_as_table_and_json(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "explain", HOTEL, "book_room")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].startswith("workflow book_room(hotel_id, day, customer)")
    assert any(line.split()[:2] == ["send_email", "send_email"] for line in lines)

    code, out, _ = run_cli(capsys, "explain", HOTEL, "book_room", "--json")
    data = json.loads(out)
    nodes = {node["id"]: node for node in data["nodes"]}
    assert set(nodes) == {"check_avail", "reserve", "send_email"}
    assert nodes["reserve"]["parents"] == ["check_avail"]
    assert nodes["check_avail"]["group"] == nodes["reserve"]["group"] == 1
    assert nodes["send_email"]["step"]
    assert nodes["send_email"]["recorded"]
    assert nodes["check_avail"]["read_only"]
    assert not nodes["reserve"]["read_only"]

    code, out, _ = run_cli(capsys, "explain", HOTEL, "hotel_report", "--json")
    report = json.loads(out)
    assert not report["status_row"]
    assert not any(node["recorded"] for node in report["nodes"])


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["explain", "no_such_module:app", "w"], "cannot import module 'no_such_module'"),
        (["explain", f"{ROOT / 'examples' / 'hotel.py'}:nope", "book_room"], "no apiary.App"),
        (["explain", HOTEL, "nope"], "has no workflow 'nope'"),
        (["run", HOTEL, "book_room", "--db", "mysql://x", "--arg", "a=1"], "unsupported"),
        (["run", HOTEL, "book_room", "--arg", "nonsense"], "expected KEY=VALUE"),
    ],
)
def test_bad_input_gets_a_clear_message(
    capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    code, _, err = run_cli(capsys, *argv)
    assert code == 2
    assert message in err


def test_run_before_install_says_to_install(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    db = f"sqlite:///{tmp_path / 'empty.db'}"
    code, _, err = run_cli(capsys, "run", HOTEL, "hotel_report", "--db", db, "--arg", "hotel_id=1")
    assert code == 2
    assert "NotInstalledError" in err
    assert "install" in err


def test_help_is_there_for_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    for command in ("demo", "install", "run", "explain"):
        with pytest.raises(SystemExit) as stopped:
            main([command, "--help"])
        assert stopped.value.code == 0
        assert "usage: apiary " + command in capsys.readouterr().out


def test_run_and_deploy_through_a_frontend(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    from tests.apps import load_example
    from tests.frontend_support import running_frontend

    db = f"sqlite:///{tmp_path / 'served.db'}"
    with running_frontend(db, load_example("hotel").app) as served:
        url, key = served.url, served.invoke
        opened = ["--arg", "hotel_id=1", "--arg", "first_day=1", "--arg", "days=2"]
        code, out, _ = run_cli(
            capsys, "run", "open_hotel", "--url", url, "--key", key, *opened, "--arg", "rooms=1"
        )
        assert code == 0, out
        book = ["--arg", "hotel_id=1", "--arg", "day=1", "--arg", "customer=007"]
        code, out, _ = run_cli(
            capsys, "run", "book_room", "--url", url, "--key", key, *book, "--workflow-id", "b1"
        )
        assert code == 0
        assert json.loads(out) == {"workflow_id": "b1", "status": "SUCCESS", "output": True}
        code, out, _ = run_cli(
            capsys, "run", "hotel_report", "--url", url, "--key", key, "--arg", "hotel_id=1"
        )
        # "007" stayed a string: the frontend's OpenAPI document types customer as one.
        assert json.loads(out)["output"]["bookings"] == [[1, "007"]]

        source = (ROOT / "examples" / "hotel.py").read_text()
        changed = tmp_path / "hotel_next.py"
        changed.write_text(source.replace("booked={booked}", "booked={booked}, again"))
        code, out, _ = run_cli(capsys, "deploy", str(changed), "--url", url, "--key", served.admin)
        assert code == 0, out
        assert json.loads(out)["module"] == "hotel_next"
        code, _, err = run_cli(capsys, "deploy", str(changed), "--url", url, "--key", key)
        assert code == 2
        assert "PermissionDeniedError" in err
