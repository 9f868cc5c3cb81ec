"""Text from a trained run: its best (or last) checkpoint, the spec and the tokenizer saved with it.

A target is a run id (its ``checkpoints/best.pt``; a sweep's parent run id means its best trial), a checkpoint file,
or a run's artifact or checkpoints folder. The spec (``spec.yaml``) and tokenizer (``tokenizer.json``) are looked up
next to the checkpoint: in its folder or the folder above (a run's artifact layout is ``artifacts/spec.yaml``,
``artifacts/tokenizer.json``, ``artifacts/checkpoints/best.pt``).
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.errors import HarnessError, UsageError

__all__ = ["Generation", "generate"]


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


@dataclass
class _Source:
    checkpoint: Path
    spec_yaml: Path
    tokenizer_json: Path
    run_id: str | None
    notes: list[str]


def _pick_checkpoint(folder: Path, last: bool, notes: list[str], where: str) -> Path:
    want, other = ("last.pt", "best.pt") if last else ("best.pt", "last.pt")
    if (folder / want).is_file():
        return folder / want
    if (folder / other).is_file():
        notes.append(f"{where} has no {want}; using {other}")
        return folder / other
    present = sorted(p.name for p in folder.glob("*.pt")) if folder.is_dir() else []
    raise UsageError(f"{where} has no {want} or {other} checkpoint" + (f" (found: {', '.join(present)})" if present else ""))


def _beside(ckpt: Path, name: str) -> Path | None:
    for folder in (ckpt.parent, ckpt.parent.parent):
        if (folder / name).is_file():
            return folder / name
    return None


def _from_path(target: Path, last: bool) -> _Source:
    notes: list[str] = []
    if target.is_dir():
        folder = target / "checkpoints" if (target / "checkpoints").is_dir() else target
        ckpt = _pick_checkpoint(folder, last, notes, str(folder))
    else:
        ckpt = target
    spec_yaml, tok_json = _beside(ckpt, "spec.yaml"), _beside(ckpt, "tokenizer.json")
    if spec_yaml is None or tok_json is None:
        missing = " and ".join(n for n, p in (("spec.yaml", spec_yaml), ("tokenizer.json", tok_json)) if p is None)
        raise UsageError(f"{ckpt}: no {missing} next to it (looked in {ckpt.parent} and {ckpt.parent.parent}); "
                         "pass a run id, or keep the checkpoint inside its run's artifact folder")
    return _Source(ckpt, spec_yaml, tok_json, None, notes)


def _from_run(run_id: str, last: bool, uri: str | None, tmp: Path) -> _Source:
    from harness.results.store import children, get_run, open_store, role
    from harness.tracking.lookup import resolve_run_id
    from harness.tracking.tracker import local_artifact_dir

    client, uri = open_store(uri)
    run = get_run(client, resolve_run_id(client, run_id, uri=uri) or run_id)
    if run is None:
        raise UsageError(f"no run with id '{run_id}' in the tracking store {uri}")
    notes: list[str] = []
    if role(run) == "sweep":
        kids = children(client, run)
        best = run.data.tags.get("harness.best_trial")
        chosen = [k for k in kids if k.data.tags.get("harness.trial") == best]
        if not chosen:
            raise UsageError(f"run {run_id} is a sweep's parent run with no best trial yet; pass a trial's run id")
        run = chosen[0]
        notes.append(f"run {run_id} is a sweep; using its best trial {best} (run {run.info.run_id})")
    rid = run.info.run_id
    local = local_artifact_dir(run.info.artifact_uri)
    if local is not None:
        if not (local / "spec.yaml").is_file():
            raise UsageError(f"run {rid} has no spec.yaml artifact; it was not made by harness")
        src = _from_path(local, last)
        return _Source(src.checkpoint, src.spec_yaml, src.tokenizer_json, rid, notes + src.notes)
    # A remote artifact store: fetch the three files.
    names = {p.path for p in client.list_artifacts(rid, "checkpoints")}
    want, other = ("checkpoints/last.pt", "checkpoints/best.pt") if last else ("checkpoints/best.pt", "checkpoints/last.pt")
    pick = want if want in names else other if other in names else None
    if pick is None:
        raise UsageError(f"run {rid} has no {want} or {other} artifact (checkpoint uploads are off, or it never saved one)")
    if pick != want:
        notes.append(f"run {rid} has no {want}; using {other}")
    files = [client.download_artifacts(rid, p, str(tmp)) for p in ("spec.yaml", "tokenizer.json", pick)]
    return _Source(Path(files[2]), Path(files[0]), Path(files[1]), rid, notes)


def generate(target: str | Path, prompt: str = "", *, max_tokens: int = 200, temperature: float = 0.8, top_k: int | None = 40,
             seed: int = 0, last: bool = False, uri: str | None = None) -> Generation:
    """Sample ``max_tokens`` tokens after ``prompt`` from a run's best (``last=True``: last) checkpoint.

    Deterministic for a given ``seed``. ``temperature=0`` is greedy; ``top_k`` None or 0 samples from the whole
    vocabulary. An empty prompt starts from the BOS token (or a newline). With a BOS tokenizer, document boundaries
    in the completion are shown as newlines.
    """
    import numpy as np
    import torch

    from harness.data.tokenizers import tokenizer_from_dict
    from harness.errors import SpecError
    from harness.model import GPT
    from harness.spec import read_yaml, spec_from_dict
    from harness.tracking.lookup import RUN_ID_PREFIX
    from harness.train.checkpoint import load_checkpoint

    if max_tokens < 0:
        raise UsageError(f"--max-tokens must be 0 or more (got {max_tokens})")
    if temperature < 0:
        raise UsageError(f"--temperature must be 0 (greedy) or more (got {temperature})")
    if top_k is not None and top_k < 0:
        raise UsageError(f"--top-k must be 0 (off) or more (got {top_k})")
    with tempfile.TemporaryDirectory(prefix="harness-generate-") as tmp:
        text_target = str(target)
        path = Path(text_target).expanduser()
        if path.exists():
            src = _from_path(path, last)
        elif RUN_ID_PREFIX.match(text_target):
            src = _from_run(text_target, last, uri, Path(tmp))
        else:
            raise UsageError(f"'{text_target}' is neither a checkpoint file nor a run id (or a unique prefix of one)")
        state = load_checkpoint(src.checkpoint)
        try:
            spec = spec_from_dict(read_yaml(src.spec_yaml), file=str(src.spec_yaml))
            tok = tokenizer_from_dict(json.loads(src.tokenizer_json.read_text(encoding="utf-8")))
        except (OSError, ValueError, SpecError) as exc:
            raise HarnessError(f"cannot read the run's spec or tokenizer next to {src.checkpoint}: {exc}") from None
    emb = state["model"].get("tok_emb.weight")
    if emb is not None and int(emb.shape[0]) != tok.vocab_size:
        raise HarnessError(f"{src.checkpoint}: the model has a vocabulary of {int(emb.shape[0])} but the saved tokenizer has "
                           f"{tok.vocab_size}; they do not belong together")
    model = GPT(spec.model, vocab_size=tok.vocab_size, max_seq_len=spec.data.seq_len)
    model.load_state_dict(state["model"])
    model.eval()
    notes = list(src.notes)
    if prompt:
        try:
            ids = [int(i) for i in tok.encode(prompt)]
        except HarnessError as exc:
            raise UsageError(f"the prompt cannot be encoded with this run's tokenizer: {exc}") from None
        if not ids:
            raise UsageError("the prompt encodes to no tokens")
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
    out = model.generate(idx, int(max_tokens), temperature=float(temperature), top_k=top_k or None, generator=g)
    new = [int(i) for i in out[0, len(ids) :].tolist()]
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
    parts, cur = [], []
    for i in ids:
        if i == bos:
            parts.append(tok.decode(cur))
            cur = []
        else:
            cur.append(i)
    parts.append(tok.decode(cur))
    return "\n".join(parts)
