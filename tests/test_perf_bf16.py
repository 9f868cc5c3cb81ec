"""bf16: autocast matmuls with attention kept in fp32 on the CPU, losses within tolerance of fp32; and what
``precision: auto`` picks on which hardware (a pure function of the device and the CPU's flags)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from harness.data.batches import eval_batches, make_batches
from harness.data.prepare import prepare
from harness.model import GPT
from harness.spec import ModelSpec, spec_from_dict
from harness.train import StepEnd, Trainer
from harness.train.runtime import bf16_pays, resolve_precision


def _fit(spec_dict: dict, folder) -> tuple[list[float], dict[str, float], Trainer]:
    spec = spec_from_dict(spec_dict)
    prep = prepare(spec.data)
    torch.manual_seed(spec.seed)
    model = GPT(spec.model, vocab_size=prep.tokenizer.vocab_size, max_seq_len=spec.data.seq_len)
    evals = {"val": eval_batches(prep, spec.data, split="val", batch_size=spec.train.batch_size, n_batches=2)}
    losses: list[float] = []
    tr = Trainer(model, spec.train, make_batches(prep, spec.data, batch_size=spec.train.batch_size, seed=spec.seed),
                 eval_sets=evals, checkpoint_dir=folder, device=torch.device("cpu"),
                 callbacks=[lambda e: losses.append(e.loss) if isinstance(e, StepEnd) else None])
    result = tr.fit()
    return losses, result.last_eval, tr


def test_bf16_trains_within_tolerance_of_fp32(tmp_path, tiny_spec_dict):
    tiny_spec_dict["train"].update(max_steps=40, optimizer={"name": "adamw", "lr": 3e-3})
    out = {}
    for precision in ("fp32", "bf16"):
        tiny_spec_dict["train"]["precision"] = precision
        out[precision] = _fit(tiny_spec_dict, tmp_path / precision)
    (l32, e32, t32), (l16, e16, t16) = out["fp32"], out["bf16"]
    assert t16.precision == "bf16" and t16.autocast and not t32.autocast
    assert l16 != l32  # bf16 really ran
    assert all(math.isfinite(v) for v in l16)
    # bf16 keeps 8 bits of mantissa: each step's loss differs by rounding, and the training stays on the same path
    assert l16[0] == pytest.approx(l32[0], abs=0.02)
    assert sum(l16[-10:]) / 10 == pytest.approx(sum(l32[-10:]) / 10, abs=0.05)
    assert e16["val/loss"] == pytest.approx(e32["val/loss"], abs=0.05)


def test_attention_runs_in_fp32_under_bf16_autocast(monkeypatch):
    seen = []
    real = F.scaled_dot_product_attention

    def spy(q, k, v, *a, **kw):
        seen.append(q.dtype)
        return real(q, k, v, *a, **kw)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    torch.manual_seed(0)
    model = GPT(ModelSpec(d_model=16, n_heads=2, n_layers=2, d_ff=32), vocab_size=11, max_seq_len=8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(torch.zeros(2, 8, dtype=torch.long))
    assert logits.dtype == torch.bfloat16  # the matmuls ran in bf16 ...
    assert seen == [torch.float32, torch.float32]  # ... and attention in fp32 (bf16 flash-attention backward is slow)


@pytest.mark.parametrize(("name", "device", "flags", "expected"), [
    ("fp32", "cpu", {"avx512_bf16"}, "fp32"),
    ("bf16", "cpu", set(), "bf16"),  # asked for: given, even where it does not pay
    ("auto", "cpu", {"avx512f", "avx512_bf16"}, "bf16"),
    ("auto", "cpu", {"amx_bf16", "amx_tile"}, "bf16"),
    ("auto", "cpu", {"avx2", "fma", "avx512f"}, "fp32"),  # no native bf16 dot products: emulated, slower
    ("auto", "cpu", set(), "fp32"),
    ("auto", "meta", {"avx512_bf16"}, "fp32"),  # neither CPU nor CUDA: fp32
])
def test_precision_auto(name, device, flags, expected):
    assert resolve_precision(name, torch.device(device), cpu_flags=flags) == expected


def test_bf16_pays_on_cuda_only_with_bf16_support(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert bf16_pays(torch.device("cuda")) is False
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert bf16_pays(torch.device("cuda")) is True
