"""One experiment: spec -> data -> model -> trainer, tracked as one MLflow run; and ``resume`` of a stopped run.

Both read top-down: check the inputs and the store before anything exists, create (or re-open) the run, set it up,
train, finish. Whatever happens after the run exists, it ends with a status and a ``stop_reason``.
"""

from __future__ import annotations

import json
import platform
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from harness import collector
from harness.data.checks import validate_data
from harness.errors import UsageError
from harness.job.build import Built, build, load_source, step_cap
from harness.job.ddp import Announcer, follow
from harness.job.finetune import Lineage, resolve_init
from harness.job.finish import FinishSignals, finish
from harness.job.outcome import RunOutcome
from harness.job.records import describe
from harness.spec import Spec, flatten, read_yaml, spec_from_dict, spec_to_dict, spec_to_yaml
from harness.testing import faults
from harness.tracking import MlflowTracker, check_store, client_for, tracking_uri
from harness.tracking.liveness import owner_tags, reap_stale_runs, run_is_live
from harness.tracking.protocol import Tracker
from harness.tracking.records import DESCRIPTION, git_state
from harness.tracking.redact import redact_text
from harness.tracking.store import parse_store_url
from harness.tracking.tracker import staging_root
from harness.tracking.lookup import resolve_run_id
from harness.train.events import StopReason

if TYPE_CHECKING:
    from harness.train.distributed import Distributed

__all__ = ["load_run_spec", "resume", "run"]

Notify = Callable[[str], None]


def run(
    spec: Spec,
    *,
    uri: str | None = None,
    parent_run_id: str | None = None,
    tags: dict[str, str] | None = None,
    callbacks: list[Callable[[Any], None]] | None = None,
    on_start: Callable[[str], None] | None = None,
    progress: Any = None,
    run_id: str | None = None,
) -> RunOutcome:
    """Train ``spec`` as one MLflow run. Checks the spec's data, the device and the store before creating anything.

    ``on_start`` hears the run id as soon as the run exists. ``run_id`` adopts a run that was created but never set
    up (its process died first, see :func:`~harness.tracking.liveness.run_is_set_up`) instead of creating another."""
    if spec.is_sweep:
        raise UsageError("this spec has a sweep section; run it with harness.sweep.run_sweep (or `harness run`)")
    dist = _join_group(spec.train.device)
    if dist is not None and not dist.is_main:
        return follow(dist)
    announce = Announcer(dist)
    try:
        out = _run(spec, announce, uri=uri, parent_run_id=parent_run_id, tags=tags, callbacks=callbacks, on_start=on_start,
                   progress=progress, run_id=run_id)
    except BaseException as exc:
        announce.fail(exc)  # before the followers have the spec; later, torchrun stops them when this process exits
        raise
    if dist is not None:
        dist.stop()
    return out


def _join_group(device: str) -> Distributed | None:
    """Under torchrun: this process's rank, in the process group (joined here, by every rank); else None."""
    from harness.train import resolve_device
    from harness.train.distributed import Distributed

    dist = Distributed.from_env()
    if dist is not None:
        dist.start(resolve_device(device))
    return dist


def _run(spec: Spec, announce: Announcer, *, uri: str | None, parent_run_id: str | None, tags: dict[str, str] | None,
         callbacks: list[Callable[[Any], None]] | None, on_start: Callable[[str], None] | None, progress: Any,
         run_id: str | None) -> RunOutcome:
    from harness.train import resolve_device

    uri = tracking_uri(uri)
    check_store(uri)
    # finetuning: the source run is found and checked, its shape and tokenizer adopted, before anything is created
    spec, lineage = resolve_init(spec, uri=uri)
    validate_data(spec)
    resolve_device(spec.train.device)
    cap = step_cap()
    if announce.dist is not None:
        announce.dist.per_rank_batch(spec.train.batch_size)  # the global batch splits evenly over the ranks, or no run
    # The owner tags go on at creation, so a run whose process dies at any later moment is found and reaped.
    run_tags = {**spec.tracking.tags, **(tags or {}), "harness.spec_name": spec.name, **owner_tags(),
                **(lineage.tags() if lineage else {}), **({"harness.step_cap": str(cap)} if cap else {})}
    run_name = spec.tracking.run_name or spec.name
    if parse_store_url(uri).kind == "http":
        staging_root()  # checkpoints will be staged here: a folder that is not this user's own is refused before the run exists
    client = client_for(uri)
    reap_stale_runs(client)
    if run_id is not None:
        tracker = MlflowTracker.attach(client, run_id, tags=run_tags)
    else:
        tracker = MlflowTracker.start(client, experiment=spec.experiment, run_name=run_name, tags=run_tags, parent_run_id=parent_run_id)
    try:
        if on_start is not None:
            on_start(tracker.run_id)
        if announce.dist is not None:
            announce.send(spec, run_id=tracker.run_id, tokenizer=lineage.source.tokenizer if lineage else None)
        built = _set_up(spec, tracker, list(callbacks or []), progress, lineage, dist=announce.dist, tracker_tags=run_tags)
    except KeyboardInterrupt:
        _abandon_setup(tracker, created=run_id is None)
        raise
    except BaseException as exc:
        _end_failed(tracker, f"{type(exc).__name__}: {exc}")
        raise
    return _train(spec, tracker, built, resumed_from=None)


def _set_up(spec: Spec, tracker: Tracker, callbacks: list[Callable[[Any], None]], progress: Any,
            lineage: Lineage | None = None, *, dist: Distributed | None = None, tracker_tags: dict[str, str] | None = None) -> Built:
    """Build the trainer and record what the run is: runtime tags, a one-line description, the datasets (and the
    logged model it starts from), params, the resolved spec, the tokenizer (and a classifier's labels).

    spec.yaml goes last: a run that has it is set up and can be resumed."""
    tracker_tags = tracker_tags or {}
    built = build(spec, tracker, callbacks, progress=progress, init_state=lineage.state if lineage else None,
                  tokenizer=lineage.source.tokenizer if lineage else None, dist=dist)
    if progress is not None and hasattr(progress, "bind"):
        progress.bind(tracker.run_id)
    faults.point("run_setup")
    source = lineage.source if lineage else None
    shown_source = (f"model `{source.model_id}`" if source and source.from_model else f"run `{source.run_id[:8]}`" if source and source.run_id
                    else f"`{source.checkpoint.name}`" if source else None)
    description = describe(spec, built.facts, tracker_tags, shown_source)
    tracker.set_tags({**_runtime_tags(built.device), DESCRIPTION: description})
    tracker.log_inputs(built.datasets, models=[source.model_id] if source and source.model_id else [])
    params = {k: v for k, v in flatten(spec_to_dict(spec)).items() if not k.startswith("sweep")}
    if params.get("task.freeze", "") is None:  # unset: what it resolved to (a classifier on a pretrained body: its head only)
        params["task.freeze"] = spec.freezing
    tracker.log_params({**params, **{f"derived.{k}": v for k, v in built.facts.items()}, **(lineage.params() if lineage else {})})
    tracker.log_text(json.dumps(built.tokenizer.to_dict(), ensure_ascii=False), "tokenizer.json")
    if built.task is not None and built.task.labels:
        tracker.log_text(json.dumps(built.task.labels, ensure_ascii=False), "labels.json")  # label id -> label
    tracker.log_text(spec_to_yaml(spec), "spec.yaml")
    return built


def _abandon_setup(tracker: Tracker, *, created: bool) -> None:
    """Ctrl-C before training began: a run that cannot be resumed is not left behind. One this call created is deleted;
    one that is already set up (or adopted) ends KILLED/interrupted and `harness resume` continues it."""
    if created and tracker.delete_unless_set_up():
        return
    tracker.set_tags({"stop_reason": StopReason.INTERRUPTED.value})
    tracker.end("KILLED")


def _end_failed(tracker: Tracker, message: str) -> None:
    # redacted before the cut (the tracker redacts too, but a URL cut in half would no longer be recognised)
    tracker.set_tags({"stop_reason": StopReason.FAILED.value, "harness.message": redact_text(message)[:5000]})
    tracker.end("FAILED")


def _train(spec: Spec, tracker: Tracker, built: Built, *, resumed_from: str | None, notes: list[str] | None = None,
           resuming: bool = False) -> RunOutcome:
    """Train, and whatever happens, end the MLflow run with a status and a stop_reason. The machine's load (system
    metrics) is sampled while it trains."""
    from harness.train.checkpoint import CheckpointError

    collector.resume()  # start-up is over: see harness.collector
    with FinishSignals() as signals:  # a signal after training stops the finishing work: see FinishSignals
        try:
            tracker.start_system_metrics(resume=resuming)
            result = built.trainer.fit()
            tracker.stop_system_metrics()
        except KeyboardInterrupt:  # a second Ctrl-C: stop at once
            tracker.set_tags({"stop_reason": StopReason.INTERRUPTED.value})
            tracker.end("KILLED")
            raise
        except CheckpointError as exc:
            # e.g. the disk is full: the newest checkpoint on disk is intact, so the run can go on once that is fixed
            message = f"{exc}; run {tracker.run_id} stopped at step {built.trainer.step}; fix that, then run: harness resume {tracker.run_id}"
            _end_failed(tracker, message)
            raise CheckpointError(message) from None
        except BaseException as exc:
            try:
                _end_failed(tracker, f"{type(exc).__name__}: {exc}")
            except Exception:
                pass
            raise
        outcome = finish(spec, tracker, built, result, resumed_from=resumed_from, signals=signals)
    outcome.notes = list(notes or [])
    return outcome


def _runtime_tags(device: Any, *, git: bool = False) -> dict[str, str]:
    import torch

    from harness import __version__

    tags = {**owner_tags(), "harness.version": __version__, "device": str(device), "torch_version": torch.__version__,
            "python_version": platform.python_version()}
    if git:  # a resumed run may continue on another commit; a new run's git state was recorded when it was made
        tags.update(git_state())
    return tags


# ----------------------------------------------------------------------------------------------------------- resume


def load_run_spec(tracker: Tracker, tmp: Path) -> Spec:
    """The resolved spec a run stored as spec.yaml, read with the same hardened loader as a spec file."""
    path = tracker.download("spec.yaml", tmp)
    if not Path(path).is_file():
        raise UsageError(f"run {tracker.run_id} has no spec.yaml artifact: it was not made by harness, or its process died while "
                         "setting it up, before training began; start it again with `harness run`")
    name = f"run {tracker.run_id}: spec.yaml"
    return spec_from_dict(read_yaml(path, name=name), file=name)


def resume(run_id: str, *, uri: str | None = None, callbacks: list[Callable[[Any], None]] | None = None, progress: Any = None,
           allow_finished: bool = False, assume_dead: bool = False, notify: Notify | None = None) -> RunOutcome:
    """Continue a stopped run from its newest readable checkpoint, in the same MLflow run.

    ``notify`` hears, before training starts, what the user should know: the checkpoint it resumes from, fallbacks
    past damaged checkpoints, metrics replayed from an outage. The same lines are in the outcome's ``notes``."""
    dist = _join_group("auto")  # before the run's spec is read: the group's backend follows the machine (nccl with CUDA)
    if dist is not None and not dist.is_main:
        return follow(dist)
    announce = Announcer(dist)
    try:
        out = _resume(run_id, announce, uri=uri, callbacks=callbacks, progress=progress, allow_finished=allow_finished,
                      assume_dead=assume_dead, notify=notify)
    except BaseException as exc:
        announce.fail(exc)
        raise
    if dist is not None:
        dist.stop()
    return out


def _resume(run_id: str, announce: Announcer, *, uri: str | None, callbacks: list[Callable[[Any], None]] | None, progress: Any,
            allow_finished: bool, assume_dead: bool, notify: Notify | None) -> RunOutcome:
    uri = tracking_uri(uri)
    check_store(uri)
    client = client_for(uri)
    run_id = resolve_run_id(client, run_id, uri=uri) or run_id  # a short id, as the tables print it
    stored = _resumable_run(client, run_id, uri, allow_finished=allow_finished, assume_dead=assume_dead)
    with tempfile.TemporaryDirectory(prefix="harness-resume-") as tmp:
        spec = load_run_spec(MlflowTracker(client, run_id), Path(tmp))
        saved = _saved_data(spec, MlflowTracker(client, run_id), Path(tmp))
    tracker = MlflowTracker.attach(client, run_id, tags=owner_tags())
    notes: list[str] = []

    def say(line: str) -> None:
        notes.append(line)
        if notify is not None:
            notify(line)

    try:
        announce.send(spec, run_id=run_id, tokenizer=saved.get("tokenizer"), labels=saved.get("labels"), resuming=True)
        built, loaded = _restore(spec, tracker, list(callbacks or []), progress, say, saved, dist=announce.dist)
        tracker.set_tags({**_runtime_tags(built.device, git=True), "harness.resumes": str(int(stored.data.tags.get("harness.resumes", "0")) + 1)})
    except BaseException as exc:
        _end_failed(tracker, f"resume failed: {type(exc).__name__}: {exc}")
        raise
    return _train(spec, tracker, built, resumed_from=str(loaded) if loaded else None, notes=notes, resuming=True)


def _resumable_run(client: Any, run_id: str, uri: str, *, allow_finished: bool, assume_dead: bool) -> Any:
    """The stored run, after checking that it exists, has not finished, and no live process is training it."""
    from mlflow.exceptions import MlflowException

    try:
        client.get_run(run_id)
    except MlflowException:
        raise UsageError(f"no run with id '{run_id}' in the tracking store {uri}") from None
    reap_stale_runs(client)
    stored = client.get_run(run_id)
    if stored.info.status == "FINISHED" and not allow_finished:
        raise UsageError(f"run {run_id} already finished (stop_reason={stored.data.tags.get('stop_reason')}); there is nothing to resume")
    if not assume_dead and run_is_live(stored):
        raise UsageError(f"run {run_id} is still running (pid {stored.data.tags.get('harness.pid')}); stop it first")
    return stored


def _saved_data(spec: Spec, tracker: Tracker, tmp: Path) -> dict[str, Any]:
    """What a finetuned run rebuilds its data from on resume: its own copy of the source's tokenizer, and a
    classifier's label map (build's keyword arguments). A run trained from scratch rebuilds both from its data, but
    for a tiktoken ranks file: the run's saved copy of the ranks (the file may be gone, or different, here)."""
    from harness.data.tokenizers import tokenizer_from_dict

    saved: dict[str, Any] = {}
    if spec.init is not None or spec.data.tokenizer.path is not None:
        saved["tokenizer"] = tokenizer_from_dict(json.loads(Path(tracker.download("tokenizer.json", tmp)).read_text(encoding="utf-8")))
    if spec.task.kind == "classify":
        saved["labels"] = json.loads(Path(tracker.download("labels.json", tmp)).read_text(encoding="utf-8"))
    return saved


def _restore(spec: Spec, tracker: Tracker, callbacks: list[Callable[[Any], None]], progress: Any, say: Notify,
             saved: dict[str, Any], *, dist: Distributed | None = None) -> tuple[Built, Path | None]:
    """A trainer holding the newest readable checkpoint (fetched from the artifact store when it is not on this
    machine), with metrics that an outage left unwritten logged first. Without any usable checkpoint: a fresh
    trainer, and the run starts over in place (steps already logged are not logged again)."""
    from harness.train import seed_everything
    from harness.train.checkpoint import CheckpointError, load_checkpoint, resume_candidates

    built = build(spec, tracker, callbacks, progress=progress, dist=dist, **saved)
    if progress is not None and hasattr(progress, "bind"):
        progress.bind(tracker.run_id)
    ckpt_dir = built.trainer.checkpoint_dir
    problems: list[str] = []
    if tracker.local_artifacts is None and not resume_candidates(ckpt_dir):
        # A remote store and no local staging copy (another machine, or a cleaned temp dir): fetch the upload.
        try:
            got = Path(tracker.download("checkpoints/last.pt", ckpt_dir))
            if got.is_file() and got != ckpt_dir / "last.pt":  # where MLflow puts a downloaded file differs by version
                got.replace(ckpt_dir / "last.pt")
        except Exception as exc:
            detail = redact_text(str(exc).strip().splitlines()[0])[:200] if str(exc).strip() else type(exc).__name__
            problems.append(f"no checkpoint in {ckpt_dir} and none could be fetched from the tracking server ({detail})")
    for stray in ckpt_dir.glob(".*.tmp"):  # temp files of writes that a killed process never finished
        stray.unlink(missing_ok=True)
    replayed = tracker.replay_pending(ckpt_dir)
    if replayed:
        say(f"logged {replayed} metric points that could not be written before the run stopped")
    loaded: Path | None = None
    for candidate in resume_candidates(ckpt_dir):
        try:
            if dist is not None:
                load_checkpoint(candidate)  # readable? (the followers wait for the state of one that is)
            else:
                built.trainer.load(candidate)
            loaded = candidate
            break
        except CheckpointError as exc:
            problems.append(str(exc))
    if dist is not None:
        _share_start(spec, built, loaded, dist, uri=tracker.tracking_uri)
    if problems:
        tracker.set_tags({"harness.resume_warnings": redact_text(" | ".join(problems))[:5000]})
        for p in problems:
            say(f"warning: {p}" + ("; falling back to an earlier checkpoint" if loaded else ""))
    if loaded is None:
        say(f"warning: no usable checkpoint in {ckpt_dir}; starting over from step 0 in the same run"
            " (steps already logged are not logged again)")
        if dist is None:  # (under DDP the trainer just built is still untouched, on every rank)
            seed_everything(spec.seed)
            built = _rebuild_from_scratch(spec, tracker, callbacks, progress, saved)
    else:
        say(f"resuming from {loaded} (step {built.trainer.step})")
    tracker.set_tags({"harness.resumed_from_step": str(built.trainer.step)})
    return built, loaded


def _rebuild_from_scratch(spec: Spec, tracker: Tracker, callbacks: list[Callable[[Any], None]], progress: Any,
                          saved: dict[str, Any]) -> Built:
    """No usable checkpoint: the run starts over, from what it started from (a finetuned run: its source's weights)."""
    lineage = resolve_init(spec, uri=tracker.tracking_uri)[1] if spec.init is not None else None
    return build(spec, tracker, callbacks, progress=progress, init_state=lineage.state if lineage else None, **saved)


def _share_start(spec: Spec, built: Built, loaded: Path | None, dist: Distributed, *, uri: str) -> None:
    """DDP resume, rank 0: tell the followers what the run continues from, and send it (see ddp.follow): the
    checkpoint's whole state, or (no usable checkpoint) a finetuned run's source weights, or nothing (random weights,
    the same on every rank from the seed)."""
    if loaded is not None:
        dist.broadcast("checkpoint")
        built.trainer.load(loaded)  # reads it, and sends its state
    elif spec.init is not None:
        dist.broadcast("source")
        lineage = resolve_init(spec, uri=uri)[1]
        assert lineage is not None
        load_source(built.trainer.model, lineage.state, classify=spec.task.kind == "classify")
        dist.broadcast(built.trainer.model.state_dict())
    else:
        dist.broadcast("nothing")
