"""harness: YAML spec -> GPT training run tracked in MLflow, with Optuna sweeps.

Import what you need from the submodules' public names re-exported here::

    from harness import load_spec, run, resume
    from harness import results
"""

from __future__ import annotations

__version__ = "0.1.0"

from harness._errors import HarnessError, Issue, SpecError, UsageError
from harness._spec import Spec, load_spec

__all__ = ["HarnessError", "Issue", "Spec", "SpecError", "UsageError", "__version__", "load_spec", "resume", "run"]


def run(spec: Spec, **kwargs):  # type: ignore[no-untyped-def]
    """Train one spec (see :func:`harness._job.run`)."""
    from harness._job import run as _run

    return _run(spec, **kwargs)


def resume(run_id: str, **kwargs):  # type: ignore[no-untyped-def]
    """Continue a stopped run (see :func:`harness._job.resume`)."""
    from harness._job import resume as _resume

    return _resume(run_id, **kwargs)
