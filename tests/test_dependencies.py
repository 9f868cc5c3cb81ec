"""Every third-party import is declared in pyproject.toml, so a fresh virtual environment that installs what the
README says can run everything (a missing declaration once reached main because a hand-installed package hid it).

The rule: code under harness/ may import core dependencies, plus an extra's packages only from the modules listed
for that extra below; tests/ and bench/ may import core and the ``dev`` extra (which pulls in the others it needs).
"""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FIRST_PARTY = {"harness"}
# An extra's packages may be imported (lazily, with a clear message when missing) only by these modules.
EXTRA_USERS = {
    "dashboard": {"harness/serve.py"},
    "parquet": {"harness/results/frames.py"},
    "postgres": set(),  # a SQLAlchemy driver: loaded by the engine, never imported by name
}


def _norm(name: str) -> str:
    """PEP 503 name normalisation (Foo_Bar.baz -> foo-bar-baz)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement_names(requirements: list[str]) -> tuple[set[str], set[str]]:
    """(distribution names, extras of this project that are pulled in, e.g. harness[parquet,postgres])."""
    names, pulled = set(), set()
    for req in requirements:
        m = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(\[([^\]]*)\])?", req)
        assert m, f"unparsable requirement {req!r}"
        if _norm(m.group(1)) == "harness":
            pulled |= {e.strip() for e in (m.group(3) or "").split(",") if e.strip()}
        else:
            names.add(_norm(m.group(1)))
    return names, pulled


def _declared() -> tuple[set[str], dict[str, set[str]]]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    core, _ = _requirement_names(project["dependencies"])
    extras: dict[str, set[str]] = {}
    for extra, reqs in project.get("optional-dependencies", {}).items():
        names, pulled = _requirement_names(reqs)
        extras[extra] = names
        for other in pulled:
            extras[extra] |= _requirement_names(project["optional-dependencies"][other])[0]
    return core, extras


def _local_modules() -> set[str]:
    """Modules that live next to the tests and benches (conftest, helpers) rather than in a package."""
    return {p.stem for folder in ("tests", "tests/reliability", "bench") for p in (ROOT / folder).glob("*.py")}


def _imports(path: Path) -> set[str]:
    """Top-level names of every absolute import in the file, wherever it appears (lazy imports in functions too)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


def _third_party(path: Path) -> set[str]:
    local = _local_modules()
    return {m for m in _imports(path) if m not in sys.stdlib_module_names and m not in FIRST_PARTY and m not in local}


def _files() -> list[Path]:
    return sorted(p for folder in ("harness", "tests", "bench") for p in (ROOT / folder).rglob("*.py"))


def test_every_third_party_import_is_declared_for_the_code_that_uses_it():
    core, extras = _declared()
    providers = importlib.metadata.packages_distributions()  # import name -> distributions that provide it
    problems = []
    for path in _files():
        rel = path.relative_to(ROOT).as_posix()
        if rel.startswith("harness/"):
            allowed = set(core)
            for extra, users in EXTRA_USERS.items():
                if rel in users:
                    allowed |= extras[extra]
        else:
            allowed = core | extras["dev"]
        for module in sorted(_third_party(path)):
            # An extra that the dev install leaves out (optuna-dashboard) is not installed: go by its import name.
            dists = {_norm(d) for d in providers.get(module, [])} or ({_norm(module)} & allowed)
            if not dists:
                problems.append(f"{rel}: imports {module}, which no installed distribution provides (so nothing declares it)")
            elif not dists & allowed:
                problems.append(f"{rel}: imports {module} (from {', '.join(sorted(dists))}), not declared for this code in pyproject.toml")
    assert not problems, "\n".join(problems)


def test_the_check_sees_lazy_imports_and_catches_an_undeclared_one(tmp_path):
    """The scanner finds imports inside functions, and a package that is installed but not declared is reported."""
    sample = tmp_path / "sample.py"
    sample.write_text("def f():\n    import pytest\n    from optuna import trial\n    import json\n", encoding="utf-8")
    assert _third_party(sample) == {"pytest", "optuna"}
    core, _ = _declared()
    assert "pytest" not in core, "pytest is a test tool: harness/ must not need it"  # (psutil is core: MLflow's system metrics)


@pytest.mark.parametrize("extra", sorted(EXTRA_USERS))
def test_extras_named_here_exist_in_pyproject(extra):
    _, extras = _declared()
    assert extra in extras
