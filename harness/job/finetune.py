"""Starting from a trained run (``init``): find it, check that the spec does not contradict it, and say how the new run
descends from it.

The source's tokenizer, vocabulary and model shape carry over; the spec may leave ``model`` out, and where it gives
a field it must agree (dropout may change: it is a training choice, not a shape). Everything is checked before the
new run exists, so a wrong source is a clear error (exit 2) and nothing is created.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from harness.errors import HarnessError, Issue, SpecError
from harness.job.source import MODELS, TrainedModel, find_model
from harness.spec import Spec, TokenizerSpec, spec_from_dict, spec_to_dict

__all__ = ["Lineage", "resolve_init", "source_state"]

_SHAPE = ("d_model", "n_heads", "n_layers", "d_ff", "bias", "tie_weights")


@dataclass(frozen=True)
class Lineage:
    """Where a finetuned run's weights came from (recorded as tags and params; the source run gets no writes)."""

    source: TrainedModel
    state: dict[str, Any]  # the source checkpoint's model weights

    def tags(self) -> dict[str, str]:
        tags = {"harness.init_checkpoint": str(self.source.checkpoint)}
        if self.source.run_id:
            tags["harness.init_from"] = self.source.run_id
        if self.source.model_id:
            tags["harness.init_model"] = self.source.model_id  # models:/<id>; also the run's input model
        return tags

    def params(self) -> dict[str, str]:
        src = self.source
        if src.from_model:
            link = f"{MODELS}{src.model_id}"
        else:
            link = f"runs:/{src.run_id}/checkpoints/{src.checkpoint.name}" if src.run_id else str(src.checkpoint)
        return {"init.source_run": src.run_id or "-", "init.source_uri": link, **({"init.source_model": src.model_id} if src.model_id else {})}


def resolve_init(spec: Spec, *, uri: str | None, file: str | None = None) -> tuple[Spec, Lineage | None]:
    """The spec with the source's shape and tokenizer filled in, and the lineage; (spec, None) without ``init``."""
    if spec.init is None:
        return spec, None
    try:
        source = find_model(spec.init.source, checkpoint=spec.init.checkpoint, uri=uri)
    except SpecError:
        raise
    except HarnessError as exc:
        raise SpecError([Issue(file, "init.from", str(exc))]) from None
    issues = _contradictions(spec, source, file)
    if issues:
        raise SpecError(issues)
    resolved = _adopt_source(spec, source, file)
    return resolved, Lineage(source, source_state(source, file))


def _contradictions(spec: Spec, source: TrainedModel, file: str | None) -> list[Issue]:
    """What the spec says that the source run does not allow."""
    theirs = source.spec
    where = source.reference
    issues: list[Issue] = []
    if theirs.task.kind == "classify":
        issues.append(Issue(file, "init.from", f"{where} is a classifier; start from a language model (task lm or instruct)"))
    if spec.model is not None and theirs.model is not None:
        for name in sorted(spec.model.model_fields_set & set(_SHAPE)):
            mine, other = getattr(spec.model, name), getattr(theirs.model, name)
            if mine != other:
                issues.append(Issue(file, f"model.{name}", f"is {mine} here but {other} in {where}; the shape comes from the source"))
    if spec.data.tokenizer != TokenizerSpec() and spec.data.tokenizer != theirs.data.tokenizer:
        issues.append(Issue(file, "data.tokenizer", f"is {spec.data.tokenizer.kind} here but {theirs.data.tokenizer.kind} in {where}; "
                            "the tokenizer and vocabulary come from the source"))
    blocks = getattr(spec.freezing, "last_n_blocks", None)
    if blocks is not None and theirs.model is not None and blocks > theirs.model.n_layers:
        issues.append(Issue(file, "task.freeze.last_n_blocks", f"is {blocks} but the model of {where} has {theirs.model.n_layers} blocks"))
    if spec.task.kind == "lm" and spec.data.sampling == "documents" and source.tokenizer.bos_id is None:
        issues.append(Issue(file, "data.sampling", f"documents sampling needs a BOS token, and the tokenizer of {where} has none"))
    if spec.data.seq_len > theirs.data.seq_len:
        issues.append(Issue(file, "data.seq_len", f"is {spec.data.seq_len} here but the model of {where} has a context of "
                            f"{theirs.data.seq_len} positions"))
    return issues


def _adopt_source(spec: Spec, source: TrainedModel, file: str | None) -> Spec:
    """The spec as the run will record it: the source's model shape (with this spec's dropout, if it gives one) and its
    tokenizer spec, so the run's spec.yaml alone rebuilds the model."""
    raw = spec_to_dict(spec)
    if spec.init is not None and spec.init.source.startswith(MODELS) and source.model_id:
        raw["init"]["from"] = f"{MODELS}{source.model_id}"  # pinned: a registered model's alias may move later
    elif source.run_id:  # pinned: an experiment name or a prefix could name another run later (a resume, a rebuild)
        raw["init"]["from"] = source.run_id
    model = spec_to_dict(source.spec)["model"]
    if spec.model is not None and "dropout" in spec.model.model_fields_set:
        model["dropout"] = spec.model.dropout
    raw["model"] = model
    raw["data"]["tokenizer"] = spec_to_dict(source.spec)["data"]["tokenizer"]
    return spec_from_dict(raw, file=file)


def source_state(source: TrainedModel, file: str | None = None) -> dict[str, Any]:
    """The source checkpoint's model weights, checked against the model its spec and tokenizer describe."""
    import torch

    from harness.model import GPT
    from harness.train.checkpoint import CheckpointError, load_checkpoint

    try:
        state = load_checkpoint(source.checkpoint)["model"]
    except CheckpointError as exc:
        raise SpecError([Issue(file, "init.from", str(exc))]) from None
    if source.spec.model is None:
        raise SpecError([Issue(file, "init.from", f"the spec saved with {source.reference} has no model section")])
    expected = GPT(source.spec.model, vocab_size=source.tokenizer.vocab_size, max_seq_len=source.spec.data.seq_len).state_dict()
    wrong = [f"{k}: {tuple(v.shape)} in the checkpoint, {tuple(expected[k].shape)} expected" for k, v in state.items()
             if k in expected and isinstance(v, torch.Tensor) and v.shape != expected[k].shape]
    missing = sorted(set(expected) - set(state))
    if wrong or missing:
        detail = "; ".join(wrong[:3] + [f"missing {m}" for m in missing[:3]])
        raise SpecError([Issue(file, "init.from", f"{source.checkpoint} does not fit the model its run describes ({detail})")])
    return state
