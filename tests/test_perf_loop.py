"""The loop's speed changes keep the numbers bit-identical: the multi-tensor optimizers against torch's per-parameter
loop, the word-wise tie search of the mask stream against a plain scan, and the attention's unbind against indexing.
The fused optimizers (``optimizer.implementation: fused``) are the exception the spec names: within float rounding.
(Clipping only when a clip is set: tests/test_trainer_units.py.)"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from harness.dropout import MaskStream, _ties
from harness.model import GPT
from harness.spec import ModelSpec, TrainSpec
from harness.train.optim import make_optimizer, resolve_implementation


def _model(dropout: float = 0.2) -> GPT:
    torch.manual_seed(0)
    cfg = ModelSpec.model_validate({"d_model": 16, "n_heads": 2, "n_layers": 2, "d_ff": 32, "dropout": dropout})
    return GPT(cfg, vocab_size=23, max_seq_len=12)


@pytest.mark.parametrize("name", ["adamw", "adam", "sgd"])
def test_optimizer_step_is_bit_identical_to_the_per_parameter_loop(name):
    fast, slow = _model(), _model()
    spec = TrainSpec.model_validate({"max_steps": 1, "batch_size": 1,
                                     "optimizer": {"name": name, "lr": 3e-3, "weight_decay": 0.1, "momentum": 0.9 if name == "sgd" else 0.0}})
    opt = make_optimizer(fast, spec)
    assert all(group["foreach"] for group in opt.param_groups)
    ref = type(opt)(_groups_like(opt, fast, slow), foreach=False)  # the same groups, torch's per-parameter loop
    _step_with_the_same_gradients([(fast, opt), (slow, ref)], steps=5)
    for a, b in zip(fast.parameters(), slow.parameters()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("name", ["adamw", "adam", "sgd"])
def test_fused_optimizers_agree_with_foreach_to_float_rounding(name):
    # fused runs each group's whole update in one kernel: the same math, in another order of float operations
    settings = {"name": name, "lr": 3e-3, "weight_decay": 0.1, "momentum": 0.9 if name == "sgd" else 0.0}
    a, b = _model(), _model()
    foreach = make_optimizer(a, TrainSpec.model_validate({"max_steps": 1, "batch_size": 1, "optimizer": settings}))
    fused = make_optimizer(b, TrainSpec.model_validate({"max_steps": 1, "batch_size": 1,
                                                        "optimizer": {**settings, "implementation": "fused"}}))
    assert all(g["foreach"] and not g["fused"] for g in foreach.param_groups)  # auto on the CPU
    assert all(g["fused"] and not g["foreach"] for g in fused.param_groups)
    _step_with_the_same_gradients([(a, foreach), (b, fused)], steps=20)
    for x, y in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6)


def test_auto_is_fused_on_cuda_and_foreach_elsewhere():
    assert resolve_implementation("auto", torch.device("cuda")) == "fused"
    assert resolve_implementation("auto", torch.device("cpu")) == "foreach"
    assert resolve_implementation("auto", torch.device("mps")) == "foreach"
    assert resolve_implementation("fused", torch.device("cpu")) == "fused"
    assert resolve_implementation("foreach", torch.device("cuda")) == "foreach"


def _step_with_the_same_gradients(twins: list[tuple[GPT, torch.optim.Optimizer]], *, steps: int) -> None:
    """``steps`` optimizer steps on each (model, optimizer), every model given the same random gradients."""
    gen = torch.Generator().manual_seed(1)
    for _ in range(steps):
        grads = [torch.randn(p.shape, generator=gen) for p in twins[0][0].parameters()]
        for model, opt in twins:
            for p, g in zip(model.parameters(), grads):
                p.grad = g.clone()
            opt.step()


def _groups_like(opt: torch.optim.Optimizer, model: GPT, twin: GPT) -> list[dict]:
    """opt's parameter groups over ``model``, settings included, rebuilt over the same parameters of ``twin``."""
    twin_of = {id(a): b for a, b in zip(model.parameters(), twin.parameters())}
    return [{**{k: v for k, v in g.items() if k not in ("params", "foreach")}, "params": [twin_of[id(p)] for p in g["params"]]}
            for g in opt.param_groups]


@pytest.mark.parametrize("n", [1, 7, 8, 9, 255, 4096, 100_003])
@pytest.mark.parametrize("t_hi", [0, 25, 255])
def test_tie_search_finds_what_a_full_scan_finds(n, t_hi):
    rng = np.random.default_rng(n + t_hi)
    words = rng.integers(0, 2**64, size=(n + 7) // 8, dtype=np.uint64)
    top = words.view(np.uint8).copy()
    top[rng.integers(0, top.size, size=max(1, top.size // 50))] = t_hi  # plenty of ties, some past n
    assert np.array_equal(_ties(top, t_hi, n), np.flatnonzero(top[:n] == t_hi))


def test_masks_match_the_plain_construction():
    # the mask as the docstring defines it, built the slow way from the same stream: a draw is dropped when its top byte
    # is below T's, or equal to it and the low 56 bits are below T's
    p, shape = 0.1, (3, 50, 7)
    n = math.prod(shape)
    fast, ref = MaskStream(seed=11), MaskStream(seed=11)
    for _ in range(3):
        got = fast.scaled_keep(shape, p)
        t = ref.drop_threshold(p)
        top = ref.rng.bit_generator.random_raw((n + 7) // 8).view(np.uint8)[:n].astype(np.int64)
        keep = top > (t >> 56)
        ties = np.flatnonzero(top == (t >> 56))
        low = ref.rng.bit_generator.random_raw(ties.size) & np.uint64((1 << 56) - 1)
        keep[ties] = low >= np.uint64(t & ((1 << 56) - 1))
        want = torch.from_numpy(keep.astype(np.float32)).mul_(1.0 / (1.0 - p)).view(shape)
        assert torch.equal(got, want)
    assert fast.state_dict() == ref.state_dict()


def test_attention_gradients_match_indexing_q_k_v():
    # unbind's backward writes the q, k, v gradients into one buffer; indexing's adds three zero-padded ones: equal
    model = _model(0.3)
    attn = model.blocks[0].attn.train()
    x = torch.randn(2, 12, 16, generator=torch.Generator().manual_seed(2), requires_grad=True)
    state = model.masks.state_dict()
    attn(x).square().sum().backward()
    fast = [x.grad.clone()] + [p.grad.clone() for p in attn.parameters()]

    x.grad = None
    attn.zero_grad(set_to_none=True)
    model.masks.load_state_dict(state)
    B, T, C = x.shape
    H, hs = 2, C // 2
    qkv = attn.qkv(x).view(B, T, 3, H, hs)
    q = qkv[:, :, 0].transpose(1, 2).reshape(B * H, T, hs)
    k_t = qkv[:, :, 1].permute(0, 2, 3, 1).reshape(B * H, hs, T)
    v = qkv[:, :, 2].transpose(1, 2).reshape(B * H, T, hs)
    att = torch.baddbmm(attn._bias(T, q.dtype, q.device), q, k_t, alpha=1.0 / math.sqrt(hs))
    att = attn.attn_drop(att.softmax(dim=-1))
    y = torch.bmm(att, v).view(B, H, T, hs).transpose(1, 2).contiguous().view(B, T, C)
    attn.proj(y).square().sum().backward()
    slow = [x.grad] + [p.grad for p in attn.parameters()]
    assert all(torch.equal(a, b) for a, b in zip(fast, slow))

