"""Text from a trained run: its best (or last) checkpoint, the spec and the tokenizer saved with it.

A target is a run id or a unique prefix (a sweep's parent run id means its best trial), an experiment name (its best
finished run), an MLflow model URI (``models:/<model id>``), a checkpoint file, or a run's artifact or checkpoints
folder (see :mod:`harness.job.source`). An instruction-tuned run wraps the prompt in its template and stops at the end
of the response.

This module is also the python_function loader of the logged models harness writes: ``mlflow.pyfunc.load_model(
"models:/<id>")`` calls :func:`_load_pyfunc`, whose ``predict`` takes prompts and returns completions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.errors import HarnessError, UsageError

__all__ = ["Generation", "TextModel", "generate"]


@dataclass
class Generation:
    text: str  # prompt + completion
    prompt: str
    completion: str
    checkpoint: Path
    run_id: str | None
    step: int | None
    tokens: list[int] = field(default_factory=list)  # the completion's token ids
    notes: list[str] = field(default_factory=list)


def generate(target: str | Path, prompt: str = "", *, max_tokens: int = 200, temperature: float = 0.8, top_k: int | None = 40,
             seed: int = 0, last: bool = False, uri: str | None = None, input_text: str = "") -> Generation:
    """Sample ``max_tokens`` tokens after ``prompt`` from a run's best (``last=True``: last) checkpoint. For an
    instruction-tuned run, ``prompt`` is the instruction and ``input_text`` its optional input.

    Deterministic for a given ``seed``. ``temperature=0`` is greedy; ``top_k`` None or 0 samples from the whole
    vocabulary. An empty prompt starts from the BOS token (or a newline). With a BOS tokenizer, document boundaries
    in the completion are shown as newlines.
    """
    import numpy as np
    import torch

    from harness.data.tasks import end_of_text_id, fill_template
    from harness.job.source import find_model
    from harness.model import GPT
    from harness.train.checkpoint import load_checkpoint

    if max_tokens < 0:
        raise UsageError(f"--max-tokens must be 0 or more (got {max_tokens})")
    if temperature < 0:
        raise UsageError(f"--temperature must be 0 (greedy) or more (got {temperature})")
    if top_k is not None and top_k < 0:
        raise UsageError(f"--top-k must be 0 (off) or more (got {top_k})")
    src = find_model(str(target), checkpoint="last" if last else "best", uri=uri)
    state = load_checkpoint(src.checkpoint)
    spec, tok = src.spec, src.tokenizer
    if spec.task.kind == "classify":
        raise UsageError(f"{src.reference} is a classifier (task classify); generate samples text from language models")
    emb = state["model"].get("tok_emb.weight")
    if emb is not None and int(emb.shape[0]) != tok.vocab_size:
        raise HarnessError(f"{src.checkpoint}: the model has a vocabulary of {int(emb.shape[0])} but the saved tokenizer has "
                           f"{tok.vocab_size}; they do not belong together")
    if spec.model is None:
        raise HarnessError(f"the spec saved with {src.reference} has no model section")
    model = GPT(spec.model, vocab_size=tok.vocab_size, max_seq_len=spec.data.seq_len)
    model.load_state_dict(state["model"])
    model.eval()
    notes = list(src.notes)
    instruct = spec.task.kind == "instruct"
    if input_text and not instruct:
        raise UsageError("--input is for instruction-tuned runs (task instruct); this run continues the prompt")
    text_in = fill_template(spec.task.template, prompt, input_text) if instruct else prompt
    if instruct:
        notes.append("an instruction-tuned run: the prompt is the instruction, in the run's template")
    if text_in:
        encoded, dropped = tok.encode_known(text_in)
        ids = [int(i) for i in encoded]
        if dropped:
            notes.append(f"left out {dropped} character{'s' if dropped != 1 else ''} of the prompt that the model never saw")
        if not ids:
            raise UsageError("the prompt encodes to no tokens this run's tokenizer knows")
    elif tok.bos_id is not None:
        ids = [tok.bos_id]
    else:
        try:
            ids = [int(i) for i in tok.encode("\n")][:1] or [0]
        except HarnessError:
            ids = [0]
        notes.append(f"no prompt given; starting from {tok.decode(ids)!r}")
    g = torch.Generator().manual_seed(int(seed))
    idx = torch.as_tensor(np.asarray(ids, dtype=np.int64))[None, :]
    stop_id = end_of_text_id(tok) if instruct else None  # a response ends with the end-of-text token it learned to emit
    out = model.generate(idx, int(max_tokens), temperature=float(temperature), top_k=top_k or None, generator=g, stop_id=stop_id)
    new = [int(i) for i in out[0, len(ids) :].tolist()]
    if instruct and new and new[-1] == stop_id:
        new = new[:-1]
    completion = _decode(tok, new)
    shown_prompt = prompt if prompt else ""
    trainer = state.get("trainer") or {}
    step = trainer.get("step")
    return Generation(text=shown_prompt + completion, prompt=shown_prompt, completion=completion, checkpoint=src.checkpoint,
                      run_id=src.run_id, step=int(step) if step is not None else None, tokens=new, notes=notes)


def _decode(tok: Any, ids: list[int]) -> str:
    bos = tok.bos_id
    if bos is None:
        return tok.decode(ids)
    parts: list[str] = []
    cur: list[int] = []
    for i in ids:
        if i == bos:
            parts.append(tok.decode(cur))
            cur = []
        else:
            cur.append(i)
    parts.append(tok.decode(cur))
    return "\n".join(parts)


class TextModel:
    """A logged model as MLflow's python_function flavor serves it: ``predict(prompts)`` -> one completion each.

    ``prompts``: a string, a list of strings, or a pandas DataFrame of prompts (its ``prompt`` column, else its first;
    for an instruction-tuned model an optional ``input`` column). ``params``: max_tokens (default 200), temperature (0.8),
    top_k (40) and seed (0), as ``harness generate`` takes them."""

    def __init__(self, weights: str):
        self.weights = weights

    def predict(self, model_input: Any, params: dict[str, Any] | None = None) -> list[str]:
        opts = dict(params or {})
        if isinstance(model_input, str):
            rows = [(model_input, "")]
        elif hasattr(model_input, "columns"):  # a DataFrame: MLflow hands a list of prompts over as one column
            prompts = model_input["prompt"] if "prompt" in model_input.columns else model_input.iloc[:, 0]
            inputs = list(model_input["input"]) if "input" in model_input.columns else [""] * len(model_input)
            rows = list(zip(map(str, prompts), map(str, inputs)))
        else:
            rows = [(str(p), "") for p in model_input]
        return [generate(self.weights, prompt, input_text=extra, max_tokens=int(opts.get("max_tokens", 200)),
                         temperature=float(opts.get("temperature", 0.8)), top_k=int(opts.get("top_k", 40)),
                         seed=int(opts.get("seed", 0))).completion for prompt, extra in rows]


def _load_pyfunc(path: str) -> TextModel:
    """MLflow's python_function loader contract: ``path`` is the model's weights file (its MLmodel's ``data``), with the
    spec and tokenizer beside it."""
    return TextModel(path)
