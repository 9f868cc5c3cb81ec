"""Everything a run trains with, built from its spec: data, model, batches, trainer. Deterministic given the seed."""

from __future__ import annotations

import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from harness.data.prepare import Prepared, prepare
from harness.data.tasks import TaskData
from harness.data.tokenizers import Tokenizer
from harness.errors import UsageError
from harness.job.logger import MetricLogger
from harness.job.records import datasets
from harness.spec import Spec
from harness.tracking.protocol import Tracker
from harness.tracking.records import DatasetRecord

__all__ = ["Built", "build", "load_source", "sample_text", "step_cap"]


@dataclass
class Built:
    prep: Prepared | None  # language modelling: the tokenized corpus (None for a classify or instruct task)
    trainer: Any  # harness.train.Trainer
    logger: MetricLogger | None
    facts: dict[str, Any]  # logged as derived.* params; shown in the summary
    device: Any  # torch.device
    tokenizer: Tokenizer
    task: TaskData | None = None  # classify / instruct: the encoded examples (and a classifier's labels)
    datasets: list[DatasetRecord] = field(default_factory=list)  # the train and validation data, as the run records them


def build(spec: Spec, tracker: Tracker | None, callbacks: list[Callable[[Any], None]], *, progress: Any = None,
          init_state: dict[str, Any] | None = None, tokenizer: Tokenizer | None = None, labels: list[str] | None = None,
          dist: Any = None) -> Built:
    """Data, model and trainer for ``spec``; with a tracker, checkpoints go to its run and metrics to its store.

    Finetuning (``spec.init``): ``tokenizer`` is the source's (or, on resume, the run's own copy of it) and
    ``init_state`` the source's weights (None on resume: the run's checkpoint replaces them anyway). ``labels`` fixes a
    resumed classifier's label ids. ``dist`` (harness.train.distributed.Distributed) makes this one rank of a DDP run."""
    import torch

    from harness.model import GPT
    from harness.train import Trainer, resolve_device, seed_everything
    from harness.train.freezing import freeze, trainable_count
    from harness.train.optim import resolve_implementation
    from harness.train.runtime import ThreadGovernor, keep_freed_memory

    device = resolve_device(spec.train.device)
    if dist is not None:
        dist.per_rank_batch(spec.train.batch_size)  # the global batch must split evenly over the ranks
        device = dist.start(device)
    keep_freed_memory()  # activations are freed and re-allocated every step: keep them in the process
    # train.threads (exactly this many, whatever else runs) is set by the trainer while it trains, and undone after.
    # Unpinned on the CPU: as many threads as the CPUs other processes leave free, re-checked while the run trains, so
    # two runs (or a sweep and a run) sharing a laptop do not spin against each other. Its first sample is taken
    # now, so the first decision (before the step-0 evaluation) already sees what ran while the data and model were built.
    governor = ThreadGovernor(torch.get_num_threads()) if not spec.train.threads and device.type == "cpu" else None
    data = _data(spec, tokenizer, labels)
    seed_everything(spec.seed)
    shape = spec.model
    assert shape is not None, "validation requires a model section unless init gives one (resolve_init fills it in)"
    model = GPT(shape, vocab_size=data.tokenizer.vocab_size, max_seq_len=spec.data.seq_len)
    if data.task is not None and spec.task.kind == "classify":
        # a classifier reads the last real token's hidden state through a new head: one logit per label
        model.head = torch.nn.Linear(shape.d_model, len(data.task.labels), bias=False)
        torch.nn.init.normal_(model.head.weight, mean=0.0, std=0.02)
    if init_state is not None:
        load_source(model, init_state, classify=spec.task.kind == "classify")
    if spec.freezing != "none" and model.head.weight is model.tok_emb.weight:
        # A tied head is the token embedding: training "only the head" would train the embedding too. Untie it, so
        # the head trains on its own copy and the frozen embedding stays bit-identical.
        model.head.weight = torch.nn.Parameter(model.tok_emb.weight.detach().clone())
    freeze(model, spec.freezing)
    logger = MetricLogger(tracker, upload_checkpoints=spec.tracking.log_checkpoints) if tracker else None
    cbs: list[Callable[[Any], None]] = ([logger] if logger else []) + list(callbacks) + ([progress] if progress else [])
    ckpt_dir = tracker.checkpoint_dir() if tracker else Path(tempfile.mkdtemp(prefix="harness-ckpt-"))
    trainer = Trainer(model, spec.train, data.batches, eval_sets=data.evals, checkpoint_dir=ckpt_dir, device=device, callbacks=cbs,
                      meta={"seed": spec.seed, "name": spec.name}, governor=governor, classify=spec.task.kind == "classify",
                      step_cap=step_cap(), dist=dist)
    facts = {**data.facts, "n_parameters": model.num_parameters(), "trainable_parameters": trainable_count(model),
             "tokens_per_step": spec.train.batch_size * spec.data.seq_len, "steps_per_epoch": data.batches.steps_per_epoch,
             "total_steps": trainer.total_steps, "precision": trainer.precision,  # precision, optimizer: what `auto` resolved to here
             "optimizer_implementation": resolve_implementation(spec.train.optimizer.implementation, device)}
    if dist is not None:
        facts.update(world_size=dist.world_size, batch_size_per_rank=dist.per_rank_batch(spec.train.batch_size))
    if progress is not None and hasattr(progress, "set_total"):
        progress.set_total(trainer.total_steps)
    records = datasets(spec, data.tokenizer, data.prep, data.task) if tracker is not None else []
    return Built(data.prep, trainer, logger, facts, device, data.tokenizer, data.task, records)


def step_cap() -> int | None:
    """``HARNESS_MAX_STEPS``: cut every run to at most this many steps (a smoke test of a spec or a README command)."""
    raw = os.environ.get("HARNESS_MAX_STEPS", "").strip()
    if not raw:
        return None
    if not raw.isdigit() or int(raw) < 1:
        raise UsageError(f"HARNESS_MAX_STEPS must be a positive whole number of steps, not {raw!r}")
    return int(raw)


def load_source(model: Any, state: dict[str, Any], *, classify: bool) -> None:
    """The source's weights into ``model``: all of them, except a classifier's new head. A context shorter than the
    source's keeps the first position embeddings (the others are never read)."""
    state = dict(state)
    if classify:
        state = {k: v for k, v in state.items() if not k.startswith("head.")}
    pos = model.pos_emb.weight.shape[0]
    if "pos_emb.weight" in state:
        state["pos_emb.weight"] = state["pos_emb.weight"][:pos]
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not (classify and k.startswith("head."))]
    if missing or unexpected:  # resolve_init checked the shapes already; this is a programming error
        raise RuntimeError(f"source weights do not fit: missing {missing[:3]}, unexpected {unexpected[:3]}")


@dataclass
class _Data:
    tokenizer: Tokenizer
    batches: Any  # harness.data.batches.Batches
    evals: dict[str, list[tuple[Any, Any]]]
    facts: dict[str, Any]
    prep: Prepared | None = None
    task: TaskData | None = None


def _data(spec: Spec, tokenizer: Tokenizer | None, labels: list[str] | None) -> _Data:
    """The training batches and fixed evaluation batches: a corpus for task lm, encoded examples otherwise."""
    import torch

    from harness.data.batches import eval_batches, make_batches
    from harness.data.pairs import PairBatches, pair_eval_batches
    from harness.data.tasks import prepare_task, task_tokenizer

    bs, n_eval = spec.train.batch_size, spec.train.eval.batches
    splits = ("train", "val") if spec.data.val_fraction > 0 else ("train",)
    if spec.task.kind == "lm":
        prep = prepare(spec.data, tokenizer=tokenizer)
        batches = make_batches(prep, spec.data, batch_size=bs, seed=spec.seed)
        evals = {split: eval_batches(prep, spec.data, split=split, batch_size=bs, n_batches=n_eval) for split in splits}
        return _Data(prep.tokenizer, batches, evals, _lm_facts(prep), prep=prep)
    tok = tokenizer or task_tokenizer(spec.task)
    task = prepare_task(spec.task, spec.data, tok, labels=labels)
    x, y = torch.from_numpy(task.train_x), torch.from_numpy(task.train_y)
    batches = PairBatches(x, y, batch_size=bs, seed=spec.seed)
    evals = {"train": pair_eval_batches(x, y, batch_size=bs, n_batches=n_eval)}
    if "val" in splits:
        evals["val"] = pair_eval_batches(torch.from_numpy(task.val_x), torch.from_numpy(task.val_y), batch_size=bs, n_batches=n_eval)
    facts: dict[str, Any] = {"vocab_size": tok.vocab_size, "ln_vocab": round(math.log(tok.vocab_size), 6),
                             "windows_per_epoch": task.train_examples, "val_windows": task.val_examples, **task.facts}
    if task.labels:
        facts.update(n_labels=len(task.labels), ln_labels=round(math.log(len(task.labels)), 6))
    return _Data(tok, batches, evals, facts, task=task)


def _lm_facts(prep: Prepared) -> dict[str, Any]:
    return {
        "vocab_size": prep.tokenizer.vocab_size,
        "ln_vocab": round(math.log(prep.tokenizer.vocab_size), 6),
        "windows_per_epoch": prep.train_examples,
        "val_windows": prep.val_examples,
        "train_tokens": prep.n_train_tokens,
        "val_tokens": prep.n_val_tokens,
        "corpus_chars": prep.n_chars,
        "truncated_documents": prep.truncated_documents,
    }


def sample_text(spec: Spec, built: Built) -> str:
    """``tracking.sample_tokens`` tokens sampled from the final model (temperature 0.8, top-k 40, the spec's seed)."""
    import torch

    tok = built.tokenizer
    n = spec.tracking.sample_tokens
    if n <= 0:
        return ""
    if spec.tracking.sample_prompt:
        prompt = tok.encode(spec.tracking.sample_prompt)
    elif tok.bos_id is not None:
        prompt = np.array([tok.bos_id])
    elif built.prep is not None:
        prompt = built.prep.train[:1] if built.prep.train.ndim == 1 else built.prep.train[0, :1]
    else:
        prompt = built.task.train_x[0, :1] if built.task is not None else np.array([0])
    g = torch.Generator().manual_seed(spec.seed)
    model = built.trainer.model
    model.eval()
    idx = torch.as_tensor(np.asarray(prompt, dtype=np.int64), device=built.device)[None, :]
    out = model.generate(idx, n, temperature=0.8, top_k=40, generator=g)
    return tok.decode(out[0].tolist())
