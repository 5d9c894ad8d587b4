"""Resolving ``MODULE:APP`` (as uvicorn does) or ``path/to/file.py:APP`` to an :class:`App`."""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from pathlib import Path

from apiary._app import App
from apiary._errors import NotFoundError


def load_app(spec: str) -> App:
    """Import the app named by ``MODULE:APP`` (``APP`` defaults to ``app``).

    ``MODULE`` is a dotted module name, imported with the current directory on the import
    path, or a path to a ``.py`` file. Raises :class:`NotFoundError` if there is none.
    """
    module_name, _, attribute = spec.partition(":")
    attribute = attribute or "app"
    if not module_name:
        raise NotFoundError(f"{spec!r}: expected MODULE:APP, e.g. examples/hotel.py:app")
    if module_name.endswith(".py") or os.sep in module_name:
        module = _load_file(Path(module_name))
    else:
        if os.getcwd() not in sys.path and "" not in sys.path:
            sys.path.insert(0, os.getcwd())
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name.split(".")[0] and exc.name != module_name:
                raise
            raise NotFoundError(
                f"cannot import module {module_name!r} (from {os.getcwd()}): {exc}"
            ) from exc
    app = getattr(module, attribute, None)
    if not isinstance(app, App):
        found = [name for name, value in vars(module).items() if isinstance(value, App)]
        hint = f"; it has {', '.join(found)}" if found else ""
        raise NotFoundError(f"{module_name!r} has no apiary.App named {attribute!r}{hint}")
    return app


def _load_file(path: Path) -> object:
    if not path.is_file():
        raise NotFoundError(f"no such file: {path}")
    resolved = path.resolve()
    name = resolved.stem
    existing = sys.modules.get(name)
    if existing is not None and getattr(existing, "__file__", None) == str(resolved):
        return existing
    folder = str(resolved.parent)
    if folder not in sys.path:
        sys.path.insert(0, folder)
    spec = importlib.util.spec_from_file_location(name, resolved)
    if spec is None or spec.loader is None:
        raise NotFoundError(f"cannot load {path} as a Python module")
    module = importlib.util.module_from_spec(spec)
    # Registered so that inspect can read the module's source (for the app's version).
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module
