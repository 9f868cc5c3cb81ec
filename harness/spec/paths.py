"""Dotted field paths into the spec (``train.optimizer.lr``): the list of valid paths, suggestions for typos, and the
``--set path=value`` overrides that use them."""

from __future__ import annotations

import copy
import difflib
import types
import typing
from typing import Any, Union

from pydantic import BaseModel

from harness.errors import Issue, SpecError
from harness.spec.safe_yaml import parse_yaml
from harness.spec.schema import ParamRange, PrunerSpec, Spec, TaskSpec, TokenizerSpec

__all__ = ["apply_overrides", "check_path", "closest_path", "field_paths", "flatten", "inner_model", "normalise", "parse_overrides", "set_path"]


def inner_model(annotation: Any) -> type[BaseModel] | None:
    """The BaseModel inside ``X``, ``X | None`` or a union with it, if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    origin = typing.get_origin(annotation)
    if origin in (Union, types.UnionType):
        for arg in typing.get_args(annotation):
            inner = inner_model(arg)
            if inner is not None and inner is not ParamRange:
                return inner
    return None


def field_paths(model: type[BaseModel] = Spec, prefix: str = "") -> dict[str, Any]:
    """Every settable dotted path of the schema mapped to its annotation (nested models included)."""
    paths: dict[str, Any] = {}
    for name, info in model.model_fields.items():
        path = f"{prefix}{info.alias or name}"  # init.from is spelled as in YAML
        paths[path] = info.annotation
        inner = inner_model(info.annotation)
        if inner is not None and path != "sweep.params":
            paths.update(field_paths(inner, prefix=path + "."))
    return paths


def check_path(path: str, *, allow_sweep: bool = True) -> str | None:
    """None when ``path`` is a valid dotted field path, else the message to show (with the closest valid path)."""
    paths = field_paths()
    if path in paths and (allow_sweep or not path.startswith("sweep")):
        return None
    # tracking.tags.<anything> is free-form.
    if path.startswith("tracking.tags.") and len(path) > len("tracking.tags."):
        return None
    candidates = [p for p in paths if allow_sweep or not p.startswith("sweep")]
    close = closest_path(path, candidates)
    hint = f"; did you mean {close}?" if close else ""
    return f"unknown field path '{path}'{hint}"


# Names people bring from other tools (nanoGPT, Hugging Face, the textbook) -> the field name here.
SYNONYMS = {
    "learning_rate": "lr", "lr_max": "lr", "max_lr": "lr", "peak_lr": "lr", "lr_min": "min_lr", "wd": "weight_decay",
    "steps": "max_steps", "max_iters": "max_steps", "iters": "max_steps", "num_steps": "max_steps", "num_epochs": "epochs",
    "n_epochs": "epochs", "batch": "batch_size", "bs": "batch_size", "block_size": "seq_len", "context_length": "seq_len",
    "context": "seq_len", "n_embd": "d_model", "hidden_size": "d_model", "n_layer": "n_layers", "num_layers": "n_layers",
    "n_head": "n_heads", "num_heads": "n_heads", "ffn_dim": "d_ff", "intermediate_size": "d_ff", "dropout_rate": "dropout",
    "grad_clip": "clip_grad_norm", "max_grad_norm": "clip_grad_norm", "eval_interval": "every_steps", "eval_iters": "batches",
    "warmup": "warmup_steps", "warmup_iters": "warmup_steps", "dataset": "corpus", "data_path": "corpus",
}


def closest_path(path: str, candidates: list[str]) -> str | None:
    """The valid path a mistaken one most likely meant.

    In order: a sibling with a similar name (``train.optimizer.lrr``); the one field whose name is the path's last
    segment, or its synonym (``lr``, ``train.lr``, ``learning_rate`` -> ``train.optimizer.lr``); a field whose name is
    spelled like it; a similar full path."""
    parent, _, leaf = path.rpartition(".")
    siblings = {c.rpartition(".")[2]: c for c in candidates if c.rpartition(".")[0] == parent}
    if siblings:
        close = difflib.get_close_matches(leaf, list(siblings), n=1, cutoff=0.6)
        if close:
            return siblings[close[0]]
    by_leaf: dict[str, list[str]] = {}
    for c in candidates:
        by_leaf.setdefault(c.rpartition(".")[2], []).append(c)
    for name in (leaf, SYNONYMS.get(leaf.lower(), "")):
        matches = by_leaf.get(name, [])
        if len(matches) == 1:
            return matches[0]
        if matches:  # several fields share the name (every_steps): the one whose path shares most with the given one
            return max(matches, key=lambda c: len(set(c.split(".")) & set(path.split("."))))
    close = difflib.get_close_matches(leaf, list(by_leaf), n=1, cutoff=0.75)
    if close and len(by_leaf[close[0]]) == 1:
        return by_leaf[close[0]][0]
    close = difflib.get_close_matches(path, candidates, n=1, cutoff=0.6)
    return close[0] if close else None


def parse_overrides(items: list[str] | tuple[str, ...] | None) -> list[tuple[str, Any]]:
    """``["a.b=1", ...]`` -> ``[("a.b", 1), ...]`` with values parsed as YAML scalars. Bad items raise SpecError."""
    parsed: list[tuple[str, Any]] = []
    issues: list[Issue] = []
    for item in items or ():
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            issues.append(Issue("--set", key or item, f"expected key=value, got '{item}'"))
            continue
        try:
            value = parse_yaml(raw, file="--set") if raw.strip() else None
        except SpecError as exc:
            issues.append(Issue("--set", key, exc.issues[0].message))
            continue
        parsed.append((key, value))
    if issues:
        raise SpecError(issues)
    return parsed


# Sections a spec may write as one word (``tokenizer: char``, ``task: classify``, ``pruner: median``).
_SHORTHANDS: dict[tuple[str, ...], type[TokenizerSpec] | type[TaskSpec] | type[PrunerSpec]] = {
    ("data", "tokenizer"): TokenizerSpec, ("task",): TaskSpec, ("sweep", "pruner"): PrunerSpec}


def normalise(raw: dict[str, Any]) -> None:
    """Expand shorthands in place, with each section's own rule, so dotted overrides can reach their fields."""
    for path, model in _SHORTHANDS.items():
        parent = raw
        for key in path[:-1]:
            parent = parent.get(key) if isinstance(parent, dict) else None  # type: ignore[assignment]
        if isinstance(parent, dict) and isinstance(parent.get(path[-1]), str):
            parent[path[-1]] = model.expand_shorthand(parent[path[-1]])


def set_path(raw: dict[str, Any], path: str, value: Any) -> None:
    """Set ``a.b.c`` in a nested dict, creating (or replacing null) intermediate mappings."""
    node = raw
    parts = path.split(".")
    if path.startswith("tracking.tags."):
        parts = ["tracking", "tags", path[len("tracking.tags.") :]]
    for part in parts[:-1]:
        nxt = node.get(part)
        if not isinstance(nxt, dict):
            nxt = {}
            node[part] = nxt
        node = nxt
    node[parts[-1]] = value


def apply_overrides(raw: dict[str, Any], overrides: list[tuple[str, Any]], *, source: str = "--set") -> dict[str, Any]:
    """A deep copy of ``raw`` with each override applied. Unknown paths raise SpecError with a suggestion."""
    out = copy.deepcopy(raw)
    normalise(out)
    issues = [Issue(source, key, msg) for key, _ in overrides if (msg := check_path(key)) is not None]
    if issues:
        raise SpecError(issues)
    for key, value in overrides:
        set_path(out, key, value)
    return out


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}} -> {"a.b": 1}``; lists stay values."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, path + "."))
        else:
            out[path] = value
    return out
