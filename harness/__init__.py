"""harness: YAML spec -> GPT training run tracked in MLflow, with Optuna sweeps.

The package tree is the architecture; each layer imports only the layers above it in this list:

* ``errors``: the exceptions that reach the user as a message and exit code 2;
* ``collector``: Python's garbage collector paused while a process starts up (imports), resumed for training;
* ``spec``: the typed spec, its YAML loading and ``--set`` overrides (no torch);
* ``data``: corpora, tokenizers, the train/val split, batches, and the spec checks that need the data;
* ``model``: the GPT;
* ``train``: the loop (events, optimizer and schedule, checkpoints); it knows nothing of MLflow or Optuna;
* ``tracking``: the MLflow store and the buffered run writer; ``plots``: the figures a run saves;
* ``job``: one run end to end (spec -> data -> model -> trainer -> tracker), and ``resume``;
* ``sweep``: an Optuna study over copies of a spec, calling the job per trial;
* ``results``: runs, histories and studies as pandas frames; ``serve``: the MLflow UI and optuna-dashboard;
  ``generate``: text from a trained run;
* ``cli``: the ``harness`` command, thin over the above. ``testing``: fault injection for the test suite.

Library code returns values and raises :class:`HarnessError`; only the CLI prints and exits. Importing ``harness``
imports neither torch nor MLflow::

    from harness import load_spec, run, resume
    from harness import results
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__version__ = "0.1.0"

from harness.errors import HarnessError, Issue, SpecError, UsageError
from harness.spec import Spec

__all__ = ["HarnessError", "Issue", "Spec", "SpecError", "UsageError", "__version__", "load_spec", "resume", "run"]


def load_spec(path: str | Path, overrides: list[str] | None = None) -> Spec:
    """Read a spec file, apply ``--set``-style overrides, and validate it against the schema and its data (the corpus
    loads, and the split holds enough for seq_len and a batch). Every problem is raised at once as a SpecError."""
    from harness.data.checks import validate_data
    from harness.spec import load_spec as load_schema_checked

    spec = load_schema_checked(path, overrides)
    validate_data(spec, file=str(path))
    return spec


def run(spec: Spec, **kwargs: Any) -> Any:
    """Train one spec as an MLflow run (see :func:`harness.job.run`)."""
    from harness.job import run as _run

    return _run(spec, **kwargs)


def resume(run_id: str, **kwargs: Any) -> Any:
    """Continue a stopped run in the same MLflow run (see :func:`harness.job.resume`)."""
    from harness.job import resume as _resume

    return _resume(run_id, **kwargs)
