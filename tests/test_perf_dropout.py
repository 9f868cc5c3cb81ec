"""Dropout from the model's mask stream (harness.dropout.MaskStream): the exact drop probability, the 1/(1-p) scaling,
identity at p = 0 and in eval mode, the attention probabilities included, and the same math as torch's reference."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from harness.dropout import Dropout, MaskStream
from harness.model import GPT
from harness.spec import ModelSpec


def _model(dropout: float, seed: int = 0, **kw) -> GPT:
    torch.manual_seed(seed)
    cfg = ModelSpec.model_validate({"d_model": 16, "n_heads": 2, "n_layers": 2, "d_ff": 32, "dropout": dropout, **kw})
    return GPT(cfg, vocab_size=23, max_seq_len=12)


@pytest.mark.parametrize("p", [0.1, 0.25, 0.5, 1 / 3, 0.9])
def test_drop_rate_and_scaling(p):
    n = 1 << 21
    mask = MaskStream(seed=7).scaled_keep((n,), p)
    scale = torch.tensor(1.0 / (1.0 - p), dtype=torch.float32)
    kept = mask != 0
    assert torch.equal(mask[kept], scale.expand(int(kept.sum())))  # every kept value is exactly 1/(1-p)
    rate = 1.0 - kept.double().mean().item()
    sigma = math.sqrt(p * (1 - p) / n)
    assert abs(rate - p) < 5 * sigma, (rate, p)  # fixed seed: deterministic, 5 sigma is ~0.001 here
    assert abs(mask.double().mean().item() - 1.0) < 5 * sigma / (1 - p)  # the scaling keeps the mean


@pytest.mark.parametrize("p", [0.1, 0.2, 0.3, 0.5, 1 / 3, 0.001, 2**-11])
def test_threshold_is_the_exact_probability(p):
    # A draw r (uniform over 2**64) is dropped when r < T: P = T / 2**64, which must be p itself, not p rounded to
    # 1/256 (one byte) or 2**-32.
    t = MaskStream().drop_threshold(p)
    assert Fraction(t, 2**64) == Fraction(p)


class _CraftedBits:
    """A stand-in bit generator: every top byte is the threshold's top byte (a tie), and the 56 low bits alternate just
    below and just above the threshold's low bits, so exactly every other element must be dropped."""

    def __init__(self, t: int):
        self.t = t

    def random_raw(self, size: int) -> np.ndarray:
        if not hasattr(self, "_ties_next"):
            self._ties_next = True
            top = np.uint64(self.t >> 56)
            word = sum(int(top) << (8 * i) for i in range(8))  # 8 tie bytes per word
            return np.full(size, word, dtype=np.uint64)
        low = self.t & ((1 << 56) - 1)
        return np.array([low - 1 if i % 2 == 0 else low for i in range(size)], dtype=np.uint64)


def test_tied_top_bytes_are_decided_by_the_low_bits():
    stream = MaskStream()
    p = 0.1
    stream.rng = type("G", (), {"bit_generator": _CraftedBits(stream.drop_threshold(p))})()
    mask = stream.scaled_keep((64,), p)
    assert torch.equal(mask == 0, torch.arange(64) % 2 == 0)  # low bits below T's: dropped; equal: kept


def test_p_zero_and_eval_mode_are_the_identity():
    x = torch.randn(4, 8)
    drop = Dropout(0.0, MaskStream())
    assert drop(x) is x
    drop = Dropout(0.5, MaskStream()).eval()
    assert drop(x) is x
    idx = torch.randint(0, 23, (3, 12), generator=torch.Generator().manual_seed(0))
    model = _model(0.0)
    state = model.masks.state_dict()
    train_out = model.train()(idx)
    assert torch.equal(train_out, model.eval()(idx))
    assert model.masks.state_dict() == state  # p = 0 draws nothing


def test_every_dropout_site_draws_a_mask_attention_included(monkeypatch):
    shapes = []
    real = MaskStream.scaled_keep

    def record(self, shape, p, dtype=torch.float32):
        shapes.append((tuple(shape), p))
        return real(self, shape, p, dtype)

    monkeypatch.setattr(MaskStream, "scaled_keep", record)
    model = _model(0.2).train()
    B, T, C, H, L = 3, 12, 16, 2, 2
    model(torch.zeros(B, T, dtype=torch.long))
    expected = [((B, T, C), 0.2)] + [((B * H, T, T), 0.2), ((B, T, C), 0.2), ((B, T, C), 0.2)] * L
    assert shapes == expected  # embedding; then per block: attention probabilities, attention output, MLP output


def test_attention_dropout_matches_the_reference_math():
    # The attention with dropout computes softmax(q k^T / sqrt(hs) + causal) * mask @ v, as SDPA's reference path does
    # with a given mask. Recompute it from the same masks with plain torch ops.
    model = _model(0.3)
    attn = model.blocks[0].attn.train()
    x = torch.randn(2, 12, 16, generator=torch.Generator().manual_seed(1))
    masks = []
    real = attn.attn_drop.stream.scaled_keep

    def keep(shape, p, dtype=torch.float32):
        m = real(shape, p, dtype)
        masks.append(m)
        return m

    attn.attn_drop.stream.scaled_keep = keep
    out = attn(x)
    (m,) = masks
    B, T, C = x.shape
    q, k, v = attn.qkv(x).split(C, dim=2)
    q, k, v = (t.view(B, T, 2, C // 2).transpose(1, 2) for t in (q, k, v))
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(C // 2)
    scores = scores.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
    y = (scores.softmax(-1) * m.view(B, 2, T, T)) @ v
    ref = attn.proj(y.transpose(1, 2).reshape(B, T, C))
    assert torch.allclose(out, ref, atol=1e-6, rtol=1e-5)


def test_dropout_gradient_is_the_scaled_mask():
    stream = MaskStream(seed=3)
    x = torch.randn(5, 7, requires_grad=True)
    drop = Dropout(0.4, stream)
    state = stream.state_dict()
    out = drop(x)
    out.sum().backward()
    stream.load_state_dict(state)
    mask = stream.scaled_keep((5, 7), 0.4)
    assert torch.equal(out, x.detach() * mask)
    assert torch.equal(x.grad, mask)


def test_residual_dropout_is_x_plus_dropout():
    stream = MaskStream(seed=4)
    drop = Dropout(0.25, stream)
    x, h = torch.randn(6, 5), torch.randn(6, 5)
    state = stream.state_dict()
    out = drop.residual(x, h)
    stream.load_state_dict(state)
    # one fused op (x + h * mask) against two: equal up to the rounding of the product (an ulp or so)
    assert torch.allclose(out, x + h * stream.scaled_keep((6, 5), 0.25), atol=1e-6, rtol=0)


def test_mask_stream_follows_the_seed_and_not_torchs_later_draws():
    idx = torch.randint(0, 23, (2, 12), generator=torch.Generator().manual_seed(0))
    a = _model(0.2, seed=5).train()
    b = _model(0.2, seed=5).train()
    torch.rand(1000)  # other users of torch's generator after the model is built change nothing
    assert torch.equal(a(idx), b(idx))
    assert not torch.equal(a(idx), _model(0.2, seed=6).train()(idx))


def test_training_loss_matches_between_fp32_paths():
    # dropout 0: the training forward (fused attention) equals the eval forward bit for bit; a tiny p (never drops)
    # takes the mask path and agrees within float tolerance (a different but equivalent attention computation).
    idx = torch.randint(0, 23, (4, 12), generator=torch.Generator().manual_seed(2))
    y = torch.randint(0, 23, (4, 12), generator=torch.Generator().manual_seed(3))
    ref = F.cross_entropy(_model(0.0).eval()(idx).reshape(-1, 23), y.reshape(-1))
    tiny = F.cross_entropy(_model(1e-30).train()(idx).reshape(-1, 23), y.reshape(-1))
    assert tiny.item() == pytest.approx(ref.item(), abs=1e-5)
