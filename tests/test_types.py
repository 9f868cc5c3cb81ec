"""The static type checker over harness/ (mypy, configured in pyproject.toml's [tool.mypy]; CI installs it with the dev
extra): harness passes it, and it has teeth: a tracker that lacks one of the Tracker protocol's methods is an error where
it is used as a Tracker (issue 20, defect 1: a hand-copied tracker without log_figure lost a classifier's report)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(importlib.util.find_spec("mypy") is None,
                                reason="mypy is not installed here: pip install -e '.[dev]' installs it (as CI does)")


def _tracker_source(without: str | None) -> str:
    """A class with every member of the Tracker protocol (as loosely typed as possible) except ``without``."""
    from harness.tracking.protocol import Tracker

    members = {n for n in vars(Tracker) if not n.startswith("_")} | set(Tracker.__annotations__)  # its methods, properties, attributes
    assert {"log_figure", "offline", "run_id", "end"} <= members
    lines = ["from typing import Any", "from harness.tracking.protocol import Tracker", "", "class Copied:"]
    for name in sorted(members):
        if name == without:
            continue
        if callable(getattr(Tracker, name, None)):
            lines.append(f"    def {name}(self, *args: Any, **kwargs: Any) -> Any: ...")
        else:  # a property or an attribute
            lines.append(f"    {name}: Any = None")
    lines += ["", "", "def use(tracker: Tracker) -> None: ...", "", "", "use(Copied())", ""]
    return "\n".join(lines)


@pytest.fixture(scope="module")
def checked(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess, dict[str, Path]]:
    """One mypy run (it takes about 10 s each on 2 cores) over harness/ and two snippets: a class with every member of
    the Tracker protocol, and the same class without log_figure, each passed where a Tracker is expected."""
    folder = tmp_path_factory.mktemp("mypy")
    snippets = {"whole": folder / "whole_tracker.py", "short": folder / "short_tracker.py"}
    snippets["whole"].write_text(_tracker_source(None), encoding="utf-8")
    snippets["short"].write_text(_tracker_source("log_figure"), encoding="utf-8")
    out = subprocess.run([sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml"), "--cache-dir", str(folder / "cache"),
                          "--no-error-summary", "harness", *map(str, snippets.values())], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode in (0, 1), f"mypy did not run:\n{out.stdout}{out.stderr}"
    return out, snippets


def _errors_in(out: subprocess.CompletedProcess, path: str) -> list[str]:
    return [line for line in out.stdout.splitlines() if line.startswith(path) and ": error:" in line]


def test_harness_passes_mypy(checked):
    out, snippets = checked
    theirs = {str(p) for p in snippets.values()}
    ours = [line for line in out.stdout.splitlines() if ": error:" in line and not line.startswith(tuple(theirs))]
    assert not ours, "mypy found errors in harness/:\n" + "\n".join(ours)


def test_a_tracker_missing_a_method_is_a_type_error(checked):
    out, snippets = checked
    assert not _errors_in(out, str(snippets["whole"])), out.stdout  # every member: it is a Tracker
    assert _errors_in(out, str(snippets["short"])), out.stdout
    said = "\n".join(line for line in out.stdout.splitlines() if line.startswith(str(snippets["short"])))
    assert '"Tracker" protocol member' in said and said.rstrip().endswith("log_figure"), said
