"""The execution core imports only the standard library and itself.

The PostgreSQL engine ships the core (``apiary._indb.CORE_MODULES``: ``_errors``,
``_codec``, ``_database``, ``_capture``, ``_bookkeeping``, ``_units``, ``_execution``) into
PL/Python, where only the server's own Python exists: no sqlglot, no rest of the package.
These tests check the imports statically, then load those files by themselves in an
interpreter without site-packages and run a unit against stdlib ``sqlite3``.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

import apiary
from apiary._indb import CORE_MODULES as CORE_SHIPPED

SOURCE = Path(apiary.__file__).parent
CORE = tuple(name.removeprefix("apiary.") for name in CORE_SHIPPED)
CORE_MODULES = frozenset(f"apiary.{name}" for name in CORE)


def forbidden_imports(source: str) -> list[str]:
    """Imports in ``source`` that are neither the standard library nor the core."""
    found: list[str] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                top = alias.name.split(".")[0]
                if alias.name not in CORE_MODULES and top not in sys.stdlib_module_names:
                    found.append(f"import {alias.name}")
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                # Relative: only ``from . import _codec`` style imports of core siblings.
                if node.level != 1 or (module and module not in CORE):
                    found.append(f"from {'.' * node.level}{module} import ...")
                elif not module and any(alias.name not in CORE for alias in node.names):
                    found.append(f"from . import {[a.name for a in node.names]}")
            elif module == "__future__" or module in CORE_MODULES:
                continue
            elif module == "apiary":
                for alias in node.names:
                    if alias.name not in CORE:
                        found.append(f"from apiary import {alias.name}")
            elif module.split(".")[0] not in sys.stdlib_module_names:
                found.append(f"from {module} import ...")
        elif isinstance(node, ast.Call):
            func = node.func
            name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", "")
            if name in ("__import__", "import_module"):
                found.append(f"dynamic import at line {node.lineno}")
    return found


@pytest.mark.parametrize("name", CORE)
def test_core_module_imports_only_stdlib_and_core(name: str) -> None:
    source = (SOURCE / f"{name}.py").read_text(encoding="utf-8")
    assert forbidden_imports(source) == []


@pytest.mark.parametrize(
    "source",
    [
        "import sqlglot",
        "from sqlglot import exp",
        "from apiary import _sql",
        "from apiary._app import App",
        "import apiary._runtime",
        "from . import _graph",
        "from ._plan import compile_plan",
        "from .. import x",
        "def f():\n    import httpx",
        "importlib.import_module('sqlglot')",
        "__import__('sqlglot')",
    ],
)
def test_the_import_check_catches_non_core_imports(source: str) -> None:
    assert forbidden_imports(source) != []


@pytest.mark.parametrize(
    "source",
    [
        "from __future__ import annotations",
        "import json, time\nfrom typing import Any",
        "from collections.abc import Mapping",
        "from apiary import _codec, _errors",
        "from apiary._errors import FunctionError",
        "import apiary._codec",
        "from . import _codec",
    ],
)
def test_the_import_check_accepts_stdlib_and_core_imports(source: str) -> None:
    assert forbidden_imports(source) == []


# -- running the core alone, in an interpreter without site-packages ---------------------

SCRIPT = r'''
import json
import sqlite3
import sys
import types

source_dir = sys.argv[1]
CORE = sys.argv[2].split(",")
report = {"isolated": sys.flags.isolated, "no_site": sys.flags.no_site}
try:
    import sqlglot  # noqa: F401
    report["sqlglot_importable"] = True
except ImportError:
    report["sqlglot_importable"] = False

package = types.ModuleType("apiary")
package.__path__ = []
package.__package__ = "apiary"
sys.modules["apiary"] = package
for name in CORE:
    path = f"{source_dir}/{name}.py"
    module = types.ModuleType(f"apiary.{name}")
    module.__file__ = path
    module.__package__ = "apiary"
    sys.modules[module.__name__] = module
    with open(path, encoding="utf-8") as handle:
        exec(compile(handle.read(), path, "exec"), module.__dict__)
    setattr(package, name, module)

ex = sys.modules["apiary._execution"]
units = sys.modules["apiary._units"]
errors = sys.modules["apiary._errors"]
report["loaded"] = sorted(m for m in sys.modules if m.startswith("apiary"))


class Database:
    """The core's adapter over a stdlib sqlite3 connection."""

    def __init__(self, conn):
        self.conn = conn

    def _text(self, stmt):
        return stmt.text.replace("{sys}", "apiary_") if stmt.system else stmt.text

    def query(self, stmt, params):
        return self.conn.execute(self._text(stmt), tuple(params)).fetchall()

    def execute(self, stmt, params):
        cursor = self.conn.execute(self._text(stmt), tuple(params))
        count = cursor.rowcount
        if cursor.description is not None:
            cursor.fetchall()
        return count


conn = sqlite3.connect(":memory:", isolation_level=None)
conn.executescript("""
CREATE TABLE apiary_workflows (workflow_id TEXT PRIMARY KEY, name TEXT NOT NULL,
    inputs TEXT NOT NULL, status TEXT NOT NULL, output TEXT, error TEXT, owner TEXT,
    version TEXT, created_at REAL NOT NULL, updated_at REAL NOT NULL);
CREATE TABLE apiary_outputs (workflow_id TEXT NOT NULL, invocation_id TEXT NOT NULL,
    output TEXT NOT NULL, PRIMARY KEY (workflow_id, invocation_id));
CREATE TRIGGER apiary_workflows_finished AFTER UPDATE OF status ON apiary_workflows
    WHEN NEW.status <> 'PENDING'
BEGIN
    DELETE FROM apiary_outputs WHERE workflow_id = NEW.workflow_id;
END;
CREATE TABLE counters (k TEXT PRIMARY KEY, v INTEGER NOT NULL);
""")
db = Database(conn)

ADD = ex.Statement(
    "INSERT INTO counters (k, v) VALUES (?, ?) ON CONFLICT (k) DO UPDATE SET v = v + excluded.v"
)
GET = ex.Statement("SELECT v FROM counters WHERE k = ?")
calls = []


def add(ctx, key, amount):
    calls.append(ctx.invocation_id)
    ctx.execute(ADD, key, amount)
    return ctx.query_one(GET, key)[0]


def double(ctx, value):
    return value * 2


def fail(ctx, key):
    ctx.execute(ADD, key, 1000)
    raise ValueError("no luck for " + key)


def raw(ctx, key):
    return ctx.query("SELECT v FROM counters WHERE k = ?", key)


functions = {"add": add, "double": double, "fail": fail, "raw": raw}
STATEMENTS = frozenset({ADD.text, GET.text})
ADD_ARGS = {"key": ["p", "key"], "amount": ["p", "amount"]}


def in_transaction(unit, request):
    conn.execute("BEGIN IMMEDIATE")
    try:
        outcome = ex.run_unit(db, unit, functions, request)
    except BaseException as exc:
        conn.execute("ROLLBACK")
        if type(exc).__name__ != "StatusRowExists":
            raise
        # As the engines do: a workflow of one unit found its status row; look first.
        request.look_first = True
        return in_transaction(unit, request)
    conn.execute("COMMIT")
    return outcome


def start(params):
    return {"name": "bump", "inputs": json.dumps(params, sort_keys=True), "owner": "t"}


# A whole workflow in one unit (a group of two members), shipped through JSON first.
group = units.UnitSpec(
    "add+double",
    [
        units.Member("add", "add", ADD_ARGS, STATEMENTS),
        units.Member("double", "double", {"value": ["n", "add"]}, frozenset()),
    ],
    read_only=False,
    recorded=True,
    starts=True,
    finishes=True,
    output=["d", {"total": ["n", "add"], "doubled": ["n", "double"]}],
)
group = units.UnitSpec.from_json(json.loads(json.dumps(group.to_json())))
params = {"key": "a", "amount": 5}
first = in_transaction(group, units.UnitRequest("wf-1", params, start=start(params)))
report["first_outputs"] = first.outputs
report["first_status"] = first.finished.status
again = in_transaction(group, units.UnitRequest("wf-1", params, start=start(params)))
report["again_outputs"] = again.outputs
report["again_result"] = again.finished.result()
report["calls_after_retry"] = list(calls)

other = {"key": "a", "amount": 6}
try:
    in_transaction(group, units.UnitRequest("wf-1", other, start=start(other)))
    report["conflict"] = None
except errors.WorkflowConflictError as exc:
    report["conflict"] = type(exc).__name__

# A recorded unit in the middle of a workflow: the second run returns the recorded output.
single = units.UnitSpec("add", [units.Member("add", "add", ADD_ARGS, STATEMENTS)],
                     read_only=False, recorded=True)
params = {"key": "b", "amount": 2}
conn.execute("BEGIN IMMEDIATE")
ex.begin_workflow(db, "wf-2", start(params))
conn.execute("COMMIT")
report["middle_first"] = in_transaction(single, units.UnitRequest("wf-2", params)).outputs
report["middle_again"] = in_transaction(single, units.UnitRequest("wf-2", params)).outputs
report["recorded_rows"] = conn.execute(
    "SELECT invocation_id FROM apiary_outputs ORDER BY invocation_id").fetchall()
conn.execute("BEGIN IMMEDIATE")
ex.end_workflow(db, "wf-2", output="null")
conn.execute("COMMIT")
report["recorded_rows_after_end"] = conn.execute(
    "SELECT count(*) FROM apiary_outputs").fetchone()[0]

# A direct call: no workflow, nothing recorded.
direct = in_transaction(
    single, units.UnitRequest(None, {"key": "c", "amount": 1}, call_id="c-1/add")
)
report["direct"] = direct.outputs

# Application errors roll back and come back as FunctionError.
failing = units.UnitSpec("fail", [units.Member("fail", "fail", {"key": ["p", "key"]}, STATEMENTS)],
                      read_only=False)
try:
    in_transaction(failing, units.UnitRequest("wf-3", {"key": "d"}))
    report["failure"] = None
except errors.FunctionError as exc:
    report["failure"] = exc.to_json()
report["failed_write_visible"] = conn.execute(
    "SELECT count(*) FROM counters WHERE k = 'd'").fetchone()[0]

# Raw SQL strings and undeclared statements are refused by the context.
rawing = units.UnitSpec("raw", [units.Member("raw", "raw", {"key": ["p", "key"]}, STATEMENTS)],
                     read_only=True)
undeclared = units.UnitSpec("add", [units.Member("add", "add", ADD_ARGS, frozenset({GET.text}))],
                         read_only=False)
for label, unit, args in (("raw", rawing, {"key": "a"}),
                          ("undeclared", undeclared, {"key": "e", "amount": 1})):
    try:
        in_transaction(unit, units.UnitRequest(None, args, call_id=label))
        report[label] = None
    except errors.FunctionError as exc:
        report[label] = exc.type_name

report["counters"] = conn.execute("SELECT k, v FROM counters ORDER BY k").fetchall()
report["workflows"] = conn.execute(
    "SELECT workflow_id, status FROM apiary_workflows ORDER BY workflow_id").fetchall()
print(json.dumps(report))
'''


@pytest.fixture(scope="module")
def core_alone(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    script = tmp_path_factory.mktemp("core") / "run_core.py"
    script.write_text(SCRIPT, encoding="utf-8")
    done = subprocess.run(
        [sys.executable, "-I", "-S", str(script), str(SOURCE), ",".join(CORE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    report: dict[str, object] = json.loads(done.stdout)
    return report


def test_the_interpreter_has_no_site_packages(core_alone: dict[str, object]) -> None:
    assert core_alone["isolated"] == 1
    assert core_alone["no_site"] == 1
    assert core_alone["sqlglot_importable"] is False
    assert core_alone["loaded"] == sorted(["apiary", *CORE_SHIPPED])


def test_a_group_unit_runs_and_finishes_its_workflow(core_alone: dict[str, object]) -> None:
    assert core_alone["first_outputs"] == {"add": 5, "double": 10}
    assert core_alone["first_status"] == "SUCCESS"


def test_a_finished_workflow_returns_its_answer_and_takes_no_second_effect(
    core_alone: dict[str, object],
) -> None:
    assert core_alone["again_outputs"] is None
    assert core_alone["again_result"] == {"total": 5, "doubled": 10}
    # The repeat ran before it found the status row, and was rolled back (the counters
    # below say "a" was added to once).
    assert core_alone["calls_after_retry"] == ["wf-1/add", "wf-1/add"]


def test_reusing_a_workflow_id_with_other_inputs_conflicts(core_alone: dict[str, object]) -> None:
    assert core_alone["conflict"] == "WorkflowConflictError"


def test_a_recorded_unit_runs_once(core_alone: dict[str, object]) -> None:
    assert core_alone["middle_first"] == {"add": 2}
    assert core_alone["middle_again"] == {"add": 2}
    assert core_alone["recorded_rows"] == [["wf-2/add"]]
    assert core_alone["recorded_rows_after_end"] == 0


def test_a_direct_call_runs(core_alone: dict[str, object]) -> None:
    assert core_alone["direct"] == {"add": 1}


def test_an_application_error_rolls_back(core_alone: dict[str, object]) -> None:
    assert core_alone["failure"] == {
        "type": "ValueError",
        "message": "no luck for d",
        "function": "fail",
    }
    assert core_alone["failed_write_visible"] == 0


def test_the_context_refuses_raw_and_undeclared_statements(
    core_alone: dict[str, object],
) -> None:
    assert core_alone["raw"] == "TypeError"
    assert core_alone["undeclared"] == "RegistrationError"


def test_the_database_holds_exactly_the_committed_effects(core_alone: dict[str, object]) -> None:
    assert core_alone["counters"] == [["a", 5], ["b", 2], ["c", 1]]
    assert core_alone["workflows"] == [["wf-1", "SUCCESS"], ["wf-2", "SUCCESS"]]
