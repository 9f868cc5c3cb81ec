"""Everything a run trains with, built from its spec: data, model, batches, trainer. Deterministic given the seed."""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from harness.data.prepare import Prepared, prepare
from harness.job.logger import MetricLogger
from harness.spec import Spec
from harness.tracking import MlflowTracker

__all__ = ["Built", "build", "sample_text"]


@dataclass
class Built:
    prep: Prepared
    trainer: Any  # harness.train.Trainer
    logger: MetricLogger | None
    facts: dict[str, Any]  # logged as derived.* params; shown in the summary
    device: Any  # torch.device


def build(spec: Spec, tracker: MlflowTracker | None, callbacks: list[Callable[[Any], None]], *, progress: Any = None) -> Built:
    """Data, model and trainer for ``spec``; with a tracker, checkpoints go to its run and metrics to its store."""
    import torch

    from harness.data.batches import eval_batches, make_batches
    from harness.model import GPT
    from harness.train import Trainer, resolve_device, seed_everything

    device = resolve_device(spec.train.device)
    if spec.train.threads:
        torch.set_num_threads(spec.train.threads)
    prep = prepare(spec.data)
    seed_everything(spec.seed)
    model = GPT(spec.model, vocab_size=prep.tokenizer.vocab_size, max_seq_len=spec.data.seq_len)
    batches = make_batches(prep, spec.data, batch_size=spec.train.batch_size, seed=spec.seed)
    evals = {split: eval_batches(prep, spec.data, split=split, batch_size=spec.train.batch_size, n_batches=spec.train.eval.batches)
             for split in (("train", "val") if spec.data.val_fraction > 0 else ("train",))}
    logger = MetricLogger(tracker, upload_checkpoints=spec.tracking.log_checkpoints) if tracker else None
    cbs: list[Callable[[Any], None]] = ([logger] if logger else []) + list(callbacks) + ([progress] if progress else [])
    ckpt_dir = tracker.checkpoint_dir() if tracker else Path(tempfile.mkdtemp(prefix="harness-ckpt-"))
    trainer = Trainer(model, spec.train, batches, eval_sets=evals, checkpoint_dir=ckpt_dir, device=device, callbacks=cbs,
                      meta={"seed": spec.seed, "name": spec.name})
    facts = _facts(spec, prep, model.num_parameters(), batches.steps_per_epoch, trainer.total_steps)
    if progress is not None and hasattr(progress, "set_total"):
        progress.set_total(trainer.total_steps)
    return Built(prep, trainer, logger, facts, device)


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


def sample_text(spec: Spec, built: Built) -> str:
    """``tracking.sample_tokens`` tokens sampled from the final model (temperature 0.8, top-k 40, the spec's seed)."""
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
