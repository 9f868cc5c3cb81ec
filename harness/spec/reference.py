"""The spec reference as a Markdown table, generated from pydantic's JSON schema of :class:`~harness.spec.schema.Spec`.

``harness schema`` prints it and the README carries it between markers; a test keeps the two in sync.
"""

from __future__ import annotations

import json
from typing import Any

from harness.spec.schema import ParamRange, Spec

__all__ = ["schema_markdown"]

_TYPES = {"string": "str", "integer": "int", "number": "float", "boolean": "bool", "null": "null"}
_BOUNDS = (("minimum", "≥"), ("exclusiveMinimum", ">"), ("maximum", "≤"), ("exclusiveMaximum", "<"))


def schema_markdown() -> str:
    """Every field of the spec, one row each: dotted path, type and bounds, default, meaning."""
    schema = Spec.model_json_schema()
    defs = schema.get("$defs", {})
    rows = ["| field | type | default | meaning |", "|---|---|---|---|"]
    _walk(schema, defs, "", rows)
    rows += ["", "A swept value under `sweep.params.<path>` is either a list (grid values) or one of:", "",
             "| field | meaning |", "|---|---|"]
    for name, prop in ParamRange.model_json_schema()["properties"].items():
        rows.append(f"| `{name}` | {prop.get('description', '')} |")
    return "\n".join(rows)


def _walk(model: dict[str, Any], defs: dict[str, Any], prefix: str, rows: list[str]) -> None:
    required = set(model.get("required", ()))
    for name, prop in model["properties"].items():
        path = prefix + name
        section = _section(prop, defs)
        if path == "sweep.params":
            typ = "path → list or range"
        elif section is not None:
            typ = section[0].removesuffix("Spec") + " section"
        else:
            typ = _type(prop)
        rows.append(f"| `{path}` | {typ.replace('|', chr(92) + '|')} | {_default(prop, name in required, section)} | "
                    f"{prop.get('description', '')} |")
        if section is not None:
            _walk(section[1], defs, path + ".", rows)


def _section(prop: dict[str, Any], defs: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
    """(model name, its schema) when the field is a nested section (``X`` or ``X | None``)."""
    for option in [prop, *prop.get("anyOf", ())]:
        ref = option.get("$ref")
        if ref and ref != "#/$defs/ParamRange":
            name = ref.rsplit("/", 1)[1]
            return name, defs[name]
    return None


def _type(prop: dict[str, Any]) -> str:
    if "anyOf" in prop:
        return " | ".join(_type(option) for option in prop["anyOf"])
    if "enum" in prop:
        return " | ".join(str(v) for v in prop["enum"])
    if "const" in prop:
        return str(prop["const"])
    kind = prop.get("type")
    if kind == "array":
        if "prefixItems" in prop:
            return "[" + ", ".join(_type(item) for item in prop["prefixItems"]) + "]"
        return "list"
    if kind == "object":
        return f"dict[str, {_type(prop.get('additionalProperties', {}))}]"
    bounds = [f"{sign} {_number(prop[key])}" for key, sign in _BOUNDS if key in prop and prop[key] < 2**62]
    return _TYPES.get(str(kind), "any") + (f" ({', '.join(bounds)})" if bounds else "")


def _number(value: float) -> str:
    return f"{int(value):,}" if float(value).is_integer() else f"{value:g}"


def _default(prop: dict[str, Any], required: bool, section: Any) -> str:
    if required:
        return "required"
    if "default" not in prop:  # a default_factory (an empty mapping)
        return "`{}`" if prop.get("type") == "object" else ""
    value = prop["default"]
    if section is not None and isinstance(value, dict):
        return "(section)"
    return f"`{value}`" if isinstance(value, str) else f"`{json.dumps(value)}`"
