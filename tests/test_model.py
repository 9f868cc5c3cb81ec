"""The GPT module: shapes, causality, weight tying, parameter count and initial loss."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from harness.model import GPT
from harness.spec import ModelSpec, estimate_parameters


def _cfg(**kw) -> ModelSpec:
    return ModelSpec.model_validate({"d_model": 16, "n_heads": 2, "n_layers": 1, "d_ff": 32, **kw})


def _model(vocab: int = 37, seq_len: int = 16, seed: int = 0, **kw) -> GPT:
    torch.manual_seed(seed)
    return GPT(_cfg(**kw), vocab_size=vocab, max_seq_len=seq_len)


def test_output_shapes():
    model = _model(vocab=37, seq_len=16, n_layers=2)
    for T in (1, 7, 16):
        idx = torch.randint(0, 37, (3, T), generator=torch.Generator().manual_seed(T))
        logits = model(idx)
        assert logits.shape == (3, T, 37)
        assert logits.dtype == torch.float32
        assert torch.isfinite(logits).all()


def test_longer_than_context_is_refused():
    model = _model(seq_len=8)
    with pytest.raises(ValueError, match="longer than the model's context of 8"):
        model(torch.zeros(1, 9, dtype=torch.long))


@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_causal_future_tokens_do_not_change_past_logits(dropout):
    model = _model(vocab=50, seq_len=16, n_layers=2, dropout=dropout).eval()
    g = torch.Generator().manual_seed(1)
    idx = torch.randint(0, 50, (2, 16), generator=g)
    base = model(idx)
    for t in (0, 5, 15):
        changed = idx.clone()
        changed[:, t] = (changed[:, t] + 1 + torch.arange(2)) % 50
        out = model(changed)
        # positions before t are unaffected, exactly
        assert torch.equal(out[:, :t], base[:, :t])
        # position t itself does change (so the test can fail)
        assert not torch.allclose(out[:, t], base[:, t])


def test_eval_mode_is_deterministic_with_dropout():
    model = _model(dropout=0.5).eval()
    idx = torch.arange(16)[None, :] % 37
    assert torch.equal(model(idx), model(idx))
    model.train()
    assert not torch.equal(model(idx), model(idx))


def test_tied_weights_share_storage_and_count_once():
    model = _model(vocab=40, tie_weights=True)
    assert model.head.weight is model.tok_emb.weight
    # after a real training step the two are still one tensor: it moved, and head and embedding moved together
    before = model.tok_emb.weight.detach().clone()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    x = torch.randint(0, 40, (2, 16), generator=torch.Generator().manual_seed(0))
    F.cross_entropy(model(x).reshape(-1, 40), x.reshape(-1)).backward()
    opt.step()
    assert not torch.equal(model.tok_emb.weight.detach(), before)
    assert torch.equal(model.head.weight.detach(), model.tok_emb.weight.detach())
    assert model.head.weight.data_ptr() == model.tok_emb.weight.data_ptr()
    untied = _model(vocab=40, tie_weights=False)
    assert untied.head.weight.data_ptr() != untied.tok_emb.weight.data_ptr()
    assert untied.num_parameters() - model.num_parameters() == 40 * 16


@pytest.mark.parametrize(
    "kw",
    [
        {},
        {"tie_weights": True},
        {"bias": False},
        {"bias": False, "tie_weights": True, "n_layers": 3, "d_ff": 48},
        {"d_model": 24, "n_heads": 3, "n_layers": 2, "d_ff": 20},
    ],
)
def test_parameter_count_matches_estimate(kw):
    cfg = _cfg(**kw)
    model = GPT(cfg, vocab_size=29, max_seq_len=12)
    counted = sum(p.numel() for p in model.parameters())  # parameters() yields a tied tensor once
    assert model.num_parameters() == counted
    assert counted == estimate_parameters(cfg, vocab_size=29, seq_len=12)


@pytest.mark.parametrize(("vocab", "seed"), [(65, 0), (65, 1), (300, 2)])
def test_initial_loss_close_to_ln_vocab(vocab, seed):
    model = _model(vocab=vocab, seq_len=16, seed=seed, n_layers=2).eval()
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, vocab, (8, 16), generator=g)
    y = torch.randint(0, vocab, (8, 16), generator=g)
    with torch.no_grad():
        loss = F.cross_entropy(model(x).reshape(-1, vocab), y.reshape(-1)).item()
    assert abs(loss - math.log(vocab)) < 0.3


def test_generate_extends_and_crops_context():
    model = _model(vocab=37, seq_len=8).eval()
    idx = torch.zeros(2, 3, dtype=torch.long)
    out = model.generate(idx, 12, generator=torch.Generator().manual_seed(0))
    assert out.shape == (2, 15)
    assert torch.equal(out[:, :3], idx)
    assert int(out.min()) >= 0 and int(out.max()) < 37
    again = model.generate(idx, 12, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out, again)
    greedy = model.generate(idx, 5, temperature=0)
    assert torch.equal(greedy, model.generate(idx, 5, temperature=0))
