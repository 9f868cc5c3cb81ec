"""Finetuning: start from a trained run (by run id, sweep parent, experiment name or file), a classification head on a
frozen body, instruction tuning with -100 on the prompt, lineage in MLflow, resume and sweeps like any run."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
import torch

from harness import SpecError
from harness.cli import main
from harness.job import resume, run
from harness.spec import spec_from_dict
from harness.sweep import run_sweep
from harness.tracking import client_for
from harness.tracking.tracker import local_artifact_dir

PRETRAIN = {
    "name": "pre",
    "seed": 1,
    "data": {"corpus": "names", "tokenizer": "char", "sampling": "documents", "seq_len": 12, "val_fraction": 0.1},
    "model": {"d_model": 16, "n_heads": 2, "n_layers": 2, "d_ff": 32, "dropout": 0.0},
    "train": {"max_steps": 8, "batch_size": 8, "optimizer": {"lr": 3e-3}, "eval": {"every_steps": 4, "batches": 2}, "device": "cpu"},
    "tracking": {"experiment": "pre", "sample_tokens": 0},
}


def _classify(source: str, **task) -> dict:
    return {
        "name": "gender",
        "seed": 2,
        "init": {"from": source, "checkpoint": "best"},
        "task": {"kind": "classify", "dataset": "names_by_sex", **task},
        "data": {"seq_len": 12, "val_fraction": 0.2},
        "train": {"max_steps": 6, "batch_size": 16, "optimizer": {"lr": 1e-2}, "eval": {"every_steps": 3, "batches": 4}, "device": "cpu"},
        "tracking": {"experiment": "gender", "sample_tokens": 0},
    }


@pytest.fixture
def source() -> str:
    out = run(spec_from_dict(copy.deepcopy(PRETRAIN)))
    assert out.ok
    return out.run_id


def _artifacts(run_id: str) -> Path:
    return local_artifact_dir(client_for().get_run(run_id).info.artifact_uri)


def _head_and_body(run_id: str, name: str = "last.pt") -> dict[str, torch.Tensor]:
    return torch.load(_artifacts(run_id) / "checkpoints" / name, weights_only=True)["model"]


def test_a_frozen_body_stays_bit_identical_and_the_lineage_is_recorded(source):
    out = run(spec_from_dict(_classify(source)))
    assert out.ok and "val/accuracy" in out.final
    before = torch.load(_artifacts(source) / "checkpoints" / "best.pt", weights_only=True)["model"]
    after = _head_and_body(out.run_id)
    body = [k for k in before if not k.startswith("head.")]
    assert body and all(torch.equal(before[k], after[k]) for k in body), "a frozen parameter moved"
    assert after["head.weight"].shape == (2, 16), "a new 2-class head"
    run_ = client_for().get_run(out.run_id)
    assert run_.data.tags["harness.init_from"] == source
    assert run_.data.params["init.source_uri"] == f"runs:/{source}/checkpoints/best.pt"
    assert run_.data.params["task.freeze"] == "all_but_head", "the resolved default, not None (issue 29.5)"
    assert json.loads((_artifacts(out.run_id) / "labels.json").read_text()) == ["female", "male"]
    metrics = run_.data.metrics
    assert 0.0 <= metrics["val/accuracy"] <= 1.0
    assert {"val/precision/female", "val/recall/male"} <= set(metrics)
    assert (_artifacts(out.run_id) / "confusion_matrix.csv").is_file() and (_artifacts(out.run_id) / "confusion_matrix.png").is_file()
    # the source run got no writes
    src = client_for().get_run(source)
    assert "harness.init_from" not in src.data.tags and src.info.status == "FINISHED"


def test_the_optimizer_holds_only_what_trains():
    from harness.model import GPT
    from harness.spec import ModelSpec, TrainSpec
    from harness.train.freezing import freeze
    from harness.train.optim import make_optimizer

    model = GPT(ModelSpec(d_model=8, n_heads=2, n_layers=3, d_ff=16), vocab_size=10, max_seq_len=8)
    freeze(model, spec_from_dict({**_classify("x"), "task": {"kind": "classify", "dataset": "names_by_sex",
                                                             "freeze": {"last_n_blocks": 1}}}).freezing)
    opt = make_optimizer(model, TrainSpec(max_steps=1, batch_size=1, optimizer={"lr": 1e-3}))
    held = {id(p) for group in opt.param_groups for p in group["params"]}
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert held == trainable
    expected = {id(p) for m in (model.head, model.ln_f, model.blocks[-1]) for p in m.parameters()}
    assert trainable == expected


@pytest.mark.parametrize("how", ["run id", "prefix", "experiment", "sweep parent", "path"])
def test_init_from_finds_the_source_every_way(source, how, tmp_path):
    if how == "sweep parent":
        sweep = copy.deepcopy(PRETRAIN) | {"name": "presweep", "tracking": {"experiment": "presweep", "sample_tokens": 0},
                                          "sweep": {"sampler": "grid", "params": {"train.optimizer.lr": [1e-3, 3e-3]}}}
        result = run_sweep(spec_from_dict(sweep))
        ref, expected = result.parent_run_id, result.best["run_id"]
    else:
        expected = source
        ref = {"run id": source, "prefix": source[:8], "experiment": "pre",
               "path": str(_artifacts(source) / "checkpoints" / "best.pt")}[how]
    out = run(spec_from_dict(_classify(ref)))
    tags = client_for().get_run(out.run_id).data.tags
    if how == "path":
        assert tags["harness.init_checkpoint"] == ref
    else:
        assert tags["harness.init_from"] == expected


def test_a_spec_that_contradicts_its_source_is_refused_before_anything_is_created(source, tmp_path, write_spec, capsys):
    raw = _classify(source)
    raw["model"] = {"d_model": 32, "n_heads": 2, "n_layers": 2, "d_ff": 32}
    raw["data"]["seq_len"] = 64
    path = write_spec(tmp_path, raw, "bad.yaml")
    runs_before = len(client_for().search_runs([e.experiment_id for e in client_for().search_experiments()]))
    assert main(["run", str(path), "-q"]) == 2
    err = capsys.readouterr().err
    assert f"model.d_model: is 32 here but 16 in run {source}" in err
    assert f"data.seq_len: is 64 here but the model of run {source} has a context of 12 positions" in err
    assert len(client_for().search_runs([e.experiment_id for e in client_for().search_experiments()])) == runs_before


@pytest.mark.parametrize(("ref", "message"), [("0123456789abcdef0123456789abcdef", "no run with id"),
                                              ("nothing-here", "neither a checkpoint file, nor a run id, nor an experiment")])
def test_a_missing_source_is_a_clear_error(source, ref, message):
    with pytest.raises(SpecError, match=message) as err:
        run(spec_from_dict(_classify(ref)))
    assert err.value.issues[0].path == "init.from"


def test_a_checkpoint_that_does_not_fit_its_spec_is_refused(source, tmp_path):
    folder = tmp_path / "copy"
    folder.mkdir()
    for name in ("spec.yaml", "tokenizer.json"):
        (folder / name).write_bytes((_artifacts(source) / name).read_bytes())
    state = torch.load(_artifacts(source) / "checkpoints" / "best.pt", weights_only=True)
    state["model"]["tok_emb.weight"] = torch.zeros(3, 16)
    torch.save(state, folder / "best.pt")
    with pytest.raises(SpecError, match="does not fit the model its run describes"):
        run(spec_from_dict(_classify(str(folder / "best.pt"))))


def test_instruct_loss_counts_response_tokens_only():
    """A hand-built batch: the trainer's loss equals the mean cross-entropy over the response positions alone."""
    import numpy as np

    from harness.data.prepare import PAD_TARGET
    from harness.data.tasks import _Encoder, _instruct
    from harness.data.datasets import InstructRow
    from harness.data.tokenizers import CharTokenizer
    from harness.train.loop import cross_entropy

    tok = CharTokenizer.from_text("abc xyz:\nIR", bos=True)
    rows = [InstructRow("ab", "", "xyz"), InstructRow("c", "a", "zy")]
    xs, ys = _instruct(rows, 16, _Encoder(tok), "I:{instruction}\n{input_line}R:")
    for x, y, row in zip(xs, ys, rows):
        graded = [int(t) for t in y if t != PAD_TARGET]
        assert tok.decode(graded) == row.output and graded[-1] == tok.bos_id  # the response, then end-of-text
    logits = torch.randn(2, 16, tok.vocab_size)
    y = torch.from_numpy(ys)
    mask = y != PAD_TARGET
    manual = torch.nn.functional.cross_entropy(logits[mask], y[mask])
    assert torch.allclose(cross_entropy(logits, y), manual)
    assert int(mask.sum()) == sum(len(r.output) + 1 for r in rows), "padding and prompt never count"
    assert np.all(xs[ys == PAD_TARGET] >= 0)


def test_instruct_runs_and_generate_answers_in_the_template(tmp_path, capsys):
    pre = copy.deepcopy(PRETRAIN) | {"name": "hamlet", "data": {"corpus": "shakespeare/hamlet", "max_chars": 20000, "tokenizer": "char",
                                                                "sampling": "random", "seq_len": 96, "val_fraction": 0.1},
                                     "tracking": {"experiment": "hamlet", "sample_tokens": 0}}
    source = run(spec_from_dict(pre)).run_id
    spec = {"name": "instr", "init": {"from": source}, "task": {"kind": "instruct", "dataset": "play_instruct"},
            "data": {"seq_len": 96, "val_fraction": 0.05},
            "train": {"max_steps": 4, "batch_size": 8, "optimizer": {"lr": 1e-3}, "eval": {"every_steps": 2, "batches": 2}, "device": "cpu"},
            "tracking": {"experiment": "instr", "sample_tokens": 0}}
    out = run(spec_from_dict(spec))
    params = client_for().get_run(out.run_id).data.params
    assert 0.0 < float(params["derived.supervised_fraction"]) < 1.0
    assert main(["generate", out.run_id, "--prompt", "Which play is this line from?", "--input", "To be, or not to be",
                 "--max-tokens", "10", "--temperature", "0"]) == 0
    assert "the prompt is the instruction" in capsys.readouterr().err


def test_a_killed_finetune_resumes_bit_identical(source):
    from harness.train.events import StepEnd, StopReason, StopTraining

    class StopAt:
        def __call__(self, event) -> None:
            if isinstance(event, StepEnd) and event.step == 3:
                raise StopTraining(StopReason.INTERRUPTED, "test stop")

    raw = _classify(source, freeze="none")
    whole = run(spec_from_dict(copy.deepcopy(raw) | {"name": "whole"}))
    stopped = run(spec_from_dict(copy.deepcopy(raw) | {"name": "part"}), callbacks=[StopAt()])
    assert stopped.stop_reason is StopReason.INTERRUPTED
    resumed = resume(stopped.run_id)
    assert resumed.ok and resumed.steps == whole.steps
    a, b = _head_and_body(whole.run_id), _head_and_body(resumed.run_id)
    assert all(torch.equal(a[k], b[k]) for k in a)
    hist = lambda rid: [(m.step, m.value) for m in client_for().get_metric_history(rid, "train/loss")]  # noqa: E731
    assert sorted(hist(resumed.run_id)) == sorted(hist(whole.run_id))


def test_a_classify_sweep_maximizing_accuracy_picks_the_most_accurate_trial(source):
    raw = _classify(source) | {"name": "gsweep", "tracking": {"experiment": "gsweep", "sample_tokens": 0}}
    raw["sweep"] = {"sampler": "grid", "params": {"train.optimizer.lr": [1e-4, 3e-2]},
                    "objective": {"metric": "val/accuracy", "direction": "maximize", "summary": "best"}}
    result = run_sweep(spec_from_dict(raw))
    table = result.table
    best_row = table.loc[table["objective"].idxmax()]
    assert result.best["trial"] == best_row["trial"]
    assert math.isclose(result.best["value"], table["best_val_accuracy"].max())
