"""What a run tells the MLflow UI about itself, built from its spec and data: the datasets it trained and was
validated on, a one-line description, and the folder of the model it made (see :mod:`harness.tracking.records` for
how each is stored)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from harness.job.source import MODEL_FILE
from harness.spec import Spec, is_named_corpus, spec_to_yaml
from harness.tracking.redact import redact_text
from harness.tracking.records import DatasetRecord, ModelRecord

if TYPE_CHECKING:
    from harness.data.prepare import Prepared
    from harness.data.tasks import TaskData
    from harness.data.tokenizers import Tokenizer

__all__ = ["datasets", "describe", "model_folder"]

_TEXT = {"mlflow_colspec": [{"name": "text", "type": "string", "required": True}]}
_CLASSIFY = {"mlflow_colspec": [{"name": "text", "type": "string", "required": True}, {"name": "label", "type": "string", "required": True}]}
_INSTRUCT = {"mlflow_colspec": [{"name": "instruction", "type": "string", "required": True},
                                {"name": "input", "type": "string", "required": False},
                                {"name": "response", "type": "string", "required": True}]}
PYFUNC_LOADER = "harness.generate"  # its _load_pyfunc(path) serves mlflow.pyfunc.load_model("models:/<id>")


def _digest(*arrays: np.ndarray) -> str:
    """A content digest of the data as the model sees it (token ids, and targets for a task), 8 hex digits as MLflow
    prints its own digests: the same text, split and tokenizer give the same digest on every machine."""
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.data.cast("B"))  # the bytes in place, no copy
    return h.hexdigest()[:8]


def _split_digest(key: str, context: str, n_tokens: int) -> str:
    """A split's digest, from its token file's cache key (``token_cache_key`` in the profile) and where the split
    lies: computed without reading the tokens (a corpus of gigabytes costs nothing here), the same for every run on
    the same tokens and split, whatever its seq_len or sampling."""
    return hashlib.sha256(f"{key}/{context}/{n_tokens}".encode()).hexdigest()[:8]


def _source(ref: str, *, shipped: bool) -> tuple[str, str, dict[str, Any]]:
    """(name, MLflow source type, source) of a corpus or a finetuning dataset: a shipped one by its name (the package
    that ships it in the source), a file by its name (its path in the source)."""
    if shipped:
        package = ref.split("/")[0] if ref.startswith("shakespeare/") else "harness" if ref != "names" else "names"
        return ref, "code", {"tags": {"package": package, "name": ref}}
    path = Path(ref)
    return path.name, "local", {"uri": str(path)}


def datasets(spec: Spec, tokenizer: Tokenizer, prep: Prepared | None, task: TaskData | None) -> list[DatasetRecord]:
    """The run's training and validation data (one record each; none for an empty validation split)."""
    from harness.data.prepare import PAD_TARGET
    from harness.spec.schema import SHIPPED_DATASETS

    tok = {"tokenizer": tokenizer.kind, "vocab_size": tokenizer.vocab_size}
    out: list[DatasetRecord] = []
    if prep is not None:
        corpus = spec.data.corpus or "-"
        name, kind, source = _source(corpus, shipped=is_named_corpus(corpus))
        common = {**tok, "corpus_characters": prep.n_chars, "sampling": spec.data.sampling, "token_cache_key": prep.key}
        if spec.data.max_chars is not None:
            common["max_chars"] = spec.data.max_chars
        for context, tokens, n_tokens, examples in (("train", prep.train, prep.n_train_tokens, prep.train_examples),
                                                    ("validation", prep.val, prep.n_val_tokens, prep.val_examples)):
            if n_tokens:
                digest = _split_digest(prep.key, context, n_tokens) if prep.key else _digest(tokens)
                out.append(DatasetRecord(name, digest, kind, source, _TEXT,
                                         {**common, "tokens": int(n_tokens), "examples": int(examples)}, context))
        return out
    if task is None:
        return out
    ref = spec.task.dataset or "-"
    name, kind, source = _source(ref, shipped=ref in SHIPPED_DATASETS)
    schema = _CLASSIFY if spec.task.kind == "classify" else _INSTRUCT
    for context, x, y in (("train", task.train_x, task.train_y), ("validation", task.val_x, task.val_y)):
        if not len(x):
            continue
        profile: dict[str, Any] = {**tok, "rows": int(len(x)), "graded_tokens": int((y != PAD_TARGET).sum())}
        if task.labels:
            counts = np.bincount(y[y != PAD_TARGET].astype(np.int64), minlength=len(task.labels))
            profile["labels"] = {label: int(n) for label, n in zip(task.labels, counts)}
        out.append(DatasetRecord(name, _digest(x, y), kind, source, schema, profile, context))
    return out


def _count(n: int) -> str:
    return f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n / 1e3:.0f}k" if n >= 1e4 else f"{n:,}"


def describe(spec: Spec, facts: dict[str, Any], tags: dict[str, str], source: str | None) -> str:
    """One line of Markdown saying what the run is (the run's description in the MLflow UI)."""
    shape = spec.model
    body = f"GPT {shape.n_layers}×{shape.d_model}" if shape is not None else "GPT"
    if "n_parameters" in facts:
        body += f" ({_count(int(facts['n_parameters']))} parameters)"
    kind = spec.task.kind
    data = spec.task.dataset if kind != "lm" else spec.data.corpus
    shown = Path(data).name if data and not (is_named_corpus(data) or kind != "lm" and "/" not in data) else data
    what = {"lm": "language model", "classify": f"classifier ({facts.get('n_labels', '?')} labels)", "instruct": "instruction-tuned model"}[kind]
    opt = spec.train.optimizer
    length = f"{spec.train.epochs} epochs" if spec.train.epochs is not None else f"{spec.train.max_steps} steps"
    line = f"{body} {what} on `{shown}`, {spec.data.tokenizer.kind} tokens; {opt.name} lr {opt.lr:g}, {length}."
    if source is not None:
        frozen = spec.freezing
        trains = ("the head only" if frozen == "all_but_head" else "everything" if frozen == "none"
                  else f"the top {getattr(frozen, 'last_n_blocks', '?')} blocks and the head")
        line += f" Finetuned from {source}; {trains} trains."
    if tags.get("harness.config_id"):
        line += (f" Seed {tags.get('harness.seed', '?')} (repeat {tags.get('harness.repeat', '?')}) of configuration "
                 f"{tags['harness.config_id']} ({tags.get('harness.config', '')}) in sweep `{tags.get('harness.study', '?')}`.")
    elif tags.get("harness.role") == "trial":
        line += f" Trial {tags.get('harness.trial', '?')} of sweep `{tags.get('harness.study', '?')}`."
    return line


def model_folder(folder: Path, spec: Spec, checkpoint: Path, tokenizer: Tokenizer, labels: list[str], *, run_id: str,
                 metrics: dict[str, float], dataset: DatasetRecord | None) -> ModelRecord:
    """Write the model a run made into ``folder``: the weights of ``checkpoint`` alone (no optimizer state: a third of
    the size), the spec and tokenizer that rebuild it (and a classifier's labels), as ``harness generate`` and
    ``init.from`` read them from a run; and say what it is."""
    import torch

    from harness.train.checkpoint import load_checkpoint

    state = load_checkpoint(checkpoint)
    trainer = state.get("trainer") or {}
    step = int(trainer.get("step") or 0)
    torch.save({"format": 1, "model": state["model"], "trainer": {"step": step}, "meta": state.get("meta") or {}}, folder / MODEL_FILE)
    (folder / "spec.yaml").write_text(redact_text(spec_to_yaml(spec)), encoding="utf-8")  # uploaded: no secret in it
    (folder / "tokenizer.json").write_text(json.dumps(tokenizer.to_dict(), ensure_ascii=False), encoding="utf-8")
    if labels:
        (folder / "labels.json").write_text(json.dumps(labels, ensure_ascii=False), encoding="utf-8")
    shape = spec.model
    params = {"task": spec.task.kind, "tokenizer": tokenizer.kind, "vocab_size": str(tokenizer.vocab_size),
              "seq_len": str(spec.data.seq_len), "checkpoint": checkpoint.name, "step": str(step)}
    if shape is not None:
        params.update(n_layers=str(shape.n_layers), d_model=str(shape.d_model), n_heads=str(shape.n_heads), d_ff=str(shape.d_ff))
    return ModelRecord(folder=folder, name=_model_name(spec.tracking.run_name or spec.name), weights=MODEL_FILE, loader_module=PYFUNC_LOADER, params=params,
                       tags={"harness.run_id": run_id, "harness.spec_name": spec.name}, metrics=metrics, step=step, dataset=dataset)


def _model_name(name: str) -> str:
    """A logged model's name: the spec's name (letters, digits, _ . -, which MLflow accepts as they are)."""
    return name[:200] or "model"
