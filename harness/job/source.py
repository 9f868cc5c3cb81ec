"""A trained model to start from (``init.from``) or to sample from (``harness generate``): its checkpoint, the spec
and tokenizer saved with it, and which run it belongs to.

A target is a checkpoint file or a run's artifact/checkpoints folder (the spec and tokenizer are looked up beside
it), a run id or a unique prefix of one (a sweep's parent run means its best trial), an experiment name (its best
finished run), or an MLflow model URI: ``models:/<model id>`` (the logged model a finished run made), or a registered
model's ``models:/<name>/<version>`` or ``models:/<name>@<alias>``. A remote artifact store's files are downloaded once into a cache folder and read from there, so every
trial of a finetuning sweep shares the one copy; nothing is written to the source run.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.data.tokenizers import Tokenizer, tokenizer_from_dict
from harness.errors import HarnessError, SpecError, UsageError
from harness.spec import Spec, read_yaml, spec_from_dict

__all__ = ["MODELS", "TrainedModel", "find_model"]

MODELS = "models:/"  # MLflow's model URI scheme
MODEL_FILE = "model.pt"  # a logged model's weights (harness.job.records.model_folder writes it)


@dataclass(frozen=True)
class TrainedModel:
    checkpoint: Path
    spec: Spec  # the resolved spec the model was trained with
    tokenizer: Tokenizer
    run_id: str | None  # None for a checkpoint file given by path
    notes: list[str] = field(default_factory=list)  # how the target was resolved, fallbacks taken
    model_id: str | None = None  # the MLflow logged model these weights are (models:/<id>), when known

    @property
    def from_model(self) -> bool:
        """Named as a logged model (models:/...), not as a run or a file: its weights are the model's model.pt."""
        return self.model_id is not None and self.checkpoint.name == MODEL_FILE

    @property
    def reference(self) -> str:
        if self.from_model:
            return f"model {self.model_id}" + (f" (run {self.run_id})" if self.run_id else "")
        return f"run {self.run_id}" if self.run_id else str(self.checkpoint)


def find_model(target: str, *, checkpoint: str = "best", uri: str | None = None) -> TrainedModel:
    """The trained model ``target`` names (see the module doc); ``checkpoint`` is best or last (the other one is used,
    with a note, when the asked-for one is missing)."""
    if target.startswith(MODELS):
        return _from_logged_model(target, checkpoint, uri)
    path = Path(target).expanduser()
    if path.exists():
        return _from_path(path, checkpoint, [])
    return _from_store(target, checkpoint, uri)


# ----------------------------------------------------------------------------------------------------------- files


def _pick(folder: Path, checkpoint: str, notes: list[str], where: str) -> Path:
    want, other = f"{checkpoint}.pt", ("last.pt" if checkpoint == "best" else "best.pt")
    if (folder / want).is_file():
        return folder / want
    if (folder / other).is_file():
        notes.append(f"{where} has no {want}; using {other}")
        return folder / other
    present = sorted(p.name for p in folder.glob("*.pt")) if folder.is_dir() else []
    raise UsageError(f"{where} has no {want} or {other} checkpoint" + (f" (found: {', '.join(present)})" if present else ""))


def _beside(ckpt: Path, name: str) -> Path | None:
    for folder in (ckpt.parent, ckpt.parent.parent):
        if (folder / name).is_file():
            return folder / name
    return None


def _from_path(target: Path, checkpoint: str, notes: list[str], run_id: str | None = None) -> TrainedModel:
    if target.is_dir():
        folder = target / "checkpoints" if (target / "checkpoints").is_dir() else target
        ckpt = _pick(folder, checkpoint, notes, str(folder))
    else:
        ckpt = target
    spec_yaml, tok_json = _beside(ckpt, "spec.yaml"), _beside(ckpt, "tokenizer.json")
    if spec_yaml is None or tok_json is None:
        missing = " and ".join(n for n, p in (("spec.yaml", spec_yaml), ("tokenizer.json", tok_json)) if p is None)
        raise UsageError(f"{ckpt}: no {missing} next to it (looked in {ckpt.parent} and {ckpt.parent.parent}); "
                         "pass a run id, or keep the checkpoint inside its run's artifact folder")
    try:
        spec = spec_from_dict(read_yaml(spec_yaml), file=str(spec_yaml))
        tokenizer = tokenizer_from_dict(json.loads(tok_json.read_text(encoding="utf-8")))
    except (OSError, ValueError, SpecError) as exc:
        raise HarnessError(f"cannot read the spec or tokenizer next to {ckpt}: {exc}") from None
    return TrainedModel(ckpt, spec, tokenizer, run_id, notes)


# ----------------------------------------------------------------------------------------------------------- runs


def _from_store(target: str, checkpoint: str, uri: str | None) -> TrainedModel:
    from harness.tracking import check_store, client_for, tracking_uri
    from harness.tracking.store import require_store
    from harness.tracking.tracker import local_artifact_dir

    uri = tracking_uri(uri)
    require_store(uri)
    check_store(uri)
    client = client_for(uri)
    notes: list[str] = []
    run = _run_for(client, target, uri, notes)
    rid = run.info.run_id
    local = local_artifact_dir(run.info.artifact_uri)
    if local is not None:
        if not (local / "spec.yaml").is_file():
            raise UsageError(f"run {rid} has no spec.yaml artifact; it was not made by harness (or never got as far as training)")
        found = _from_path(local, checkpoint, notes, rid)
    else:
        found = _download(client, rid, checkpoint, notes, finished=run.info.status == "FINISHED")
    # The run's logged model holds its best weights: named as the source when those are the weights taken.
    outputs = getattr(getattr(run, "outputs", None), "model_outputs", None) or []
    if outputs and found.checkpoint.name == "best.pt":
        found = dataclasses.replace(found, model_id=outputs[-1].model_id)
    return found


# ----------------------------------------------------------------------------------------------------------- models


def _from_logged_model(target: str, checkpoint: str, uri: str | None) -> TrainedModel:
    """An MLflow logged model made by harness: its files (a folder beside the store, or downloaded once from a server
    into this user's cache, as a run's are). A logged model holds one set of weights: ``checkpoint`` does not apply."""
    from mlflow.exceptions import MlflowException

    from harness.tracking import check_store, client_for, tracking_uri
    from harness.tracking.redact import redact_url
    from harness.tracking.store import require_store
    from harness.tracking.tracker import local_artifact_dir

    uri = tracking_uri(uri)
    require_store(uri)
    check_store(uri)
    client = client_for(uri)
    ref = target[len(MODELS):].strip("/")
    notes: list[str] = []
    try:
        if "@" in ref:  # a registered model's alias
            name, alias = ref.split("@", 1)
            model_id = client.get_model_version_by_alias(name, alias).model_id
        elif "/" in ref:  # a registered model's version
            name, version = ref.rsplit("/", 1)
            model_id = client.get_model_version(name, version).model_id
        else:
            model_id = ref
        if not model_id:
            raise UsageError(f"{target} is a registered model version with no logged model behind it; harness reads logged models")
        model = client.get_logged_model(model_id)
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            raise UsageError(f"no model {target} in the tracking store {redact_url(uri)}") from None
        raise HarnessError(f"cannot look up {target} in {redact_url(uri)}: {_first_line(exc)}") from None
    status = str(getattr(model.status, "name", model.status))
    if not status.endswith("READY"):
        raise UsageError(f"{target} is not ready (status {status}): its run did not finish writing it")
    if checkpoint != "best":
        notes.append(f"{target} holds one set of weights (its run's {model.params.get('checkpoint', 'best.pt')}); "
                     f"the '{checkpoint}' checkpoint does not apply")
    local = local_artifact_dir(model.artifact_location)
    folder = local if local is not None else _download_model(model.artifact_location, model.model_id, uri)
    if not (folder / MODEL_FILE).is_file():
        raise UsageError(f"{target} has no {MODEL_FILE}: it was not made by harness")
    found = _from_path(folder / MODEL_FILE, checkpoint, notes, model.source_run_id or None)
    return dataclasses.replace(found, model_id=model.model_id)


def _download_model(location: str, model_id: str, uri: str) -> Path:
    """A ready logged model's files never change: downloaded once into this user's cache (see :func:`_download`)."""
    import mlflow.artifacts

    from harness.tracking.folders import private_folder, user_temp_folder
    from harness.tracking.store import local_lock

    root = private_folder(user_temp_folder("harness-models"), what="downloaded models",
                          instead="remove it, or set TMPDIR to a folder of your own")
    folder = root / model_id
    with local_lock(root / f".{model_id}.lock"):
        if not (folder / MODEL_FILE).is_file():
            with tempfile.TemporaryDirectory(dir=root) as tmp:
                try:
                    got = Path(mlflow.artifacts.download_artifacts(artifact_uri=location, dst_path=tmp, tracking_uri=uri))
                except Exception as exc:
                    raise HarnessError(f"cannot fetch model {model_id} from the tracking server: {_first_line(exc)}") from None
                if folder.exists():
                    import shutil

                    shutil.rmtree(folder)
                os.replace(got, folder)
    return folder


def _run_for(client: Any, target: str, uri: str, notes: list[str]) -> Any:
    """The run a target means: a run (id or prefix), a sweep parent's best trial, or an experiment's best run."""
    from mlflow.exceptions import MlflowException

    from harness.tracking.lookup import RUN_ID, resolve_run_id

    # A whole run id first, then an experiment's name (which may look like hex), then a run id prefix.
    exp = None if RUN_ID.match(target) else client.get_experiment_by_name(target)
    if exp is not None and exp.lifecycle_stage != "deleted":
        run = _best_run(client, exp)
        notes.append(f"experiment {target}: using its best finished run {run.info.run_id} ({run.info.run_name})")
    else:
        run_id = resolve_run_id(client, target, uri=uri)
        try:
            run = client.get_run(run_id) if run_id is not None else None
        except MlflowException:
            run = None
        if run is None:
            from harness.tracking.redact import redact_url

            if RUN_ID.match(target):
                raise UsageError(f"no run with id '{target}' in the tracking store {redact_url(uri)}")
            raise UsageError(f"'{target}' is neither a checkpoint file, nor a run id, nor an experiment in {redact_url(uri)}")
    if run.data.tags.get("harness.role") == "sweep":
        run = _best_trial(client, run, notes)
    return run


def _best_trial(client: Any, parent: Any, notes: list[str]) -> Any:
    """A sweep's best trial: the run its parent names (``harness.best_run_id``; a retried trial keeps its first
    attempt's run, so its trial number is not a safe key)."""
    best = parent.data.tags.get("harness.best_run_id")
    if not best:
        raise UsageError(f"run {parent.info.run_id} is a sweep's parent run with no best trial yet; pass a trial's run id")
    run = client.get_run(best)
    notes.append(f"run {parent.info.run_id} is a sweep; using its best trial {parent.data.tags.get('harness.best_trial')} (run {best})")
    return run


def _best_run(client: Any, exp: Any) -> Any:
    """The experiment's best finished training run: the highest best val accuracy where runs measure it, else the lowest
    best val loss (else best train loss)."""
    runs = [r for r in client.search_runs([exp.experiment_id], "attributes.status = 'FINISHED'", max_results=5000)
            if r.data.tags.get("harness.role") != "sweep"]
    for key, sign in (("summary/best_val_accuracy", -1.0), ("summary/best_val_loss", 1.0), ("summary/best_train_loss_eval", 1.0)):
        scored = [(sign * r.data.metrics[key], r.info.start_time, r) for r in runs if math.isfinite(r.data.metrics.get(key, math.nan))]
        if scored:
            return min(scored, key=lambda t: (t[0], -t[1]))[2]
    raise UsageError(f"experiment {exp.name} has no finished run to start from (run it first: harness run <its spec>)")


def _download(client: Any, rid: str, checkpoint: str, notes: list[str], *, finished: bool) -> TrainedModel:
    """The run's spec, tokenizer and checkpoint from a remote artifact store, into this user's cache folder (see
    harness.tracking.folders). A finished run's files never change, so they are downloaded once (whole files only: each
    lands under a temporary name and is renamed, under a lock, so concurrent trials share one download); a run still
    going is fetched afresh at every use, into the one folder it has beside them."""
    from harness.tracking.folders import private_folder, user_temp_folder
    from harness.tracking.store import local_lock

    try:
        names = {p.path for p in client.list_artifacts(rid, "checkpoints")}
    except Exception as exc:
        raise HarnessError(f"cannot list the checkpoints of run {rid} on the tracking server: {_first_line(exc)}") from None
    want = f"checkpoints/{checkpoint}.pt"
    other = "checkpoints/last.pt" if checkpoint == "best" else "checkpoints/best.pt"
    pick = want if want in names else other if other in names else None
    if pick is None:
        raise UsageError(f"run {rid} has no {want} or {other} artifact (checkpoint uploads are off, or it never saved one)")
    if pick != want:
        notes.append(f"run {rid} has no {want}; using {other}")
    root = private_folder(user_temp_folder("harness-models"), what="downloaded models",
                          instead="remove it, or set TMPDIR to a folder of your own")
    cache = root / (rid if finished else f"{rid}.running")
    with local_lock(root / f".{rid}.lock"):
        for name in ("spec.yaml", "tokenizer.json", pick):
            target = cache / name
            if finished and target.is_file():
                continue
            with tempfile.TemporaryDirectory(dir=root) as tmp:
                try:
                    got = Path(client.download_artifacts(rid, name, tmp))  # tmp/<name>, folders kept
                except Exception as exc:
                    raise HarnessError(f"cannot fetch {name} of run {rid} from the tracking server: {_first_line(exc)}") from None
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(got, target)
    return _from_path(cache / pick, checkpoint, notes, rid)


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__
