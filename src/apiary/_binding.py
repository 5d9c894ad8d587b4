"""Checking a call's arguments against a workflow's or function's signature."""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

from apiary import _codec
from apiary._app import FunctionDef, WorkflowDef
from apiary._errors import InvalidArgumentsError


class Binder:
    """Checks call arguments against a signature whose parameters all take keywords.

    ``inspect.Signature.bind`` is general and slow; this runs on every call.
    """

    __slots__ = ("defaults", "kind", "name", "names", "required")

    def __init__(self, defn: WorkflowDef | FunctionDef) -> None:
        self.kind = "workflow" if isinstance(defn, WorkflowDef) else "function"
        self.name = defn.name
        signature = defn.signature if isinstance(defn, WorkflowDef) else defn.call_signature
        params = list(signature.parameters.values())
        self.names = [p.name for p in params]
        self.required = [p.name for p in params if p.default is inspect.Parameter.empty]
        self.defaults = {p.name: p.default for p in params if p.default is not p.empty}

    def __call__(self, args: Mapping[str, Any]) -> dict[str, Any]:
        """The arguments by name in signature order, defaults applied, JSON-normalized."""
        if len(args) != len(self.names) or any(name not in args for name in self.names):
            missing = [name for name in self.required if name not in args]
            unknown = [name for name in args if name not in self.names]
            if missing or unknown:
                problem = (
                    f"missing argument(s) {', '.join(map(repr, missing))}"
                    if missing
                    else f"unexpected argument(s) {', '.join(map(repr, unknown))}"
                )
                raise InvalidArgumentsError(
                    f"{self.kind} {self.name!r}: {problem}; it takes ({', '.join(self.names)})"
                )
        params: dict[str, Any] = {}
        for name in self.names:
            value = args[name] if name in args else self.defaults[name]
            try:
                params[name] = _codec.normalize(value)
            except TypeError as exc:
                raise InvalidArgumentsError(
                    f"{self.kind} {self.name!r}: argument {name!r}: {exc}"
                ) from None
        return params
