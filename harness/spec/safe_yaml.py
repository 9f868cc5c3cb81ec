"""Hardened YAML loading for spec files: safe types only, duplicate keys refused, alias bombs and huge files capped.

Every problem becomes a :class:`~harness.errors.SpecError` naming the file and, where YAML knows it, the line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from harness.errors import Issue, SpecError

__all__ = ["dump_yaml", "parse_yaml", "read_yaml"]

# A spec file larger than this is not a spec; refuse it before parsing.
MAX_SPEC_BYTES = 1_000_000
# YAML aliases are legitimate in small numbers; thousands of them are an alias bomb.
MAX_YAML_ALIASES = 100
# A few dozen aliases can still expand to billions of values ("billion laughs"): cap the size with aliases expanded.
MAX_YAML_NODES = 100_000


class _SafeLoader(yaml.SafeLoader):
    """SafeLoader that refuses alias bombs: it counts aliases while composing."""

    def __init__(self, stream: Any):
        super().__init__(stream)
        self._aliases = 0

    def compose_node(self, parent: Any, index: Any) -> Any:  # type: ignore[override]
        if self.check_event(yaml.AliasEvent):
            self._aliases += 1
            if self._aliases > MAX_YAML_ALIASES:
                raise yaml.YAMLError(f"more than {MAX_YAML_ALIASES} YAML aliases; refusing a possible alias bomb")
        return super().compose_node(parent, index)


def read_yaml(path: str | Path, *, name: str | None = None) -> Any:
    """Parse a YAML file safely. Raises SpecError naming the file (``name``, default the path) and line on any problem."""
    name = name or str(path)
    p = Path(path)
    try:
        size = p.stat().st_size
    except OSError as exc:
        raise SpecError([Issue(name, "", f"cannot read spec file: {exc.strerror or exc}")]) from None
    if p.is_dir():
        raise SpecError([Issue(name, "", "is a directory, expected a YAML spec file")])
    if size > MAX_SPEC_BYTES:
        raise SpecError([Issue(name, "", f"spec file is {size} bytes; a spec is at most {MAX_SPEC_BYTES} bytes")])
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise SpecError([Issue(name, "", f"not UTF-8 text ({exc.reason} at byte {exc.start})")]) from None
    return parse_yaml(text, file=name)


def _duplicate_keys(node: Any, path: str = "", seen: set[int] | None = None) -> list[tuple[str, Any]]:
    """(dotted path, mark) of every key that appears twice in one mapping. YAML keeps the last silently."""
    seen = set() if seen is None else seen
    if id(node) in seen:  # an alias to a node already walked (aliases may even be recursive)
        return []
    seen.add(id(node))
    out: list[tuple[str, Any]] = []
    if isinstance(node, yaml.MappingNode):
        keys: set[str] = set()
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
            sub = f"{path}.{key}" if path else str(key)
            if key is not None and key != "<<":
                if key in keys:
                    out.append((sub, key_node.start_mark))
                keys.add(key)
            out += _duplicate_keys(value_node, sub, seen)
    elif isinstance(node, yaml.SequenceNode):
        for item in node.value:
            out += _duplicate_keys(item, path, seen)
    return out


def _expanded_size(node: Any, memo: dict[int, int], path: set[int]) -> int:
    """How many values the document holds once every alias is expanded (memoised, so it costs one pass)."""
    key = id(node)
    if key in memo:
        return memo[key]
    if key in path:
        raise yaml.YAMLError("a YAML alias refers to a node that contains it (a recursive structure); a spec cannot hold one")
    path.add(key)
    if isinstance(node, yaml.MappingNode):
        size = 1 + sum(_expanded_size(k, memo, path) + _expanded_size(v, memo, path) for k, v in node.value)
    elif isinstance(node, yaml.SequenceNode):
        size = 1 + sum(_expanded_size(item, memo, path) for item in node.value)
    else:
        size = 1
    path.discard(key)
    memo[key] = size
    if size > MAX_YAML_NODES:
        raise yaml.YAMLError(f"the aliases in this YAML expand to more than {MAX_YAML_NODES} values; refusing a possible alias bomb")
    return size


def parse_yaml(text: str, *, file: str | None) -> Any:
    loader = _SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is not None:
            _expanded_size(node, {}, set())
        duplicates = _duplicate_keys(node) if node is not None else []
        if duplicates:
            raise SpecError([Issue(file, path, f"duplicate key (line {mark.line + 1}); YAML would silently keep only the last one")
                             for path, mark in duplicates])
        return loader.construct_document(node) if node is not None else None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        problem = exc.problem or str(exc)
        if "\t" in text and "tab" in problem.lower() or "found character '\\t'" in problem:
            problem += "; YAML indentation must use spaces, not tabs"
        raise SpecError([Issue(file, "", f"invalid YAML{where}: {problem}")]) from None
    except yaml.YAMLError as exc:
        raise SpecError([Issue(file, "", f"invalid YAML: {exc}")]) from None
    except RecursionError:
        raise SpecError([Issue(file, "", "invalid YAML: nested too deeply")]) from None
    finally:
        loader.dispose()


def dump_yaml(data: Any) -> str:
    """Plain data as block-style YAML, keys in their given order."""
    return yaml.safe_dump(data, sort_keys=False)
