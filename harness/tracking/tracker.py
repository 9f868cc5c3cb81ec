"""One MLflow run, written through ``MlflowClient`` with explicit run ids (never the fluent run stack).

Metrics are buffered and written with ``log_batch``. After a resume, metric points at or below the last step already
stored for a key are dropped, so a replayed stretch of steps (bit-identical values) appears exactly once. Every write
goes through one retry layer (:meth:`MlflowTracker._retry`); MLflow's own HTTP retries are off (see
:func:`harness.tracking.store.client_for`).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Callable, TypeVar
from urllib.parse import unquote, urlparse

from harness.testing import faults
from harness.tracking.folders import private_folder, user_temp_folder
from harness.tracking.records import (DESCRIPTION, EXPERIMENT_KIND, TRAINING_KIND, DatasetRecord, ModelRecord, dataset_json, source_tags,
                                      system_metrics_enabled)
from harness.tracking.redact import redact_text, redact_value
from harness.tracking.store import TrackingError

__all__ = ["MlflowTracker", "PENDING", "checkpoint_dir_for", "local_artifact_dir", "retrying", "staging_root"]

T = TypeVar("T")
_PARAM_LIMIT = 6000
PENDING = "pending_metrics.jsonl"
# How the stores word a unique key that another writer took first (SQLite, PostgreSQL, MySQL; through a server too).
_DUPLICATE = ("UNIQUE constraint failed", "duplicate key value", "UniqueViolation", "Duplicate entry", "IntegrityError")
_TAG_LIMIT = 8000  # MLflow's longest tag value (a description longer than this is cut)
# System metrics: one sample (CPU, memory, disk, network, GPU with nvidia-ml-py) every this many seconds, unless
# MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL says otherwise. MLflow's default, 10 s, leaves a run of the quick start
# (about 20 s a trial) with one point or none; each sample is one read and one small write to the store.
SYSTEM_METRICS_INTERVAL_S = 5.0


def local_artifact_dir(artifact_uri: str) -> Path | None:
    """The folder a run's artifacts live in when it is on this machine (a path or ``file:`` URI), else None."""
    parsed = urlparse(artifact_uri)
    if parsed.scheme in ("", "file"):
        return Path(unquote(parsed.path))
    return None


def _artifact_location(tracking_uri: str, experiment: str) -> str | None:
    """A new experiment's artifacts, for a local SQLite store: ``<store folder>/<experiment>/`` next to the database,
    wherever the command runs (MLflow's default would be ``./mlruns`` in the working directory). Other stores decide
    for themselves (None)."""
    from harness.tracking.store import parse_store_url

    store = parse_store_url(tracking_uri)
    if store.kind != "sqlite" or store.path is None:
        return None
    folder = re.sub(r"[^A-Za-z0-9_.-]", "_", experiment)
    if not folder or folder.startswith(".") or folder == store.path.name:  # never "..", a hidden folder, or the database
        folder = "_" + folder
    return str(store.path.resolve().parent / folder)


def staging_root() -> Path:
    """Where checkpoints of runs on a remote artifact store are written before upload: ``$HARNESS_STAGING``, else this
    user's ``harness-staging-<uid>`` in the temp folder; checked to be this user's own (see harness.tracking.folders)."""
    given = os.environ.get("HARNESS_STAGING")
    return private_folder(Path(given) if given else user_temp_folder("harness-staging"), what="checkpoints before upload",
                          instead="set HARNESS_STAGING to a folder of your own")


def checkpoint_dir_for(run_id: str, local_artifacts: Path | None) -> Path:
    """Where a run's trainer writes checkpoints: inside the artifact folder when it is local, else a staging folder."""
    if local_artifacts is not None:
        return local_artifacts / "checkpoints"
    return staging_root() / run_id / "checkpoints"


def write_pending(folder: Path, points: list[tuple[str, float, int, int]]) -> int:
    """Append metric points (key, value, timestamp in ms, step) to ``folder/pending_metrics.jsonl``, for
    :meth:`MlflowTracker.replay_pending` to log later; returns how many."""
    if not points:
        return 0
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / PENDING, "a", encoding="utf-8") as fh:
        for key, value, timestamp, step in points:
            fh.write(json.dumps({"key": key, "value": value, "timestamp": timestamp, "step": step}) + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    return len(points)


def _transient(exc: Exception) -> bool:
    """Worth another try: anything but a request the store refused as invalid (a 4xx other than 429)."""
    from mlflow.exceptions import MlflowException

    if isinstance(exc, MlflowException):
        status = exc.get_http_status_code()
        return not (400 <= status < 500) or status == 429
    return True


def retrying(what: str, call: Callable[[], T], *, retries: int | None = None, backoff_s: float | None = None) -> T:
    """``call()``, tried again after a transient failure (doubling waits from ``backoff_s``, at most ``retries`` more
    times; defaults: $HARNESS_TRACKING_RETRIES or 5, $HARNESS_TRACKING_BACKOFF or 0.5 s). A failure that stays, or a
    request the store refuses, is a TrackingError that says what could not be done and why."""
    retries = retries if retries is not None else int(os.environ.get("HARNESS_TRACKING_RETRIES", "5"))
    delay = backoff_s if backoff_s is not None else float(os.environ.get("HARNESS_TRACKING_BACKOFF", "0.5"))
    for attempt in range(retries + 1):
        try:
            return call()
        except Exception as exc:  # MLflow raises many types for transport failures
            reason = redact_text(str(exc).splitlines()[0])[:300] if str(exc) else type(exc).__name__
            if not _transient(exc):
                raise TrackingError(f"could not {what}: the store refused it ({reason})") from None
            if attempt == retries:
                raise TrackingError(f"could not {what} after {retries + 1} attempts: {reason}") from None
            time.sleep(delay)
            delay = min(delay * 2, 30.0)
    raise AssertionError("unreachable: the last attempt returns or raises")


def _text_signature() -> Any:
    """A logged model's signature: prompts in, completions out, and harness generate's options as params (MLflow passes
    no params to predict unless the signature names them)."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

    params = ParamSchema([ParamSpec("max_tokens", "long", 200), ParamSpec("temperature", "double", 0.8), ParamSpec("top_k", "long", 40),
                          ParamSpec("seed", "long", 0)])
    return ModelSignature(inputs=Schema([ColSpec("string")]), outputs=Schema([ColSpec("string")]), params=params)


def _stored(value: Any, limit: int | None = None) -> str:
    """A tag or param value as stored: its secrets hidden (harness.tracking.redact) before it is cut to the store's
    limit, so no cut-off URL keeps a piece of a password."""
    return redact_text(str(value))[: limit or _TAG_LIMIT]


class MlflowTracker:
    """One MLflow run, written through MlflowClient with buffered metrics."""

    def __init__(self, client: Any, run_id: str, *, flush_every: int = 500, retries: int | None = None, backoff_s: float = 0.5):
        self.client = client
        self.run_id = run_id
        self.flush_every = flush_every
        self.retries = retries if retries is not None else int(os.environ.get("HARNESS_TRACKING_RETRIES", "5"))
        self.backoff_s = float(os.environ.get("HARNESS_TRACKING_BACKOFF", backoff_s))
        self._buffer: list[Any] = []
        self.offline = False  # set when the store stayed unreachable: stop talking to it, keep buffering
        self._skip: dict[str, int] = {}
        run = client.get_run(run_id)
        self.experiment_id: str = run.info.experiment_id
        self.artifact_uri: str = run.info.artifact_uri
        self.local_artifacts = local_artifact_dir(self.artifact_uri)
        self.tracking_uri = str(client.tracking_uri)
        self._monitor: Any = None  # MLflow's SystemMetricsMonitor while the run trains

    # -- construction ----------------------------------------------------------------------------------------------
    @classmethod
    def ensure_experiment(cls, client: Any, name: str) -> str:
        """The experiment's id; created when it does not exist, marked as a model-training experiment (the MLflow UI's
        kind) with a one-line description. An existing experiment, a user's own included, is left as it is."""
        exp = client.get_experiment_by_name(name)
        if exp is not None:
            if exp.lifecycle_stage == "deleted":
                client.restore_experiment(exp.experiment_id)
            return exp.experiment_id
        tags = {EXPERIMENT_KIND: TRAINING_KIND, DESCRIPTION: f"Training runs made by harness (experiment `{name}`)."}
        try:
            return client.create_experiment(name, artifact_location=_artifact_location(str(client.tracking_uri), name), tags=tags)
        except Exception:  # another process created it between our two calls
            exp = client.get_experiment_by_name(name)
            if exp is None:
                raise
            return exp.experiment_id

    @classmethod
    def start(cls, client: Any, *, experiment: str, run_name: str, tags: Mapping[str, str] | None = None, parent_run_id: str | None = None) -> MlflowTracker:
        exp_id = cls.ensure_experiment(client, experiment)
        # MLflow's source tags (the UI's Source column): this process's command and git state; a sweep's trial names
        # the command that started the sweep (its worker process has no command of its own).
        all_tags = source_tags()
        if parent_run_id:
            parent = client.get_run(parent_run_id).data.tags
            all_tags.update({k: parent[k] for k in ("mlflow.source.name", "mlflow.source.type") if k in parent})
            all_tags["mlflow.parentRunId"] = parent_run_id
        all_tags.update(tags or {})
        run = client.create_run(exp_id, run_name=run_name, tags={k: _stored(v) for k, v in all_tags.items()})
        return cls(client, run.info.run_id)

    @classmethod
    def attach(cls, client: Any, run_id: str, *, tags: Mapping[str, str] | None = None) -> MlflowTracker:
        """Re-open an existing run; metric points already stored are not written again. ``tags`` (the new owner's)
        are written before the run is marked RUNNING again, so no reaper ever sees it RUNNING under a dead owner."""
        tracker = cls(client, run_id)
        if tags:
            tracker.set_tags(tags)
        run = client.get_run(run_id)
        if run.info.status != "RUNNING":
            client.update_run(run_id, status="RUNNING")
        for key in run.data.metrics:
            history = client.get_metric_history(run_id, key)
            if history:
                tracker._skip[key] = max(m.step for m in history)
        return tracker

    # -- writing ---------------------------------------------------------------------------------------------------
    def _retry(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        return retrying(what, functools.partial(fn, *args, **kwargs), retries=self.retries, backoff_s=self.backoff_s)

    def log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        existing = self.client.get_run(self.run_id).data.params
        items = [Param(k, _stored(v, _PARAM_LIMIT)) for k, v in params.items() if k not in existing]
        for i in range(0, len(items), 100):
            self._retry("log params", self.client.log_batch, self.run_id, params=items[i : i + 100])

    def log_metric(self, key: str, value: float, step: int) -> None:
        from mlflow.entities import Metric

        if step <= self._skip.get(key, -1):
            return
        self._buffer.append(Metric(key, float(value), int(time.time() * 1000), int(step)))

    def log_model_metrics(self, metrics: Mapping[str, float], step: int, *, model_id: str, dataset: DatasetRecord | None = None) -> None:
        """Metrics of the run that belong to a logged model (its page lists them), measured on ``dataset``; written now."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        linked = {"dataset_name": dataset.name, "dataset_digest": dataset.digest} if dataset is not None else {}
        items = [Metric(k, float(v), now, int(step), model_id=model_id, **linked) for k, v in metrics.items() if step > self._skip.get(k, -1)]
        self.flush()
        if items and not self.offline:
            self._retry("write model metrics", self.client.log_batch, self.run_id, metrics=items)

    def maybe_flush(self) -> None:
        """Flush once enough points are buffered (call between events, so an event's points go together)."""
        if len(self._buffer) >= self.flush_every:
            self.flush()

    def spill(self, folder: Path) -> int:
        """Write the unflushed metrics to ``folder/pending_metrics.jsonl`` (appending); returns how many."""
        self.stop_system_metrics()  # the store is away: the monitor's writes would fail too
        n = write_pending(folder, [(m.key, m.value, m.timestamp, m.step) for m in self._buffer])
        self._buffer.clear()
        return n

    def replay_pending(self, folder: Path) -> int:
        """Log metrics a previous session could not write (see spill), then remove the file. Returns how many."""
        from mlflow.entities import Metric

        path = folder / PENDING
        if not path.is_file():
            return 0
        n = 0
        for line in path.read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            try:
                d = json.loads(line)
            except json.JSONDecodeError:
                continue  # a torn last line from a crash mid-write
            if d["step"] > self._skip.get(d["key"], -1):
                self._buffer.append(Metric(d["key"], float(d["value"]), int(d["timestamp"]), int(d["step"])))
                n += 1
        replayed: dict[str, int] = {}
        for m in self._buffer:
            replayed[m.key] = max(replayed.get(m.key, -1), m.step)
        self.flush()
        if self.offline:
            return 0  # still unreachable: the file stays for the next resume
        path.unlink()
        # A resume from an earlier checkpoint replays those steps again: they are stored now, so they are skipped.
        for key, step in replayed.items():
            self._skip[key] = max(self._skip.get(key, -1), step)
        return n

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        for k, v in metrics.items():
            self.log_metric(k, v, step)

    def metric_history(self, key: str) -> list[tuple[int, float]]:
        return [(m.step, m.value) for m in self.client.get_metric_history(self.run_id, key)]

    def flush(self) -> None:
        if self.offline:
            return
        while self._buffer:
            chunk = self._buffer[:1000]
            self._retry("write metrics", self.client.log_batch, self.run_id, metrics=chunk)
            del self._buffer[: len(chunk)]
            faults.point("flush")

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        from mlflow.entities import RunTag

        if self.offline:
            return
        items = [RunTag(k, _stored(v)) for k, v in tags.items()]
        if items:
            self._retry("set tags", self.client.log_batch, self.run_id, tags=items)

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        """Upload a file, unless it already lives in this run's local artifact folder."""
        if self.offline:
            return
        if self.local_artifacts is not None:
            dest = self.local_artifacts / (artifact_path or "") / Path(path).name
            if Path(path).resolve() == dest.resolve():
                return
        self._retry("upload an artifact", self.client.log_artifact, self.run_id, str(path), artifact_path)

    def log_text(self, text: str, artifact_file: str) -> None:
        """A text artifact (spec.yaml, trials.csv) straight from memory, without the secrets in it."""
        self._retry("upload an artifact", self.client.log_text, self.run_id, redact_text(text), artifact_file)

    def log_dict(self, data: Any, artifact_file: str) -> None:
        """A JSON (or, by suffix, YAML) artifact straight from memory, every string in it redacted."""
        self._retry("upload an artifact", self.client.log_dict, self.run_id, redact_value(data), artifact_file)

    def log_figure(self, figure: Any, artifact_file: str) -> None:
        """A matplotlib figure saved as an artifact straight from memory."""
        self._retry("upload an artifact", self.client.log_figure, self.run_id, figure, artifact_file)

    def log_inputs(self, datasets: Sequence[DatasetRecord] = (), models: Sequence[str] = ()) -> None:
        """The datasets the run used (each with its context: train or validation) and the logged models it started
        from: the runs table's Dataset column and the run page's inputs. Logging one again changes nothing."""
        from mlflow.entities import Dataset, DatasetInput, InputTag, LoggedModelInput

        if self.offline or not (datasets or models):
            return
        inputs = [DatasetInput(Dataset(d.name, d.digest, d.source_type, dataset_json(d.source), dataset_json(d.schema), dataset_json(d.profile)),
                               tags=[InputTag("mlflow.data.context", d.context)]) for d in datasets]
        self._log_inputs(inputs, [LoggedModelInput(m) for m in models])

    def _log_inputs(self, datasets: list[Any], models: list[Any]) -> None:
        """``log_inputs``, again when another run stored the same dataset first: MLflow looks a dataset up, then
        inserts it, so runs that start together on the same data (a sweep's trials) collide on the store's unique key.
        The next attempt finds the dataset the other run stored, and links it."""
        for attempt in range(5):
            try:
                self._retry("log the run's inputs", self.client.log_inputs, self.run_id, datasets=datasets or None, models=models or None)
                return
            except TrackingError as exc:
                if attempt == 4 or not any(m in str(exc) for m in _DUPLICATE):
                    raise

    def adopt_records(self, run_id: str) -> None:
        """Another run's datasets and logged models, recorded on this one too: a sweep's run lists its best trial's
        data (the runs table's Dataset column) and model (its outputs; the model stays its trial's, and the Models
        column, which lists the models a run made, stays empty)."""
        from mlflow.entities import DatasetInput, LoggedModelOutput

        if self.offline:
            return
        other = self._retry("read a run's inputs", self.client.get_run, run_id)
        mine = self._retry("read a run's outputs", self.client.get_run, self.run_id)
        have = {o.model_id for o in mine.outputs.model_outputs} if mine.outputs else set()  # a model links to a run once
        datasets = [DatasetInput(d.dataset, tags=list(d.tags)) for d in other.inputs.dataset_inputs] if other.inputs else []
        models = [LoggedModelOutput(o.model_id, o.step) for o in other.outputs.model_outputs if o.model_id not in have] if other.outputs else []
        if datasets:
            self._log_inputs(datasets, [])
        if models:
            self._retry("link a model to the run", self.client.log_outputs, self.run_id, models)

    def log_model(self, model: ModelRecord) -> str:
        """``model.folder`` as an MLflow logged model of this run (MLflow 3): its files, an MLmodel file whose
        python_function flavor loads it (``mlflow.pyfunc.load_model("models:/<id>")``), its params and tags, its
        metrics (linked to the model and its dataset), and the run's output. Returns the model id.

        No requirements are inferred (MLflow's inference imports the model's code and resolves every package: seconds
        per run); the model names harness as its loader instead."""
        import platform

        from mlflow.entities import LoggedModelOutput
        from mlflow.models import Model

        created = self._retry("create the logged model", self.client.create_logged_model, self.experiment_id, name=model.name,
                              source_run_id=self.run_id, tags=dict(model.tags), params=dict(model.params), model_type=model.model_type)
        model_id = created.model_id
        try:
            mlmodel = Model(artifact_path=model.name, run_id=self.run_id, model_id=model_id, signature=_text_signature())
            # The python_function flavor as mlflow.pyfunc.add_to_model writes it; importing mlflow.pyfunc for that would
            # cost a second and raise a warning of MLflow's own at import.
            mlmodel.add_flavor("python_function", loader_module=model.loader_module, python_version=platform.python_version(),
                               data=model.weights)
            mlmodel.save(str(model.folder / "MLmodel"))
            self._retry("upload the model's files", self.client.log_model_artifacts, model_id, str(model.folder))
            if model.metrics:
                self.log_model_metrics(model.metrics, model.step, model_id=model_id, dataset=model.dataset)
            self._retry("link the model to its run", self.client.log_outputs, self.run_id, [LoggedModelOutput(model_id, model.step)])
            self._retry("finalize the logged model", self.client.finalize_logged_model, model_id, "READY")
        except BaseException:
            try:
                self.client.finalize_logged_model(model_id, "FAILED")
            except Exception:
                pass  # the store is gone: the model stays PENDING, which the UI shows as not ready
            raise
        return model_id

    # -- system metrics --------------------------------------------------------------------------------------------
    def start_system_metrics(self, *, resume: bool = False) -> bool:
        """Sample CPU, memory, disk, network (and GPUs, with nvidia-ml-py) into ``system/*`` metrics while the run
        trains, with MLflow's own SystemMetricsMonitor on a thread of this process. Off when
        MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING is false, or without psutil (which MLflow needs for it). True when on."""
        if self._monitor is not None or self.offline or not system_metrics_enabled():
            return self._monitor is not None
        try:
            from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor
        except ImportError:  # psutil is missing
            return False
        # Its INFO lines (started, stopped) and warnings (the store went away: the run's own writes say so) are noise
        # on the run's terminal.
        logging.getLogger("mlflow.system_metrics").setLevel(logging.ERROR)
        interval = float(os.environ.get("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL") or SYSTEM_METRICS_INTERVAL_S)
        self._monitor = SystemMetricsMonitor(self.run_id, sampling_interval=interval, resume_logging=resume, tracking_uri=self.tracking_uri)
        self._monitor.start()
        return True

    def stop_system_metrics(self) -> None:
        """Stop sampling (waits for the monitor's thread; its samples are written). Safe to call when not started."""
        monitor, self._monitor = self._monitor, None
        if monitor is not None:
            monitor.finish()

    def download(self, artifact_path: str, dst: Path) -> Path:
        if self.local_artifacts is not None:
            return self.local_artifacts / artifact_path
        dst.mkdir(parents=True, exist_ok=True)
        return Path(self._retry("download an artifact", self.client.download_artifacts, self.run_id, artifact_path, str(dst)))

    def end(self, status: str) -> None:
        self.stop_system_metrics()
        self.flush()
        self._retry("end the run", self.client.set_terminated, self.run_id, status=status)

    def checkpoint_dir(self) -> Path:
        return checkpoint_dir_for(self.run_id, self.local_artifacts)

    def delete_unless_set_up(self) -> bool:
        """Delete the run if it never stored its spec.yaml (see run_is_set_up): it could not be resumed."""
        from harness.tracking.liveness import run_is_set_up

        if run_is_set_up(self.client, self.run_id, unknown=False):
            return False
        self.client.set_terminated(self.run_id, status="KILLED")
        self.client.delete_run(self.run_id)
        return True
