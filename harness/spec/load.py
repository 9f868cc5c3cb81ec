"""From a YAML file (or a parsed mapping) to a validated :class:`~harness.spec.schema.Spec`, and back to plain data.

Every schema problem is collected and raised once as a :class:`~harness.errors.SpecError` whose issues name the file,
the dotted field path and what was expected. Checks that need the corpus (a seq_len longer than the split, ...) are
made by :func:`harness.data.checks.check_data`, after the schema has passed.
"""

from __future__ import annotations

import copy
import difflib
import glob
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from harness.errors import Issue, SpecError
from harness.spec.paths import apply_overrides, check_path, closest_path, field_paths, normalise, parse_overrides, set_path
from harness.spec.safe_yaml import dump_yaml, read_yaml
from harness.spec.schema import FIELD_MARK, SHIPPED_DATASETS, ParamRange, Spec, is_named_corpus

__all__ = ["load_spec", "spec_from_dict", "spec_to_dict", "spec_to_yaml", "swept_issue", "sweep_variants", "variant"]


def _loc_to_path(loc: tuple[Any, ...]) -> str:
    parts = []
    for item in loc:
        s = str(item)
        # Pydantic adds union-member and validator names to locations; they are not field names.
        if "[" in s or s in {"list[any]", "ParamRange"}:
            continue
        parts.append(s)
    return ".".join(parts)


def _describe(err: Mapping[str, Any]) -> str:
    msg = err["msg"]
    kind = err["type"]
    if kind == "extra_forbidden":
        return "unknown field"
    if kind == "missing":
        return "required field is missing"
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    if kind not in ("value_error", "assertion_error") and "input" in err:
        shown = repr(err["input"])
        if len(shown) > 60:
            shown = shown[:57] + "..."
        msg = f"{msg} (got {shown})"
    return msg


def _issues_from(exc: ValidationError, file: str | None) -> list[Issue]:
    issues = []
    seen = set()
    for err in exc.errors():
        path = _loc_to_path(err["loc"])
        swept = path.startswith("sweep.params.")
        if swept and err["type"] == "list_type" and isinstance(err.get("input"), dict):
            continue  # a mapping under sweep.params is meant as a range: the range's own errors say what is wrong
        msg = _describe(err)
        mark = FIELD_MARK.match(msg)
        if mark:
            path = f"{path}.{mark.group(1)}" if path else mark.group(1)
            msg = mark.group(2)
        if err["type"] == "extra_forbidden":
            if swept:  # a key of a range: choices, int, float, log, step
                leaf = path.rpartition(".")[2]
                close = next(iter(difflib.get_close_matches(leaf, list(ParamRange.model_fields), n=1, cutoff=0.6)), None)
            else:
                close = closest_path(path, list(field_paths()))
            if close:
                msg += f"; did you mean {close}?"
        key = (path, msg)
        if key not in seen:
            seen.add(key)
            issues.append(Issue(file, path, msg))
    return issues


def spec_from_dict(raw: Any, *, file: str | None = None) -> Spec:
    """Validate a parsed mapping into a :class:`Spec`, raising one SpecError with every schema problem found.

    For a sweep spec, every grid value and range endpoint must also make a valid run spec (see :func:`sweep_variants`).
    """
    if not isinstance(raw, dict):
        kind = "empty file" if raw is None else type(raw).__name__
        raise SpecError([Issue(file, "", f"expected a mapping of sections (name, seed, data, model, train, tracking), got {kind}")])
    raw = copy.deepcopy(raw)
    normalise(raw)
    issues: list[Issue] = []
    sweep_raw = raw.get("sweep")
    if isinstance(sweep_raw, dict) and isinstance(sweep_raw.get("params"), dict):
        for path in sweep_raw["params"]:
            msg = check_path(str(path), allow_sweep=False)
            if msg is not None:
                issues.append(Issue(file, f"sweep.params.{path}", msg))
    try:
        spec = Spec.model_validate(raw)
    except ValidationError as exc:
        issues.extend(_issues_from(exc, file))
        raise SpecError(issues) from None
    if issues:
        raise SpecError(issues)
    for path, value, found in _variant_results(spec, file):
        if isinstance(found, list):
            issues.extend(swept_issue(file, path, value, issue) for issue in found)
    if issues:
        raise SpecError(issues)
    return spec


def variant(base: Spec, values: Mapping[str, Any], *, file: str | None = None, run_name: str | None = None) -> Spec:
    """``base`` as a run spec (no sweep section) with each dotted path in ``values`` set: what a sweep trial runs."""
    raw = base.model_dump(mode="json", exclude_unset=True)  # what the spec says, not its defaults: they stay defaults
    raw.pop("sweep", None)
    for path, value in values.items():
        set_path(raw, path, value)
    if run_name is not None:
        raw.setdefault("tracking", {})["run_name"] = run_name
    return spec_from_dict(raw, file=file)


def sweep_variants(spec: Spec) -> Iterator[tuple[str, Any, Spec]]:
    """(path, value, run spec) for every grid value and range endpoint of a sweep spec that makes a valid run spec.

    Every value a sampler can pick lies among these (or between two endpoints), so checking them checks the sweep."""
    for path, value, found in _variant_results(spec, None):
        if isinstance(found, Spec):
            yield path, value, found


def _variant_results(spec: Spec, file: str | None) -> Iterator[tuple[str, Any, Spec | list[Issue]]]:
    if spec.sweep is None:
        return
    for path, space in spec.sweep.params.items():
        for value in (space if isinstance(space, list) else space.endpoints()):
            try:
                yield path, value, variant(spec, {path: value}, file=file)
            except SpecError as exc:
                yield path, value, exc.issues


def swept_issue(file: str | None, path: str, value: Any, issue: Issue) -> Issue:
    """An issue of a run spec made from one swept value, reported on that sweep param."""
    return Issue(file, f"sweep.params.{path}", f"value {value!r} makes an invalid run: {issue.path}: {issue.message}")


def load_spec(path: str | Path, overrides: list[str] | None = None) -> Spec:
    """Read, override and validate a spec file (schema only; :func:`harness.data.checks.check_data` reads the data).

    Relative file paths in it (a corpus, a dataset, a ranks file, an init checkpoint) are resolved against the spec's
    folder when the file is there, else against the working directory."""
    name = str(path)
    raw = read_yaml(path)
    parsed = parse_overrides(overrides)
    if isinstance(raw, dict):
        raw = apply_overrides(raw, parsed)
        _resolve_paths(raw, Path(path).resolve().parent)
    return spec_from_dict(raw, file=name)


# The spec fields that may hold a path to a file, and the values there that are names, not paths.
_PATH_FIELDS = (("data", "corpus"), ("data", "tokenizer", "path"), ("task", "dataset"), ("init", "from"))


_GLOB_CHARS = frozenset("*?[")


def _resolve_paths(raw: dict[str, Any], base: Path) -> None:
    for keys in _PATH_FIELDS:
        parent: Any = raw
        for key in keys[:-1]:
            parent = parent.get(key) if isinstance(parent, dict) else None
        value = parent.get(keys[-1]) if isinstance(parent, dict) else None
        if not isinstance(value, str) or not value.strip() or _is_name(keys, value):
            continue
        p = Path(value).expanduser()
        if keys == ("data", "corpus") and _GLOB_CHARS & set(value):
            # a glob: next to the spec when it matches there; its pattern is kept (a resolved path has no '*')
            if not p.is_absolute():
                p = (base / p) if glob.glob(str(base / p), recursive=True) else (Path.cwd() / p)
            parent[keys[-1]] = os.path.normpath(str(p))
            continue
        if not p.is_absolute():
            if keys == ("init", "from") and not (base / p).exists() and not p.exists():
                continue  # a run id or an experiment name
            p = (base / p) if (base / p).exists() else (Path.cwd() / p)
        parent[keys[-1]] = str(p.resolve())


def _is_name(keys: tuple[str, ...], value: str) -> bool:
    if keys == ("data", "corpus"):
        return is_named_corpus(value)
    if keys == ("task", "dataset"):
        return value in SHIPPED_DATASETS
    return False


def spec_to_dict(spec: Spec) -> dict[str, Any]:
    """The resolved spec as plain YAML-able data (tuples become lists)."""
    return spec.model_dump(mode="json")


def spec_to_yaml(spec: Spec) -> str:
    return dump_yaml(spec_to_dict(spec))
