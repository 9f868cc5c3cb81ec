"""The package tree is the architecture: layers import downward only, nothing imports in a circle, and the command
line starts without torch or MLflow."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "harness"

# Lowest first. A module may import its own layer (no cycles) and the layers before it.
LAYERS = [
    {"harness.errors", "harness._lazy", "harness.testing", "harness.collector", "harness.stats"},
    {"harness.spec"},
    {"harness.data"},
    {"harness.model", "harness.dropout"},
    {"harness.train"},
    {"harness.tracking", "harness.plots"},
    {"harness.job"},
    {"harness.sweep"},
    {"harness.results"},
    {"harness.serve", "harness.generate"},
    {"harness.cli"},
]
HEAVY = ("torch", "mlflow", "optuna", "pandas", "matplotlib", "sqlalchemy", "numpy")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _unit(module: str) -> str:
    """The layer unit a module belongs to: harness.spec.load -> harness.spec."""
    parts = module.split(".")
    return ".".join(parts[:2]) if len(parts) > 1 else module


def _layer(module: str) -> int:
    unit = _unit(module)
    for i, units in enumerate(LAYERS):
        if unit in units:
            return i
    raise AssertionError(f"{module} belongs to no layer: add its package to LAYERS in this test")


def _harness_imports(path: Path, *, top_level_only: bool) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("harness.")}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and node.module.startswith("harness"):
            # `from harness.cli import run` imports the submodule harness.cli.run when there is one
            subs = {f"{node.module}.{a.name}" for a in node.names} & set(_module_files())
            found |= subs if subs else {node.module}
    return found


def _module_files() -> dict[str, Path]:
    return {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _modules() -> dict[str, Path]:
    """Every module but the package's front door (harness/__init__, __main__), which may reach any layer."""
    return {n: p for n, p in _module_files().items() if n not in ("harness", "harness.__main__")}


def test_layers_import_downward_only():
    wrong = []
    for name, path in sorted(_modules().items()):
        for imported in sorted(_harness_imports(path, top_level_only=False)):
            if _unit(imported) in ("harness.__version__",) or imported == "harness":
                continue
            if _layer(imported) > _layer(name):
                wrong.append(f"{name} (layer {_layer(name)}) imports {imported} (layer {_layer(imported)})")
    assert not wrong, "\n".join(wrong)


def test_no_import_cycles_between_modules():
    graph = {name: {m for m in _harness_imports(path, top_level_only=True) if m in _modules()} for name, path in _modules().items()}
    done: set[str] = set()

    def visit(node: str, stack: list[str]) -> None:
        if node in stack:
            raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(node):] + [node]))
        if node in done:
            return
        for nxt in sorted(graph.get(node, ())):
            visit(nxt, stack + [node])
        done.add(node)

    for name in sorted(graph):
        visit(name, [])


def test_the_command_line_starts_without_torch_or_mlflow():
    """`harness --help` (and `import harness`) import none of the heavy libraries."""
    code = ("import sys, harness, harness.cli; harness.cli.build_parser().format_help(); "
            f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_layers_cover_every_package():
    units = {_unit(name) for name in _modules()}
    assert units == set().union(*LAYERS), units ^ set().union(*LAYERS)
