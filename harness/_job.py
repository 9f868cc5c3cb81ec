"""One experiment: spec -> data -> model -> trainer, tracked in MLflow. Also ``resume`` of a stopped run."""

from __future__ import annotations

import math
import os
import platform
import random
import socket
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from harness import _faults
from harness._corpus import Prepared, prepare
from harness._errors import UsageError
from harness._spec import Spec, flatten, spec_from_dict, spec_to_dict, spec_to_yaml
from harness._tracking import MlflowTracker, check_store, tracking_uri

__all__ = ["RunOutcome", "resume", "run"]

STATUS_FOR = {
    "completed": "FINISHED",
    "early_stopped": "FINISHED",
    "diverged": "FAILED",
    "failed": "FAILED",
    "crashed": "FAILED",
    "interrupted": "KILLED",
    "pruned": "KILLED",
}


@dataclass
class RunOutcome:
    """What a finished (or stopped) run reports back."""

    run_id: str
    experiment: str
    experiment_id: str
    tracking_uri: str
    status: str
    stop_reason: str
    steps: int
    epochs: int
    wall_time_s: float
    message: str = ""
    best_metric: float | None = None
    best_step: int | None = None
    watch: str = "val/loss"
    final: dict[str, float] = field(default_factory=dict)
    facts: dict[str, Any] = field(default_factory=dict)
    signal: int | None = None
    resumed_from: str | None = None
    grad: dict[str, float] = field(default_factory=dict)
    epoch_losses: list[float] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.status == "FINISHED"


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def _seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class _MetricLogger:
    """Trainer callback -> tracker metrics, flushed at every evaluation and checkpoint."""

    def __init__(self, tracker: MlflowTracker, *, upload_checkpoints: bool):
        self.tracker = tracker
        self.upload = upload_checkpoints and tracker.local_artifacts is None
        self.grad_norms: list[float] = []
        self.clipped = 0
        self.epoch_losses: list[float] = []
        self.initial_loss: float | None = None
        self.offline_error: str | None = None

    def __call__(self, event: Any) -> None:
        from harness._trainer import StopTraining
        from harness._tracking import TrackingError

        try:
            self._log(event)
        except TrackingError as exc:
            # The store went away and stayed away through the retries: stop cleanly. The trainer checkpoints,
            # the job spills the unwritten metrics next to the checkpoint, and `harness resume` logs them later.
            self.offline_error = str(exc)
            self.tracker.offline = True  # from now on metrics only accumulate in the buffer
            raise StopTraining("failed", f"tracking store unreachable: {exc}") from None

    def _log(self, event: Any) -> None:
        from harness._trainer import CheckpointSaved, EpochEnd, EvalEnd, StepEnd

        t = self.tracker
        if isinstance(event, StepEnd):
            if event.step == 0:
                self.initial_loss = event.loss
            t.log_metric("train/loss", event.loss, event.step)
            t.log_metric("lr", event.lr, event.step)
            if math.isfinite(event.grad_norm):
                t.log_metric("grad_norm", event.grad_norm, event.step)
                t.log_metric("clipped", float(event.clipped), event.step)
                t.log_metric("tokens_per_sec", event.tokens_per_sec, event.step)
                self.grad_norms.append(event.grad_norm)
                self.clipped += int(event.clipped)
            t.maybe_flush()
        elif isinstance(event, EvalEnd):
            t.log_metrics(event.metrics, event.step)
            t.flush()
        elif isinstance(event, EpochEnd):
            t.log_metric("train/loss_epoch", event.train_loss, event.step)
            t.log_metric("epoch", float(event.epoch), event.step)
            self.epoch_losses.append(event.train_loss)
        elif isinstance(event, CheckpointSaved):
            t.flush()
            if self.upload:
                t.log_artifact(event.path, "checkpoints")


def _facts(spec: Spec, prep: Prepared, n_params: int, steps_per_epoch: int, total_steps: int) -> dict[str, Any]:
    return {
        "vocab_size": prep.tokenizer.vocab_size,
        "ln_vocab": round(math.log(prep.tokenizer.vocab_size), 6),
        "n_parameters": n_params,
        "tokens_per_step": spec.train.batch_size * spec.data.seq_len,
        "windows_per_epoch": prep.train_examples,
        "val_windows": prep.val_examples,
        "steps_per_epoch": steps_per_epoch,
        "total_steps": total_steps,
        "train_tokens": prep.n_train_tokens,
        "val_tokens": prep.n_val_tokens,
        "corpus_chars": prep.n_chars,
        "truncated_documents": prep.truncated_documents,
    }


@dataclass
class _Built:
    prep: Prepared
    trainer: Any
    logger: _MetricLogger
    facts: dict[str, Any]
    device: Any


def _build(spec: Spec, tracker: MlflowTracker | None, callbacks: list[Callable[[Any], None]], *, progress: Any) -> _Built:
    """Data, model and trainer for ``spec``; deterministic given the seed."""
    import torch

    from harness._data import eval_batches, make_batches
    from harness._model import GPT
    from harness._trainer import Trainer, resolve_device

    device = resolve_device(spec.train.device)
    if spec.train.threads:
        torch.set_num_threads(spec.train.threads)
    prep = prepare(spec.data)
    _seed_everything(spec.seed)
    model = GPT(spec.model, vocab_size=prep.tokenizer.vocab_size, max_seq_len=spec.data.seq_len)
    batches = make_batches(prep, spec.data, batch_size=spec.train.batch_size, seed=spec.seed)
    evals = {"train": eval_batches(prep, spec.data, split="train", batch_size=spec.train.batch_size, n_batches=spec.train.eval.batches)}
    if spec.data.val_fraction > 0:
        evals["val"] = eval_batches(prep, spec.data, split="val", batch_size=spec.train.batch_size, n_batches=spec.train.eval.batches)
    logger = _MetricLogger(tracker, upload_checkpoints=spec.tracking.log_checkpoints) if tracker else None
    cbs: list[Callable[[Any], None]] = ([logger] if logger else []) + list(callbacks) + ([progress] if progress else [])
    ckpt_dir = tracker.checkpoint_dir() if tracker else Path(tempfile.mkdtemp(prefix="harness-ckpt-"))
    trainer = Trainer(model, spec.train, batches, eval_sets=evals, checkpoint_dir=ckpt_dir, device=device, callbacks=cbs,
                      meta={"seed": spec.seed, "name": spec.name})
    facts = _facts(spec, prep, model.num_parameters(), batches.steps_per_epoch, trainer.total_steps)
    if progress is not None and hasattr(progress, "set_total"):
        progress.set_total(trainer.total_steps)
    return _Built(prep, trainer, logger, facts, device)  # type: ignore[arg-type]


def _sample_text(spec: Spec, built: _Built) -> str:
    import torch

    tok = built.prep.tokenizer
    n = spec.tracking.sample_tokens
    if n <= 0:
        return ""
    if spec.tracking.sample_prompt:
        prompt = tok.encode(spec.tracking.sample_prompt)
    elif tok.bos_id is not None:
        prompt = np.array([tok.bos_id])
    else:
        prompt = built.prep.train[:1] if built.prep.train.ndim == 1 else built.prep.train[0, :1]
    g = torch.Generator().manual_seed(spec.seed)
    model = built.trainer.model
    model.eval()
    idx = torch.as_tensor(np.asarray(prompt, dtype=np.int64), device=built.device)[None, :]
    out = model.generate(idx, n, temperature=0.8, top_k=40, generator=g)
    return tok.decode(out[0].tolist())


def _finish(spec: Spec, tracker: MlflowTracker, built: _Built, result: Any, *, resumed_from: str | None) -> RunOutcome:
    """End-of-run artifacts, summary metrics, tags and status."""
    from harness import _plots

    trainer = built.trainer
    stop = result.stop_reason
    status = STATUS_FOR.get(stop, "FAILED")
    if built.logger.offline_error is not None:
        return _finish_offline(spec, tracker, built, result, resumed_from=resumed_from)
    tracker.flush()
    summary: dict[str, float] = {"summary/steps": float(result.steps), "summary/wall_time_s": result.wall_time_s}
    if result.best_metric is not None:
        summary[f"summary/best_{trainer.watch.replace('/', '_')}"] = result.best_metric
    for k, v in result.last_eval.items():
        summary[f"summary/final_{k.replace('/', '_')}"] = v
    if result.last_train_loss is not None:
        summary["summary/final_train_loss"] = result.last_train_loss
    grad = {}
    norms = built.logger.grad_norms
    if norms:
        grad = {"max": max(norms), "mean": sum(norms) / len(norms), "final": norms[-1], "clipped": float(built.logger.clipped),
                "steps": float(len(norms))}
    tracker.log_metrics(summary, result.steps)
    tracker.flush()
    tags = {"stop_reason": stop, "harness.steps": result.steps}
    facts = dict(built.facts)
    if built.logger.initial_loss is not None:
        facts["initial_loss"] = built.logger.initial_loss
        tags["harness.sanity"] = f"step-0 loss {built.logger.initial_loss:.4f} vs ln(vocab) {facts['ln_vocab']:.4f}"
    if result.message:
        tags["harness.message"] = result.message[:5000]
    tracker.set_tags(tags)
    with tempfile.TemporaryDirectory(prefix="harness-art-") as tmp:
        tmpd = Path(tmp)
        try:
            hist = {k: tracker.client.get_metric_history(tracker.run_id, k) for k in ("train/loss", "val/loss", "train/loss_eval", "grad_norm", "lr")}
            curves = {k: ([m.step for m in v], [m.value for m in v]) for k, v in hist.items() if v}
            png = tmpd / "loss_curve.png"
            _plots.loss_curve(curves, png, title=f"{spec.name} ({tracker.run_id[:8]})")
            tracker.log_artifact(png, "plots")
            if "grad_norm" in curves:
                gpng = tmpd / "grad_norm.png"
                _plots.grad_norm(curves["grad_norm"], gpng, clip=spec.train.clip_grad_norm, title=spec.name)
                tracker.log_artifact(gpng, "plots")
            if "lr" in curves:
                lpng = tmpd / "lr_schedule.png"
                _plots.lr_schedule(curves["lr"], lpng, title=spec.name)
                tracker.log_artifact(lpng, "plots")
        except Exception as exc:  # plots are a convenience: never lose a run's status over one
            tracker.set_tags({"harness.plot_error": str(exc)[:500]})
        if stop not in ("diverged", "failed"):
            sample = _sample_text(spec, built)
            if sample:
                tracker.log_text(sample, "sample.txt")
    if tracker.local_artifacts is None and spec.tracking.log_checkpoints:
        for name in ("last.pt", "best.pt"):
            p = trainer.checkpoint_dir / name
            if p.is_file():
                tracker.log_artifact(p, "checkpoints")
    tracker.end(status)
    return RunOutcome(
        run_id=tracker.run_id,
        experiment=spec.experiment,
        experiment_id=tracker.experiment_id,
        tracking_uri=tracker.client.tracking_uri if hasattr(tracker.client, "tracking_uri") else tracking_uri(),
        status=status,
        stop_reason=stop,
        steps=result.steps,
        epochs=result.epochs,
        wall_time_s=result.wall_time_s,
        message=result.message,
        best_metric=result.best_metric,
        best_step=result.best_step,
        watch=trainer.watch,
        final={**result.last_eval, **({"train/loss": result.last_train_loss} if result.last_train_loss is not None else {})},
        facts=facts,
        signal=result.signal,
        resumed_from=resumed_from,
        grad=grad,
        epoch_losses=list(built.logger.epoch_losses),
    )


def _finish_offline(spec: Spec, tracker: MlflowTracker, built: _Built, result: Any, *, resumed_from: str | None) -> RunOutcome:
    """The store is unreachable: keep what could not be written next to the checkpoint and say how to go on."""
    # The run stays RUNNING in the unreachable store; the next harness command there marks it crashed (dead pid).
    pending = tracker.spill(built.trainer.checkpoint_dir)
    message = (f"{result.message}; stopped at step {result.steps} with a checkpoint in {built.trainer.checkpoint_dir}"
               f" and {pending} unwritten metric points saved beside it; when the store is back, run: harness resume {tracker.run_id}")
    return RunOutcome(
        run_id=tracker.run_id, experiment=spec.experiment, experiment_id=tracker.experiment_id, tracking_uri=tracking_uri(),
        status="FAILED", stop_reason="failed", steps=result.steps, epochs=result.epochs, wall_time_s=result.wall_time_s,
        message=message, best_metric=result.best_metric, best_step=result.best_step, watch=built.trainer.watch,
        final=dict(result.last_eval), facts=dict(built.facts), resumed_from=resumed_from,
    )


def _runtime_tags(device: Any) -> dict[str, str]:
    import torch

    from harness import __version__

    tags = {
        "harness.version": __version__,
        "harness.pid": str(os.getpid()),
        "harness.host": socket.gethostname(),
        "device": str(device),
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
    }
    commit = _git_commit()
    if commit:
        tags["mlflow.source.git.commit"] = commit
        tags["git_commit"] = commit
    return tags


def _guarded(tracker: MlflowTracker, spec: Spec, built: _Built, *, resumed_from: str | None) -> RunOutcome:
    """Train, and whatever happens, end the MLflow run with a status and a stop_reason."""
    from harness._checkpoint import CheckpointError

    try:
        result = built.trainer.fit()
    except KeyboardInterrupt:
        tracker.set_tags({"stop_reason": "interrupted"})
        tracker.end("KILLED")
        raise
    except CheckpointError as exc:
        # e.g. the disk is full: the newest checkpoint on disk is intact, so the run can go on once that is fixed
        message = f"{exc}; run {tracker.run_id} stopped at step {built.trainer.step}; fix that, then run: harness resume {tracker.run_id}"
        tracker.set_tags({"stop_reason": "failed", "harness.message": message[:5000]})
        tracker.end("FAILED")
        raise CheckpointError(message) from None
    except BaseException as exc:
        try:
            tracker.set_tags({"stop_reason": "failed", "harness.message": f"{type(exc).__name__}: {exc}"[:5000]})
            tracker.end("FAILED")
        except Exception:
            pass
        raise
    return _finish(spec, tracker, built, result, resumed_from=resumed_from)


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
    """Train ``spec`` as one MLflow run. Checks the store before creating anything.

    ``on_start`` hears the run id as soon as the run exists. ``run_id`` adopts a run that was created but never set
    up (its process died first, see :func:`run_is_set_up`) instead of creating another one."""
    if spec.is_sweep:
        raise UsageError("this spec has a sweep section; run it with harness.sweep.run_sweep (or `harness run`)")
    uri = tracking_uri(uri)
    check_store(uri)
    from harness._trainer import resolve_device

    resolve_device(spec.train.device)  # fail before a run exists
    prepare(spec.data)
    client = MlflowTracker.client_for(uri)
    reap_stale_runs(client)
    # The owner tags go on at creation, so a run whose process dies at any later moment is found and reaped.
    run_tags = {**spec.tracking.tags, **(tags or {}), "harness.spec_name": spec.name, "harness.pid": str(os.getpid()),
                "harness.host": socket.gethostname()}
    if run_id is not None:
        tracker = MlflowTracker.attach(client, run_id)
        tracker.set_tags(run_tags)
    else:
        tracker = MlflowTracker.start(client, experiment=spec.experiment, run_name=spec.tracking.run_name or spec.name, tags=run_tags,
                                      parent_run_id=parent_run_id)
    try:
        if on_start is not None:
            on_start(tracker.run_id)
        _faults.point("run_setup")
        if progress is not None and hasattr(progress, "bind"):
            progress.bind(tracker.run_id)
        built = _build(spec, tracker, list(callbacks or []), progress=progress)
        tracker.set_tags(_runtime_tags(built.device))
        params = {**flatten(spec_to_dict(spec)), **{f"derived.{k}": v for k, v in built.facts.items()}}
        params.pop("sweep", None)
        tracker.log_params({k: v for k, v in params.items() if not k.startswith("sweep.")})
        tracker.log_text(spec_to_yaml(spec), "spec.yaml")
        tracker.log_text(_tokenizer_json(built.prep), "tokenizer.json")
    except KeyboardInterrupt:
        tracker.set_tags({"stop_reason": "interrupted"})
        tracker.end("KILLED")
        raise
    except BaseException as exc:
        tracker.set_tags({"stop_reason": "failed", "harness.message": f"{type(exc).__name__}: {exc}"[:5000]})
        tracker.end("FAILED")
        raise
    return _guarded(tracker, spec, built, resumed_from=None)


def _tokenizer_json(prep: Prepared) -> str:
    import json

    return json.dumps(prep.tokenizer.to_dict(), ensure_ascii=False)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def run_is_live(run: Any) -> bool:
    """A RUNNING run whose recorded process still exists on this host."""
    tags = run.data.tags
    if run.info.status != "RUNNING":
        return False
    host, pid = tags.get("harness.host"), tags.get("harness.pid")
    if host != socket.gethostname() or not pid or not pid.isdigit():
        return host is not None and host != socket.gethostname()  # another machine's run: assume live
    if int(pid) == os.getpid():
        return False  # this process left it RUNNING (e.g. the store went away) and is not training it now
    return pid_alive(int(pid))


def reap_stale_runs(client: Any) -> list[str]:
    """Runs still RUNNING whose harness process on this host is gone (kill -9, power loss) become FAILED with
    stop_reason=crashed. Returns their ids. Runs of other hosts are left alone."""
    host = socket.gethostname()
    try:
        exp_ids = [e.experiment_id for e in client.search_experiments()]
        if not exp_ids:
            return []
        running = client.search_runs(exp_ids, filter_string="attributes.status = 'RUNNING'", max_results=5000)
    except Exception:
        return []
    reaped = []
    for r in running:
        tags = r.data.tags
        pid = tags.get("harness.pid")
        if tags.get("harness.host") != host or not pid or not pid.isdigit() or int(pid) == os.getpid() or pid_alive(int(pid)):
            continue
        client.set_tag(r.info.run_id, "stop_reason", "crashed")
        client.set_terminated(r.info.run_id, status="FAILED")
        reaped.append(r.info.run_id)
    return reaped


def run_is_set_up(client: Any, run_id: str) -> bool:
    """Whether the run got as far as storing its spec.yaml: only then can it be resumed."""
    try:
        return any(a.path == "spec.yaml" for a in client.list_artifacts(run_id))
    except Exception:
        return True  # cannot tell: let resume try, and say what is wrong


def load_run_spec(tracker: MlflowTracker, tmp: Path) -> Spec:
    import yaml

    path = tracker.download("spec.yaml", tmp)
    if not Path(path).is_file():
        raise UsageError(f"run {tracker.run_id} has no spec.yaml artifact: it was not made by harness, or its process died while "
                         "setting it up, before training began; start it again with `harness run`")
    raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    return spec_from_dict(raw, file=f"run {tracker.run_id}: spec.yaml")


def resume(run_id: str, *, uri: str | None = None, callbacks: list[Callable[[Any], None]] | None = None, progress: Any = None,
           allow_finished: bool = False, assume_dead: bool = False) -> RunOutcome:
    """Continue a stopped run from its newest readable checkpoint, in the same MLflow run."""
    from harness._checkpoint import CheckpointError, resume_candidates

    uri = tracking_uri(uri)
    check_store(uri)
    client = MlflowTracker.client_for(uri)
    try:
        client.get_run(run_id)
    except Exception:
        raise UsageError(f"no run with id '{run_id}' in the tracking store {uri}") from None
    reap_stale_runs(client)
    run_info = client.get_run(run_id)
    stop = run_info.data.tags.get("stop_reason")
    if run_info.info.status == "FINISHED" and not allow_finished:
        raise UsageError(f"run {run_id} already finished (stop_reason={stop}); there is nothing to resume")
    if not assume_dead and run_is_live(run_info):
        raise UsageError(f"run {run_id} is still running (pid {run_info.data.tags.get('harness.pid')}); stop it first")
    tracker = MlflowTracker(client, run_id)
    with tempfile.TemporaryDirectory(prefix="harness-resume-") as tmp:
        spec = load_run_spec(tracker, Path(tmp))
    tracker = MlflowTracker.attach(client, run_id)
    try:
        built = _build(spec, tracker, list(callbacks or []), progress=progress)
        if progress is not None and hasattr(progress, "bind"):
            progress.bind(run_id)
        ckpt_dir = built.trainer.checkpoint_dir
        problems: list[str] = []
        if tracker.local_artifacts is None and not resume_candidates(ckpt_dir):
            # A remote store and no local staging copy (another machine, or a cleaned temp dir): fetch the upload.
            try:
                tracker.download("checkpoints/last.pt", ckpt_dir)
            except Exception as exc:
                problems.append(f"no checkpoint in {ckpt_dir} and none could be fetched from the tracking server"
                                f" ({str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__})")
        for stray in ckpt_dir.glob(".*.tmp"):  # temp files of writes that a killed process never finished
            stray.unlink(missing_ok=True)
        replayed = tracker.replay_pending(ckpt_dir)
        if replayed:
            print(f"logged {replayed} metric points that could not be written before the run stopped")
        loaded: Path | None = None
        for cand in resume_candidates(ckpt_dir):
            try:
                built.trainer.load(cand)
                loaded = cand
                break
            except CheckpointError as exc:
                problems.append(str(exc))
        tracker.set_tags({**_runtime_tags(built.device), "harness.resumes": str(int(run_info.data.tags.get("harness.resumes", "0")) + 1)})
        if problems:
            tracker.set_tags({"harness.resume_warnings": " | ".join(problems)[:5000]})
            for p in problems:
                print(f"warning: {p}" + ("; falling back to an earlier checkpoint" if loaded else ""))
        if loaded is None:
            # No usable checkpoint: start over inside the same run; the already-logged steps are skipped.
            print(f"warning: no usable checkpoint in {ckpt_dir}; starting over from step 0 in the same run"
                  " (steps already logged are not logged again)")
            _seed_everything(spec.seed)
            built = _build(spec, tracker, list(callbacks or []), progress=progress)
    except BaseException as exc:
        tracker.set_tags({"stop_reason": "failed", "harness.message": f"resume failed: {type(exc).__name__}: {exc}"[:5000]})
        tracker.end("FAILED")
        raise
    return _guarded(tracker, spec, built, resumed_from=str(loaded) if loaded else None)
