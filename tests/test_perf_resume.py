"""Resume with dropout on: the mask stream's state goes into the checkpoint, so a resumed run draws the same masks as
an uninterrupted one and its losses are bit-identical; without that state they would not be."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from harness.data.batches import eval_batches, make_batches
from harness.data.prepare import prepare
from harness.model import GPT
from harness.spec import spec_from_dict
from harness.train import EvalEnd, StepEnd, StopTraining, Trainer
from harness.train.checkpoint import load_checkpoint


def _spec(tiny_spec_dict: dict) -> dict:
    d = copy.deepcopy(tiny_spec_dict)
    d["data"].update(max_chars=300, stride=8)  # 28 windows: 7 steps per epoch of 4
    d["model"].update(dropout=0.2)
    d["train"] = {"epochs": 2, "batch_size": 4, "optimizer": {"name": "adamw", "lr": 3.0e-3}, "clip_grad_norm": 0.5,
                  "eval": {"every_steps": 3, "batches": 2}, "device": "cpu"}
    return d


def _trainer(spec_dict: dict, folder: Path, callbacks=(), init_seed: int | None = None) -> Trainer:
    spec = spec_from_dict(spec_dict)
    prep = prepare(spec.data)
    torch.manual_seed(spec.seed if init_seed is None else init_seed)
    model = GPT(spec.model, vocab_size=prep.tokenizer.vocab_size, max_seq_len=spec.data.seq_len)
    kw = {"batch_size": spec.train.batch_size, "n_batches": spec.train.eval.batches}
    evals = {s: eval_batches(prep, spec.data, split=s, **kw) for s in ("train", "val")}
    return Trainer(model, spec.train, make_batches(prep, spec.data, batch_size=4, seed=spec.seed), eval_sets=evals,
                   checkpoint_dir=folder, device=torch.device("cpu"), callbacks=list(callbacks))


class _Losses:
    def __init__(self):
        self.values = []

    def __call__(self, event):
        if isinstance(event, StepEnd):
            self.values.append(event.loss)


def _stop_at(step: int):
    def cb(event):
        if isinstance(event, EvalEnd) and event.step == step:
            raise StopTraining("interrupted")
    return cb


@pytest.mark.parametrize("implementation", ["auto", "fused"])
def test_resume_with_dropout_is_bit_identical(tmp_path, tiny_spec_dict, implementation):
    spec = _spec(tiny_spec_dict)
    spec["train"]["optimizer"]["implementation"] = implementation  # the fused optimizers' state resumes exactly too
    full = _Losses()
    _trainer(spec, tmp_path / "full", [full]).fit()
    assert len(full.values) == 14

    first = _Losses()
    _trainer(spec, tmp_path / "run", [first, _stop_at(6)]).fit()
    state = load_checkpoint(tmp_path / "run" / "last.pt")
    assert state["dropout_rng"]["bit_generator"] == "PCG64"  # the mask stream's position is in the checkpoint

    second = _Losses()
    resumed = _trainer(spec, tmp_path / "run", [second], init_seed=999)  # other weights and another stream at first
    resumed.load(tmp_path / "run" / "last.pt")
    resumed.fit()
    assert first.values + second.values == full.values  # bit-identical, dropout included


def test_resume_without_the_stream_state_draws_other_masks(tmp_path, tiny_spec_dict):
    # The control: the same checkpoint without the stream's state resumes with other masks, so other losses. This is
    # what the "dropout_rng" entry prevents (and what a checkpoint from before the mask stream gets: it still loads).
    spec = _spec(tiny_spec_dict)
    full = _Losses()
    _trainer(spec, tmp_path / "full", [full]).fit()
    _trainer(spec, tmp_path / "run", [_stop_at(6)]).fit()
    state = load_checkpoint(tmp_path / "run" / "last.pt")
    del state["dropout_rng"]
    second = _Losses()
    resumed = _trainer(spec, tmp_path / "run", [second], init_seed=999)
    resumed.load_state_dict(state)
    resumed.fit()
    assert second.values != full.values[6:]
