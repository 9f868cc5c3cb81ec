"""Trainer pieces without MLflow: LR schedules, gradient clipping, checkpoint files and bit-identical resume."""

from __future__ import annotations

import copy
import math
import pickle
import random
from pathlib import Path

import pytest
import torch

from harness.data.batches import eval_batches, make_batches
from harness.data.prepare import prepare
from harness.model import GPT
from harness.spec import TrainSpec, spec_from_dict
from harness.train import EpochEnd, EvalEnd, StepEnd, StopTraining, Trainer, lr_lambda
from harness.train.checkpoint import CheckpointError, load_checkpoint, periodic_name, resume_candidates, save_checkpoint

# ----------------------------------------------------------------------------------------------------------- helpers


def _train_spec(**kw) -> TrainSpec:
    base = {"max_steps": 100, "batch_size": 4, "optimizer": {"name": "adamw", "lr": 1.0e-2}}
    base.update(kw)
    return TrainSpec.model_validate(base)


def _build(spec_dict: dict, ckpt_dir: Path, callbacks=(), init_seed: int | None = None, step_cap: int | None = None) -> Trainer:
    """Data, model and trainer for a spec dict, as harness.job.build.build does it but without MLflow."""
    spec = spec_from_dict(spec_dict)
    prep = prepare(spec.data)
    torch.manual_seed(spec.seed if init_seed is None else init_seed)
    model = GPT(spec.model, vocab_size=prep.tokenizer.vocab_size, max_seq_len=spec.data.seq_len)
    batches = make_batches(prep, spec.data, batch_size=spec.train.batch_size, seed=spec.seed)
    kw = {"batch_size": spec.train.batch_size, "n_batches": spec.train.eval.batches}
    evals = {"train": eval_batches(prep, spec.data, split="train", **kw), "val": eval_batches(prep, spec.data, split="val", **kw)}
    return Trainer(model, spec.train, batches, eval_sets=evals, checkpoint_dir=ckpt_dir, device=torch.device("cpu"),
                   callbacks=list(callbacks), step_cap=step_cap)


class _Collect:
    def __init__(self, kind=StepEnd):
        self.kind = kind
        self.events = []

    def __call__(self, event):
        if isinstance(event, self.kind):
            self.events.append(event)


# ----------------------------------------------------------------------------------------------------------- LR schedules


def test_lr_constant():
    f = lr_lambda(_train_spec(schedule={"name": "constant"}), 100)
    assert [f(s) for s in (0, 1, 50, 99, 100)] == [1.0] * 5


def test_lr_constant_with_warmup():
    f = lr_lambda(_train_spec(schedule={"name": "constant", "warmup_steps": 4}), 100)
    assert [f(s) for s in range(6)] == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0, 1.0])


def test_lr_linear():
    spec = _train_spec(optimizer={"lr": 1.0e-2}, schedule={"name": "linear", "min_lr": 1.0e-3})
    f = lr_lambda(spec, 100)
    floor = 0.1
    assert f(0) == pytest.approx(1.0)
    assert f(50) == pytest.approx((1.0 + floor) / 2)
    assert f(25) == pytest.approx(floor + 0.75 * (1 - floor))
    assert f(100) == pytest.approx(floor)
    assert f(150) == pytest.approx(floor)  # never below the floor
    values = [f(s) for s in range(101)]
    assert all(a > b for a, b in zip(values, values[1:]))


def test_lr_warmup_cosine():
    spec = _train_spec(optimizer={"lr": 1.0e-2}, schedule={"name": "warmup_cosine", "warmup_steps": 10, "min_lr": 1.0e-3})
    f = lr_lambda(spec, 110)
    floor = 0.1
    # warmup: linear from lr/warmup to lr
    assert f(0) == pytest.approx(0.1)
    assert f(4) == pytest.approx(0.5)
    assert f(9) == pytest.approx(1.0)
    # peak at the end of warmup, then cosine to the floor
    assert f(10) == pytest.approx(1.0)
    assert f(60) == pytest.approx(floor + (1 - floor) * 0.5)  # middle of the decay
    assert f(35) == pytest.approx(floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * 0.25)))
    assert f(110) == pytest.approx(floor)  # final
    assert f(500) == pytest.approx(floor)
    decay = [f(s) for s in range(10, 111)]
    assert all(a > b for a, b in zip(decay, decay[1:]))
    assert min(f(s) for s in range(200)) >= floor - 1e-12


def test_lr_schedule_drives_the_optimizer(tmp_path, tiny_spec_dict):
    tiny_spec_dict["train"]["schedule"] = {"name": "warmup_cosine", "warmup_steps": 2, "min_lr": 1.0e-4}
    steps = _Collect()
    result = _build(tiny_spec_dict, tmp_path / "ck", [steps]).fit()
    assert result.stop_reason == "completed" and result.steps == 6
    f = lr_lambda(spec_from_dict(tiny_spec_dict).train, 6)
    assert [e.lr for e in steps.events] == pytest.approx([1.0e-3 * f(s) for s in range(6)])
    assert [e.step for e in steps.events] == list(range(6))


# ----------------------------------------------------------------------------------------------------------- clipping


def _first_grad_norm(spec_dict: dict) -> float:
    """The unclipped global gradient norm of the first training batch under the initial weights."""
    spec = spec_from_dict(spec_dict)
    prep = prepare(spec.data)
    torch.manual_seed(spec.seed)
    model = GPT(spec.model, vocab_size=prep.tokenizer.vocab_size, max_seq_len=spec.data.seq_len)
    x, y = make_batches(prep, spec.data, batch_size=spec.train.batch_size, seed=spec.seed).next()
    loss = torch.nn.functional.cross_entropy(model(x).reshape(-1, prep.tokenizer.vocab_size), y.reshape(-1))
    loss.backward()
    return math.sqrt(sum(float(p.grad.pow(2).sum()) for p in model.parameters() if p.grad is not None))


def test_clipping_logs_pre_clip_norm(tmp_path, tiny_spec_dict):
    tiny_spec_dict["train"]["clip_grad_norm"] = 1.0e-3
    steps = _Collect()
    _build(tiny_spec_dict, tmp_path / "ck", [steps]).fit()
    assert len(steps.events) == 6
    for e in steps.events:
        assert e.grad_norm > 1.0e-3  # a post-clip norm could never exceed the clip
        assert e.clipped is True
    assert steps.events[0].grad_norm == pytest.approx(_first_grad_norm(tiny_spec_dict), rel=1e-5)


def test_clipped_flag_matches_norm(tmp_path, tiny_spec_dict):
    # a clip between the smallest and largest norm of the run: the flag must follow norm > clip step by step
    probe = _Collect()
    _build(tiny_spec_dict, tmp_path / "a", [probe]).fit()
    norms = sorted(e.grad_norm for e in probe.events)
    clip = (norms[1] + norms[-2]) / 2
    tiny_spec_dict["train"]["clip_grad_norm"] = clip
    steps = _Collect()
    _build(tiny_spec_dict, tmp_path / "b", [steps]).fit()
    flags = [e.clipped for e in steps.events]
    assert flags == [e.grad_norm > clip for e in steps.events]
    assert any(flags) and not all(flags)


def test_no_clip_never_flags(tmp_path, tiny_spec_dict):
    steps = _Collect()
    _build(tiny_spec_dict, tmp_path / "ck", [steps]).fit()
    assert all(e.clipped is False for e in steps.events)
    assert all(math.isfinite(e.grad_norm) and e.grad_norm > 0 for e in steps.events)
    assert steps.events[0].grad_norm == pytest.approx(_first_grad_norm(tiny_spec_dict), rel=1e-5)


def test_no_clip_trains_exactly_like_a_clip_that_never_bites(tmp_path, tiny_spec_dict):
    # without a clip the trainer only computes the norm; with a clip far above every norm it also rescales by 1.0.
    # Both must log the same norms and losses and end with bit-identical weights.
    runs = []
    for name, clip in (("none", None), ("huge", 1.0e9)):
        tiny_spec_dict["train"]["clip_grad_norm"] = clip
        steps = _Collect()
        trainer = _build(tiny_spec_dict, tmp_path / name, [steps])
        trainer.fit()
        runs.append(([(e.loss, e.grad_norm) for e in steps.events], [p.detach().clone() for p in trainer.model.parameters()]))
    (events_a, weights_a), (events_b, weights_b) = runs
    assert events_a == events_b and len(events_a) == 6
    assert all(torch.equal(a, b) for a, b in zip(weights_a, weights_b))


def test_clipping_limits_the_update(tmp_path, tiny_spec_dict):
    # plain SGD: the update is exactly lr * clipped gradient, so its norm is lr * clip
    tiny_spec_dict["train"].update(max_steps=1, clip_grad_norm=1.0e-3, optimizer={"name": "sgd", "lr": 1.0})
    trainer = _build(tiny_spec_dict, tmp_path / "ck")
    before = [p.detach().clone() for p in trainer.model.parameters()]
    trainer.fit()
    delta = math.sqrt(sum(float((p.detach() - b).pow(2).sum()) for p, b in zip(trainer.model.parameters(), before)))
    assert delta == pytest.approx(1.0e-3, rel=1e-3)


# ----------------------------------------------------------------------------------------------------------- checkpoint files


class _Evil:
    """Unpickling this would create ``marker`` (open(path, 'w'))."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_load_refuses_code_running_pickle(tmp_path):
    marker = tmp_path / "PWNED"
    path = tmp_path / "evil.pt"
    torch.save({"model": {}, "payload": _Evil(marker)}, path)
    with pytest.raises(CheckpointError) as exc_info:
        load_checkpoint(path)
    assert not marker.exists()
    assert str(path) in str(exc_info.value)
    assert "refused" in str(exc_info.value)
    # the payload is real: an unsafe load would have run it
    sentinel = tmp_path / "sanity" / "PWNED"
    sentinel.parent.mkdir()
    torch.save({"model": {}, "payload": _Evil(sentinel)}, tmp_path / "sanity" / "evil.pt")
    fh = torch.load(tmp_path / "sanity" / "evil.pt", weights_only=False)["payload"]
    fh.close()
    assert sentinel.exists()


def test_save_and_load_round_trip(tmp_path):
    state = {"model": {"w": torch.arange(6.0).reshape(2, 3)}, "trainer": {"step": 3, "best": None, "last_eval": {"val/loss": 1.5}}}
    path = tmp_path / "run" / "last.pt"
    save_checkpoint(state, path)
    loaded = load_checkpoint(path)
    assert torch.equal(loaded["model"]["w"], state["model"]["w"])
    assert loaded["trainer"] == state["trainer"]
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]  # no temp file left behind


def test_save_keeps_previous(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint({"model": {"v": torch.tensor(1)}}, path, keep_previous=True)
    save_checkpoint({"model": {"v": torch.tensor(2)}}, path, keep_previous=True)
    assert int(load_checkpoint(path)["model"]["v"]) == 2
    assert int(load_checkpoint(tmp_path / "prev.pt")["model"]["v"]) == 1
    assert [p.name for p in resume_candidates(tmp_path)] == ["last.pt", "prev.pt"]


# A module-level lambda: pickle looks it up by name and fails with PicklingError on every Python version (a lambda local
# to the test raises AttributeError "Can't pickle local object" on some versions instead).
_UNPICKLABLE = lambda: 0


def test_failed_save_leaves_old_file_and_no_temp(tmp_path):
    path = tmp_path / "ck" / "last.pt"
    save_checkpoint({"model": {"v": torch.tensor(1)}}, path)
    with pytest.raises(pickle.PicklingError, match=r"Can't pickle <function <lambda>"):
        save_checkpoint({"model": {"v": torch.tensor(2)}, "bad": _UNPICKLABLE}, path)
    assert int(load_checkpoint(path)["model"]["v"]) == 1
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.pt"]


@pytest.mark.parametrize("keep", [0.5, 0.1, 0.95])
def test_truncated_checkpoint(tmp_path, keep):
    path = tmp_path / "last.pt"
    save_checkpoint({"model": {"w": torch.randn(64, 64)}, "trainer": {"step": 1}}, path)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(CheckpointError) as exc_info:
        load_checkpoint(path)
    assert str(path) in str(exc_info.value)
    assert "truncated or corrupt" in str(exc_info.value)


def test_garbage_and_missing_checkpoint(tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(random.Random(0).randbytes(1000))  # fixed bytes: the test must not be flaky
    with pytest.raises(CheckpointError, match="junk.pt"):
        load_checkpoint(junk)
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "absent.pt")
    plain = tmp_path / "plain.pt"
    torch.save({"weights": torch.zeros(2)}, plain)
    with pytest.raises(CheckpointError, match="not a harness checkpoint"):
        load_checkpoint(plain)


# ----------------------------------------------------------------------------------------------------------- resume


def _resume_spec(tiny_spec_dict: dict) -> dict:
    d = copy.deepcopy(tiny_spec_dict)
    # 300 chars -> 240 train tokens, stride 8: 28 windows = 7 steps per epoch; 2 epochs = 14 steps
    d["data"].update(max_chars=300, stride=8)
    d["model"]["dropout"] = 0.1  # dropout draws from the global RNG, so the RNG state must be restored too
    d["train"] = {
        "epochs": 2,
        "batch_size": 4,
        "optimizer": {"name": "adamw", "lr": 3.0e-3, "weight_decay": 0.01},
        "schedule": {"name": "warmup_cosine", "warmup_steps": 3, "min_lr": 1.0e-4},
        "clip_grad_norm": 0.5,
        "eval": {"every_steps": 3, "batches": 2},
        "device": "cpu",
    }
    return d


class _InterruptAt:
    """Stop the run (as a signal would) at the evaluation after ``step`` updates; the trainer then saves last.pt."""

    def __init__(self, step: int):
        self.step = step

    def __call__(self, event):
        if isinstance(event, EvalEnd) and event.step == self.step:
            raise StopTraining("interrupted")


def test_resume_is_bit_identical(tmp_path, tiny_spec_dict):
    spec = _resume_spec(tiny_spec_dict)

    full_steps, full_epochs = _Collect(), _Collect(EpochEnd)
    full = _build(spec, tmp_path / "full", [full_steps, full_epochs])
    assert full.total_steps == 14 and full.steps_per_epoch == 7
    full_result = full.fit()
    assert full_result.stop_reason == "completed" and full_result.steps == 14

    first_steps = _Collect()
    first = _build(spec, tmp_path / "run", [first_steps, _InterruptAt(9)])
    first_result = first.fit()
    assert first_result.stop_reason == "interrupted" and first_result.steps == 9
    assert (tmp_path / "run" / "last.pt").is_file()

    # a fresh process would build everything again (a different init proves the checkpoint overrides it)
    torch.manual_seed(12345)
    torch.rand(100)
    second_steps, second_epochs = _Collect(), _Collect(EpochEnd)
    second = _build(spec, tmp_path / "run", [second_steps, second_epochs], init_seed=999)
    second.load(tmp_path / "run" / "last.pt")
    assert second.step == 9 and second.epoch == 1
    second_result = second.fit()
    assert second_result.stop_reason == "completed" and second_result.steps == 14

    full_losses = [e.loss for e in full_steps.events]
    resumed_losses = [e.loss for e in first_steps.events] + [e.loss for e in second_steps.events]
    assert [e.step for e in second_steps.events] == list(range(9, 14))
    assert resumed_losses == full_losses  # bit-identical, not approximately equal
    assert [e.grad_norm for e in second_steps.events] == [e.grad_norm for e in full_steps.events[9:]]
    assert [e.lr for e in second_steps.events] == [e.lr for e in full_steps.events[9:]]
    # the epoch-mean loss of the interrupted epoch includes the steps before the interruption
    assert second_epochs.events[-1].train_loss == full_epochs.events[-1].train_loss
    assert second_result.last_eval == full_result.last_eval
    for (name, a), (_, b) in zip(full.model.state_dict().items(), second.model.state_dict().items()):
        assert torch.equal(a, b), name


# ----------------------------------------------------------------------------------------------------------- early stopping


@pytest.mark.parametrize("restore", [True, False])
def test_early_stopping_counts_patience_and_restores_best(tmp_path, tiny_spec_dict, restore):
    # min_delta is larger than any possible gain, so the step-0 evaluation stays the best and every later one is "bad".
    tiny_spec_dict["train"].update(max_steps=60, eval={"every_steps": 2, "batches": 2}, optimizer={"name": "adamw", "lr": 1e-2},
                                   early_stopping={"metric": "val/loss", "patience": 3, "min_delta": 100.0, "restore_best": restore})
    evals = _Collect(EvalEnd)
    tr = _build(tiny_spec_dict, tmp_path, callbacks=[evals])
    initial = {k: v.clone() for k, v in tr.model.state_dict().items()}
    result = tr.fit()
    assert result.stop_reason == "early_stopped"
    assert [e.step for e in evals.events] == [0, 2, 4, 6]  # best at 0, then 3 evaluations without improvement
    assert result.steps == 6 and result.best_step == 0
    assert result.best_metric == evals.events[0].metrics["val/loss"]
    weights_are_initial = all(torch.equal(v, initial[k]) for k, v in tr.model.state_dict().items())
    assert weights_are_initial is restore
    if restore:  # the final metrics describe the restored (best) weights
        assert result.last_eval["val/loss"] == evals.events[0].metrics["val/loss"]
    else:
        assert result.last_eval["val/loss"] == evals.events[-1].metrics["val/loss"]


def test_bf16_autocast_trains_on_cpu(tmp_path, tiny_spec_dict):
    losses = {}
    for precision in ("fp32", "bf16"):
        tiny_spec_dict["train"]["precision"] = precision
        steps = _Collect(StepEnd)
        result = _build(tiny_spec_dict, tmp_path / precision, callbacks=[steps]).fit()
        assert result.stop_reason == "completed"
        losses[precision] = [e.loss for e in steps.events]
    assert all(math.isfinite(v) for v in losses["bf16"])
    assert losses["bf16"] != losses["fp32"]  # autocast really ran the forward pass in bf16 ...
    assert losses["bf16"][0] == pytest.approx(losses["fp32"][0], abs=0.05)  # ... and computes the same loss


def test_a_step_cap_shortens_the_run_and_its_schedule_and_a_resume_keeps_that_length(tmp_path, tiny_spec_dict):
    """HARNESS_MAX_STEPS cuts a run (schedule fitted to the cut). A run cut at start keeps its length when resumed
    without the cap: its learning rate must not jump to another schedule's."""
    from harness.train import StopReason

    tiny_spec_dict["train"]["schedule"] = {"name": "warmup_cosine", "warmup_steps": 1, "min_lr": 1.0e-4}
    whole = _Collect()
    _build(tiny_spec_dict, tmp_path / "whole", [whole], step_cap=4).fit()  # the capped run, uninterrupted
    assert [e.lr for e in whole.events] != [e.lr for e in _run_lrs(tiny_spec_dict, tmp_path / "uncapped")][:4], "the cut changes the schedule"

    def stop_at_2(event):
        if isinstance(event, StepEnd) and event.step == 1:
            raise StopTraining(StopReason.INTERRUPTED, "test stop")

    capped = _build(tiny_spec_dict, tmp_path / "a", [stop_at_2], step_cap=4)
    assert capped.total_steps == 4 and capped.fit().steps == 2
    lrs = _Collect()
    resumed = _build(tiny_spec_dict, tmp_path / "a", [lrs])
    assert resumed.total_steps == 6, "uncapped, the spec's length"
    resumed.load(tmp_path / "a" / "last.pt")
    assert resumed.total_steps == 4 and resumed.fit().steps == 4
    assert [e.lr for e in lrs.events] == [e.lr for e in whole.events][2:], "the resumed steps follow the capped run's schedule"


def _run_lrs(spec_dict: dict, folder: Path) -> list:
    steps = _Collect()
    _build(spec_dict, folder, [steps]).fit()
    return steps.events


# ----------------------------------------------------------------------------------------------------------- a callback stops the run


class _StoreOutage:
    """What the MLflow logger does when the store stays away (harness.job.logger): raise StopTraining(FAILED) from
    an event. Here at the first event ``when`` accepts."""

    def __init__(self, when):
        self.when = when
        self.raised_at: object = None

    def __call__(self, event):
        if self.raised_at is None and self.when(event):
            self.raised_at = event
            from harness.train import StopReason

            raise StopTraining(StopReason.FAILED, "tracking store unreachable: test outage")


def test_an_outage_at_an_improving_evaluation_still_writes_that_best_checkpoint(tmp_path, tiny_spec_dict):
    """best.pt holds the weights last.pt names as the best: restore_best and `init.from ... best` read them."""
    tiny_spec_dict["train"].update(max_steps=12, eval={"every_steps": 2, "batches": 2}, optimizer={"name": "adamw", "lr": 1e-2})
    outage = _StoreOutage(lambda e: isinstance(e, EvalEnd) and e.step > 0 and e.improved)
    result = _build(tiny_spec_dict, tmp_path, [outage]).fit()
    assert outage.raised_at is not None, "no evaluation after step 0 improved: the test proves nothing"
    assert result.stop_reason == "failed" and result.steps == outage.raised_at.step
    last, best = load_checkpoint(tmp_path / "last.pt"), load_checkpoint(tmp_path / "best.pt")
    assert last["trainer"]["best_step"] == outage.raised_at.step
    assert best["trainer"]["step"] == last["trainer"]["best_step"], "best.pt is older than the best the run recorded"
    for k, v in last["model"].items():
        assert torch.equal(best["model"][k], v), k


def test_an_outage_at_a_step_end_loses_no_epoch_metric_evaluation_or_checkpoint(tmp_path, tiny_spec_dict):
    """The stop takes effect once the step's work is done: its epoch's mean loss, its evaluation and its periodic
    checkpoint happen, and a resumed run's events together with the first session's are the uninterrupted run's."""
    spec = _resume_spec(tiny_spec_dict)  # 7 steps per epoch, 2 epochs
    spec["train"]["eval"] = {"every_epochs": 1, "batches": 2}
    spec["train"]["checkpoint"] = {"every_epochs": 1}

    def events():
        return _Collect(StepEnd), _Collect(EpochEnd), _Collect(EvalEnd)

    full = events()
    _build(spec, tmp_path / "full", list(full)).fit()
    assert [e.step for e in full[2].events] == [0, 7, 14]

    first = events()
    outage = _StoreOutage(lambda e: isinstance(e, StepEnd) and e.step == 6)  # the step that ends epoch 1
    result = _build(spec, tmp_path / "run", [*first, outage]).fit()
    assert result.stop_reason == "failed" and result.steps == 7
    assert [e.epoch for e in first[1].events] == [1], "the epoch's mean loss was not reported"
    assert [e.step for e in first[2].events] == [0, 7], "the evaluation due after the step did not run"
    assert (tmp_path / "run" / periodic_name(7)).is_file(), "the periodic checkpoint due after the step was not written"

    second = events()
    resumed = _build(spec, tmp_path / "run", list(second))
    resumed.load(tmp_path / "run" / "last.pt")
    assert resumed.fit().stop_reason == "completed"
    for a, b, c in zip(full, first, second):
        assert [(e.step, getattr(e, "loss", None)) for e in a.events] == [(e.step, getattr(e, "loss", None)) for e in b.events + c.events]
    assert [e.train_loss for e in full[1].events] == [e.train_loss for e in first[1].events + second[1].events]
    assert [e.metrics for e in full[2].events] == [e.metrics for e in first[2].events + second[2].events]


def test_an_outage_at_the_evaluation_that_ends_patience_resumes_as_early_stopped(tmp_path, tiny_spec_dict):
    """The evaluation that runs out of patience is in last.pt; the resumed run stops there, with the best weights,
    instead of training on."""
    tiny_spec_dict["train"].update(max_steps=60, eval={"every_steps": 2, "batches": 2}, optimizer={"name": "adamw", "lr": 1e-2},
                                   early_stopping={"metric": "val/loss", "patience": 3, "min_delta": 100.0, "restore_best": True})
    whole = _build(tiny_spec_dict, tmp_path / "whole")
    initial = {k: v.clone() for k, v in whole.model.state_dict().items()}
    assert whole.fit().steps == 6  # as in test_early_stopping_counts_patience_and_restores_best

    outage = _StoreOutage(lambda e: isinstance(e, EvalEnd) and e.step == 6)
    assert _build(tiny_spec_dict, tmp_path / "run", [outage]).fit().steps == 6
    steps = _Collect(StepEnd)
    resumed = _build(tiny_spec_dict, tmp_path / "run", [steps], init_seed=999)
    resumed.load(tmp_path / "run" / "last.pt")
    result = resumed.fit()
    assert (result.stop_reason, result.steps, result.best_step) == ("early_stopped", 6, 0)
    assert steps.events == [], "the resumed run trained past the evaluation that ended its patience"
    assert all(torch.equal(v, initial[k]) for k, v in resumed.model.state_dict().items()), "the best weights were not restored"
