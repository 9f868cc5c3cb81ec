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


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One mypy cache for this module's runs, outside the working tree."""
    return tmp_path_factory.mktemp("mypy-cache")


def _mypy(cache: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml"), "--cache-dir", str(cache),
                           "--no-error-summary", *args], cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_harness_passes_mypy(cache):
    out = _mypy(cache, "harness")
    assert out.returncode == 0, f"mypy found errors in harness/:\n{out.stdout}{out.stderr}"


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


def test_a_tracker_missing_a_method_is_a_type_error(cache, tmp_path):
    whole, short = tmp_path / "whole.py", tmp_path / "short.py"
    whole.write_text(_tracker_source(None), encoding="utf-8")
    short.write_text(_tracker_source("log_figure"), encoding="utf-8")
    # (harness's own errors are the first test's business: here only the snippet's count)
    ok = _mypy(cache, "--follow-imports=silent", str(whole))
    assert ok.returncode == 0, ok.stdout + ok.stderr  # every member: it is a Tracker
    bad = _mypy(cache, "--follow-imports=silent", str(short))
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert "log_figure" in bad.stdout and "Tracker" in bad.stdout, bad.stdout
