"""Params back from MLflow's strings to typed values and typed pandas columns; which params differ between runs."""

from __future__ import annotations

import ast
import json
import math
import re
from collections.abc import Iterable, Sequence
from typing import Any

from harness.results.store import get_run

__all__ = ["NOT_CHANGES", "changed_params", "hashable", "parse_value", "schema_hint", "short", "sweep_space", "swept_params", "typed_series"]

_INT = re.compile(r"^[+-]?\d+$")
_FLOAT = re.compile(r"^[+-]?(\d+\.\d*|\.\d+|\d+)([eE][+-]?\d+)?$|^[+-]?(nan|inf|infinity)$", re.IGNORECASE)
NOT_CHANGES = ("tracking.run_name",)


def parse_value(text: Any) -> Any:
    """MLflow stores every param as ``str(value)``; undo that: ``"1e-06"`` -> 1e-06, ``"True"`` -> True,
    ``"None"`` -> None, ``"[0.9, 0.999]"`` -> [0.9, 0.999], ``"{}"`` -> {}. Anything else stays a string."""
    if not isinstance(text, str):
        return text
    s = text.strip()
    if s == "None":
        return None
    if s in ("True", "False"):
        return s == "True"
    if _INT.match(s):
        return int(s)
    if _FLOAT.match(s):
        return float(s)
    if s[:1] in "[{(" and s[-1:] in "]})":
        try:
            v = json.loads(s)
        except ValueError:
            try:
                v = ast.literal_eval(s)
            except (ValueError, SyntaxError, MemoryError, RecursionError):
                return text
        return list(v) if isinstance(v, tuple) else v
    return text


_HINTS: dict[str, type] | None = None


def schema_hint(path: str) -> type | None:
    """int, float or bool when the spec schema declares ``path`` as one of those (optionally None), else None."""
    global _HINTS
    if _HINTS is None:
        import types
        import typing

        from harness.spec import field_paths

        hints: dict[str, type] = {}
        for p, ann in field_paths().items():
            args = [a for a in typing.get_args(ann) if a is not type(None)] if typing.get_origin(ann) in (typing.Union, types.UnionType) else [ann]
            if len(args) == 1 and args[0] in (int, float, bool):
                hints[p] = args[0]
        _HINTS = hints
    return _HINTS.get(path)


def typed_series(values: Sequence[Any], index: Any = None, *, hint: type | None = None) -> Any:
    """A pandas Series with the narrowest honest dtype: Int64, float64, boolean, or object. ``hint`` (the schema's
    type) decides for a column that holds only None, and makes a float field float64 even when it holds ints."""
    import numpy as np
    import pandas as pd

    present = [v for v in values if v is not None]
    kinds = {type(v) for v in present}
    if hint is bool and kinds <= {bool}:
        return pd.Series(list(values), index=index, dtype="boolean")
    if hint is int and kinds <= {int}:
        return pd.Series(list(values), index=index, dtype="Int64")
    if hint is float and kinds <= {int, float}:
        return pd.Series([np.nan if v is None else float(v) for v in values], index=index, dtype="float64")
    if not present:
        return pd.Series(list(values), index=index, dtype=object)
    if kinds == {bool}:
        return pd.Series(list(values), index=index, dtype="boolean")
    if kinds == {int}:
        return pd.Series(list(values), index=index, dtype="Int64")
    if kinds <= {int, float}:
        return pd.Series([np.nan if v is None else float(v) for v in values], index=index, dtype="float64")
    return pd.Series(list(values), index=index, dtype=object)


def hashable(v: Any) -> str:
    return json.dumps(v, sort_keys=True, default=str)


def changed_params(param_rows: Sequence[dict[str, Any]], swept: Iterable[str] = ()) -> list[str]:
    """Params whose value differs between the runs (plus the sweep's own params), in a stable order; derived facts
    and the run name are left out, since they follow from the others."""
    keys: list[str] = []
    for row in param_rows:
        for k in row:
            if k not in keys:
                keys.append(k)
    out = [k for k in swept if k in keys]
    for k in keys:
        if k in out or k in NOT_CHANGES or k.startswith("derived."):
            continue
        if len({hashable(row.get(k)) for row in param_rows}) > 1:
            out.append(k)
    return out


def sweep_space(parent: Any) -> dict[str, dict[str, Any]]:
    """Swept param path -> {"log": bool} from a sweep parent run's ``sweep.params.*`` params. A grid logs one param
    per path (its values); a range is flattened into ``<path>.choices/.int/.float/.log/.step``."""
    prefix = "sweep.params."
    params = {k[len(prefix) :]: v for k, v in parent.data.params.items() if k.startswith(prefix)}
    ranged = {k.rsplit(".", 1)[0] for k in params if k.endswith(".choices") and k.rsplit(".", 1)[0] + ".float" in params}
    out: dict[str, dict[str, Any]] = {}
    for k, v in params.items():
        base = k.rsplit(".", 1)[0]
        if base in ranged:
            entry = out.setdefault(base, {"log": False})
            if k.endswith(".log"):
                entry["log"] = parse_value(v) is True
        else:
            out.setdefault(k, {"log": False})
    return out


def swept_params(client: Any, runs: Sequence[Any]) -> list[str]:
    """Param paths swept by the parents of these runs."""
    out: list[str] = []
    parents = sorted({r.data.tags.get("mlflow.parentRunId") for r in runs} - {None})  # type: ignore[type-var]
    for pid in parents:
        parent = get_run(client, pid)  # type: ignore[arg-type]
        if parent is not None:
            out += [k for k in sweep_space(parent) if k not in out]
    return out


def short(v: Any) -> str:
    if isinstance(v, float):
        if math.isnan(v):
            return "-"
        return f"{v:.4g}"
    if v is None:
        return "-"
    return str(v)
