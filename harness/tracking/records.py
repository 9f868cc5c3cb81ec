"""What a run records beyond params and metrics, in MLflow's own conventions, so the MLflow UI shows it in its own
places: the experiment's kind (the UI's training view), the run's source (command, git commit), its description,
the datasets it trained and was validated on, and the model it produced.

Every record goes through ``MlflowClient``'s public methods and ``mlflow.entities`` (see
:class:`~harness.tracking.tracker.MlflowTracker`); this module holds the names MLflow reads and the plain values
``harness.job`` hands over, so the job layer never builds an MLflow entity itself.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.tracking.redact import redact_argv, redact_url, remember

__all__ = [
    "DESCRIPTION",
    "DIRTY",
    "EXPERIMENT_KIND",
    "TRAINING_KIND",
    "markdown_table",
    "DatasetRecord",
    "ModelRecord",
    "git_state",
    "source_tags",
    "system_metrics_enabled",
]

EXPERIMENT_KIND = "mlflow.experimentKind"  # the experiment tag the MLflow UI reads to tell a training experiment from GenAI
TRAINING_KIND = "custom_model_development"  # the UI's "Machine learning" kind (its enum: genai_development, finetuning, ...)
DESCRIPTION = "mlflow.note.content"  # a run's (or experiment's) description, rendered as Markdown by the UI
OBJECTIVE_METRIC = "sweep/objective"  # a sweep's finished run: its objective, as the sweep scored it (results read the same)
DIRTY = "harness.git_dirty"  # MLflow has no source tag for uncommitted changes: this one says whether there were any


@dataclass(frozen=True)
class DatasetRecord:
    """One dataset a run used, as MLflow's ``Dataset`` entity holds it: its identity is (name, digest).

    ``source_type`` and ``source`` follow MLflow's dataset sources: ``local`` with ``{"uri": path}`` for a file, ``code``
    with ``{"tags": {...}}`` for data shipped in a Python package. ``schema`` is MLflow's column spec
    (``{"mlflow_colspec": [...]}``), ``profile`` a few counts. ``context`` is the run's use of it: train or validation."""

    name: str
    digest: str
    source_type: str
    source: dict[str, Any]
    schema: dict[str, Any]
    profile: dict[str, Any]
    context: str


@dataclass(frozen=True)
class ModelRecord:
    """A trained model to record as an MLflow logged model: the files of its folder (weights, the spec and tokenizer
    that rebuild it), what it is, and the metrics of the weights it holds (linked to the model, and to ``dataset``, the
    data they were measured on)."""

    folder: Path
    name: str
    weights: str  # the weights file, relative to folder: what MLflow's python_function loader is handed
    loader_module: str  # the module whose _load_pyfunc(path) MLflow calls to load it (mlflow.pyfunc.load_model)
    params: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    step: int = 0
    dataset: DatasetRecord | None = None
    model_type: str = "harness-gpt"


def system_metrics_enabled() -> bool:
    """On unless ``MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING`` (MLflow's own switch) says false."""
    return os.environ.get("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", "").strip().lower() not in ("false", "0", "no", "off")


def _command(argv: list[str]) -> str:
    """The command line as a person typed it: ``harness run x.yaml`` rather than ``/path/to/venv/bin/harness run x.yaml``,
    without its secrets (``--storage postgresql://u:***@host/db``: the tag is stored on every run). Redacted before
    it is cut to 500 characters, so no cut-off URL keeps a piece of its password."""
    if not argv:
        return "python"
    first = Path(argv[0]).name
    if first == "__main__.py" and Path(argv[0]).parent.name == "harness":
        first = "python -m harness"
    elif first in ("-c", ""):
        first = "python -c"
    return " ".join([first, *(shlex.quote(a) for a in redact_argv(argv[1:]))])[:500]


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], capture_output=True, text=True, timeout=10, check=False, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def git_state() -> dict[str, str]:
    """The git commit of the working directory's repository, its branch, origin (without credentials) and whether
    tracked files differ from the commit; {} outside a repository. Asked afresh for every run (four short git
    commands): a notebook or a sweep worker outlives commits and edits."""
    commit = _git("rev-parse", "HEAD")
    if not commit:
        return {}
    tags = {"mlflow.source.git.commit": commit}
    branch = _git("rev-parse", "--abbrev-ref", "HEAD")
    if branch and branch != "HEAD":
        tags["mlflow.source.git.branch"] = branch
    origin = _git("config", "--get", "remote.origin.url")
    if origin:
        remember(origin)  # a token in the origin (https://TOKEN@github.com/...) is hidden in git's own messages too
        tags["mlflow.source.git.repoURL"] = redact_url(origin)
    status = _git("status", "--porcelain", "--untracked-files=no")
    if status is not None:
        tags[DIRTY] = "true" if status else "false"
    return tags


def source_tags(argv: list[str] | None = None) -> dict[str, str]:
    """MLflow's source tags for a run started here: the command (``mlflow.source.name``, type LOCAL) and the git
    commit, branch and origin of the working directory, plus whether the tree had uncommitted changes."""
    return {"mlflow.source.name": _command(list(sys.argv if argv is None else argv)), "mlflow.source.type": "LOCAL",
            **git_state()}


def dataset_json(value: dict[str, Any]) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False)


def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def markdown_table(rows: list[dict[str, Any]], columns: list[str], *, limit: int = 40, rest: str = "") -> str:
    """``rows`` as a Markdown table of ``columns`` (the MLflow UI renders a run's description as Markdown); past
    ``limit`` rows, one line says how many more there are and where (``rest``)."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(row.get(c)) for c in columns) + " |" for row in rows[:limit]]
    if len(rows) > limit:
        lines.append(f"\n… and {len(rows) - limit} more{f' ({rest})' if rest else ''}.")
    return "\n".join(lines)
