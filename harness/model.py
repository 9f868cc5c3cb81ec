"""A small GPT in the nanoGPT mould: token + position embeddings, pre-LN blocks, causal attention, MLP.

Shapes use B = batch, T = sequence length, C = d_model, H = heads, V = vocabulary.

Every dropout site draws its mask from the model's one :class:`~harness.dropout.MaskStream` (see harness.dropout for
why not ``F.dropout``); the stream is seeded from torch's generator right after the weights, so the spec's seed
decides both.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from harness.dropout import Dropout, MaskStream
from harness.spec.schema import ModelSpec

__all__ = ["GPT"]


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: ModelSpec, stream: MaskStream):
        super().__init__()
        self.n_heads = cfg.n_heads
        # One projection for q, k and v: a single matmul is faster than three small ones.
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=cfg.bias)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model, bias=cfg.bias)
        self.dropout = cfg.dropout
        self.attn_drop = Dropout(cfg.dropout, stream)
        self.resid_drop = Dropout(cfg.dropout, stream)
        self._causal_bias: dict[tuple[int, torch.dtype, torch.device], torch.Tensor] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, C) -> (B, T, C), before the residual dropout (the block applies it with the residual add)."""
        B, T, C = x.shape
        H = self.n_heads
        qkv = self.qkv(x).view(B, T, 3, H, C // H)  # heads attend independently
        if self.attn_drop.active and x.device.type == "cpu":
            y = self._attend_with_dropout(qkv)
        else:
            # the fused kernel takes strided (B, H, T, C/H) views as they are; is_causal masks the future inside it
            q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
            y = self._sdpa(q, k, v)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # re-assemble heads: (B, T, C)
        return self.proj(y)

    def _sdpa(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        dropout_p = self.dropout if self.training else 0.0
        if q.device.type != "cpu" or not (q.dtype == torch.bfloat16 or torch.is_autocast_enabled("cpu")):
            return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True)
        # bf16 on the CPU: attention itself runs in fp32. torch's CPU flash-attention backward is much slower in bf16
        # than in fp32, enough to eat the whole gain of the bf16 matmuls (bench/RESULTS.md, section 4); the casts are
        # cheap next to it.
        with torch.autocast("cpu", enabled=False):
            y = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), dropout_p=dropout_p, is_causal=True)
        return y.to(q.dtype)

    def _attend_with_dropout(self, qkv: torch.Tensor) -> torch.Tensor:
        """Attention with dropout on the probabilities, as SDPA's reference path computes it, but with a mask from the
        model's stream. (B, T, 3, H, hs) -> (B, H, T, hs)."""
        B, T, _, H, hs = qkv.shape
        # unbind, not indexing: its backward writes the three gradients into one (B, T, 3, H, hs) buffer, where three
        # selects would each fill a zero buffer of that size and add them up.
        q, k, v = qkv.unbind(2)  # (B, T, H, hs) each
        # Batched matmuls want contiguous operands: q and v as (B*H, T, hs), k already transposed as (B*H, hs, T).
        q = q.transpose(1, 2).reshape(B * H, T, hs)
        k_t = k.permute(0, 2, 3, 1).reshape(B * H, hs, T)
        v = v.transpose(1, 2).reshape(B * H, T, hs)
        # scores = q k^T / sqrt(hs) + causal bias (0 on and below the diagonal, -inf above), one fused op: (B*H, T, T)
        att = torch.baddbmm(self._bias(T, q.dtype, q.device), q, k_t, alpha=1.0 / math.sqrt(hs))
        att = self.attn_drop(att.softmax(dim=-1))  # every row keeps its diagonal, so no row is all -inf
        return torch.bmm(att, v).view(B, H, T, hs)

    def _bias(self, T: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        key = (T, dtype, device)
        bias = self._causal_bias.get(key)
        if bias is None:
            bias = torch.full((T, T), float("-inf"), dtype=dtype, device=device).triu_(1)
            self._causal_bias[key] = bias
        return bias


class MLP(nn.Module):
    def __init__(self, cfg: ModelSpec):
        super().__init__()
        self.fc = nn.Linear(cfg.d_model, cfg.d_ff, bias=cfg.bias)
        self.proj = nn.Linear(cfg.d_ff, cfg.d_model, bias=cfg.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(F.gelu(self.fc(x)))  # (B, T, C) -> (B, T, d_ff) -> (B, T, C); dropout comes with the residual add


class Block(nn.Module):
    """Pre-LN: normalise before each sublayer and add to the residual stream, which keeps gradients well-scaled."""

    def __init__(self, cfg: ModelSpec, stream: MaskStream):
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.d_model, bias=cfg.bias)
        self.attn = CausalSelfAttention(cfg, stream)
        self.ln2 = nn.LayerNorm(cfg.d_model, bias=cfg.bias)
        self.mlp = MLP(cfg)
        self.mlp_drop = Dropout(cfg.dropout, stream)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.attn.resid_drop.residual(x, self.attn(self.ln1(x)))  # x + dropout(attn(ln1(x)))
        return self.mlp_drop.residual(x, self.mlp(self.ln2(x)))  # x + dropout(mlp(ln2(x)))


class GPT(nn.Module):
    def __init__(self, cfg: ModelSpec, *, vocab_size: int, max_seq_len: int):
        super().__init__()
        self.cfg = cfg
        self.vocab_size = vocab_size
        self.max_seq_len = max_seq_len
        self.masks = MaskStream()  # seeded once the weights are drawn (below), so they are what torch's seed alone gives
        self.tok_emb = nn.Embedding(vocab_size, cfg.d_model)
        self.pos_emb = nn.Embedding(max_seq_len, cfg.d_model)
        self.drop = Dropout(cfg.dropout, self.masks)
        self.blocks = nn.ModuleList(Block(cfg, self.masks) for _ in range(cfg.n_layers))
        self.ln_f = nn.LayerNorm(cfg.d_model, bias=cfg.bias)
        self.head = nn.Linear(cfg.d_model, vocab_size, bias=False)
        if cfg.tie_weights:
            self.head.weight = self.tok_emb.weight  # one matrix serves as input embedding and output projection
        self.apply(self._init)
        # Scale residual output projections by 1/sqrt(2 * n_layers) so the residual stream's variance does not grow
        # with depth (GPT-2's initialisation).
        for name, p in self.named_parameters():
            if name.endswith("proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layers))
        # The dropout stream's seed is the next draw of torch's generator, so it follows the run's seed like the weights.
        self.masks.seed(int(torch.randint(0, 2**63 - 1, (1,)).item()))

    @staticmethod
    def _init(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())  # tied weights are counted once by parameters()

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """Token ids (B, T) -> logits (B, T, V)."""
        B, T = idx.shape
        if T > self.max_seq_len:
            raise ValueError(f"sequence of {T} tokens is longer than the model's context of {self.max_seq_len}")
        pos = torch.arange(T, device=idx.device)  # (T,)
        x = self.drop(self.tok_emb(idx) + self.pos_emb(pos))  # (B, T, C)
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))  # (B, T, V)

    @torch.no_grad()
    def generate(self, idx: torch.Tensor, max_new_tokens: int, *, temperature: float = 1.0, top_k: int | None = None,
                 generator: torch.Generator | None = None, stop_id: int | None = None) -> torch.Tensor:
        """Extend ``idx`` (B, T) by sampling; the context is cropped to the model's window."""
        for _ in range(max_new_tokens):
            ctx = idx[:, -self.max_seq_len :]
            logits = self(ctx)[:, -1, :].float()  # (B, V)
            if temperature <= 0:
                nxt = logits.argmax(dim=-1, keepdim=True)
            else:
                logits = logits / temperature
                if top_k is not None and top_k < logits.size(-1):
                    kth = torch.topk(logits, top_k).values[:, -1:]
                    logits = logits.masked_fill(logits < kth, float("-inf"))
                probs = F.softmax(logits, dim=-1)
                nxt = torch.multinomial(probs.cpu(), 1, generator=generator).to(idx.device)  # (B, 1)
            idx = torch.cat([idx, nxt], dim=1)
            if stop_id is not None and bool((nxt == stop_id).all()):
                break
        return idx
