"""What a run's code (``harness.job``) may ask of the tracker that keeps its run: the one interface of that role.

Every tracker implements :class:`Tracker`, and ``harness.job`` is annotated with it, never with an implementation,
so the type checker (mypy, run by tests/test_types.py) finds a method one implementation lacks before a run does.
Implementations: :class:`~harness.tracking.tracker.MlflowTracker` (listed in :data:`IMPLEMENTATIONS`, which
tests/test_tracker_parity.py runs every task kind through and compares). A DDP follower rank has no tracker at all
(``None``): rank 0 keeps the run.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from harness.tracking.records import DatasetRecord, ModelRecord
from harness.tracking.tracker import MlflowTracker

__all__ = ["IMPLEMENTATIONS", "Tracker"]


class Tracker(Protocol):
    """One tracked run, open for writing. Metrics are buffered until a flush; every write that fails for good raises
    :class:`~harness.tracking.store.TrackingError`."""

    @property
    def run_id(self) -> str: ...

    @property
    def experiment_id(self) -> str: ...

    @property
    def tracking_uri(self) -> str:
        """The store the run lives in."""
        ...

    @property
    def local_artifacts(self) -> Path | None:
        """The run's artifact folder when it is on this machine, else None (a remote artifact store)."""
        ...

    offline: bool  # the store stayed unreachable: writes stop, metrics stay buffered (see spill)

    # -- metrics -------------------------------------------------------------------------------------------------------
    def log_metric(self, key: str, value: float, step: int) -> None: ...

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None: ...

    def maybe_flush(self) -> None:
        """Flush once enough points are buffered."""
        ...

    def flush(self) -> None: ...

    def log_model_metrics(self, metrics: Mapping[str, float], step: int, *, model_id: str, dataset: DatasetRecord | None = None) -> None:
        """Metrics that belong to a logged model (measured on ``dataset``), written at once."""
        ...

    def metric_history(self, key: str) -> list[tuple[int, float]]:
        """(step, value) of every stored point of ``key``, earlier sessions of a resumed run included."""
        ...

    def spill(self, folder: Path) -> int:
        """Write the buffered points to ``folder`` for a later :meth:`replay_pending`; returns how many."""
        ...

    def replay_pending(self, folder: Path) -> int:
        """Log the points a previous session spilled into ``folder``; returns how many."""
        ...

    # -- params, tags, artifacts ---------------------------------------------------------------------------------------
    def log_params(self, params: Mapping[str, Any]) -> None: ...

    def set_tags(self, tags: Mapping[str, Any]) -> None: ...

    def log_text(self, text: str, artifact_file: str) -> None: ...

    def log_figure(self, figure: Any, artifact_file: str) -> None: ...

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None: ...

    def download(self, artifact_path: str, dst: Path) -> Path: ...

    def checkpoint_dir(self) -> Path:
        """Where the run's trainer writes checkpoints."""
        ...

    # -- what the run used and made ------------------------------------------------------------------------------------
    def log_inputs(self, datasets: Sequence[DatasetRecord] = (), models: Sequence[str] = ()) -> None:
        """The datasets the run trained and was validated on, and the logged models (ids) it started from."""
        ...

    def log_model(self, model: ModelRecord) -> str:
        """A trained model as a logged model of this run, loadable by ``models:/<id>``; returns the id."""
        ...

    def start_system_metrics(self, *, resume: bool = False) -> bool:
        """Sample the machine (CPU, memory, GPUs) into ``system/*`` metrics while the run trains; True when on."""
        ...

    def stop_system_metrics(self) -> None: ...

    # -- the end -------------------------------------------------------------------------------------------------------
    def end(self, status: str) -> None:
        """Flush, then end the run with an MLflow status (FINISHED, FAILED, KILLED)."""
        ...

    def delete_unless_set_up(self) -> bool:
        """Delete the run if it never stored its spec.yaml (it could not be resumed); True when it did."""
        ...


IMPLEMENTATIONS: tuple[type, ...] = (MlflowTracker,)  # every Tracker there is (tests/test_tracker_parity.py runs each)


def _conforms(tracker: MlflowTracker) -> Tracker:  # checked by mypy: an implementation that drifts is a type error
    return tracker
