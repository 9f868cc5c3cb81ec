"""``harness generate``: text from a run's checkpoint."""

from __future__ import annotations

import argparse
from typing import Any

from harness.cli.output import print_err

__all__ = ["add_commands"]


def add_commands(sub: Any) -> None:
    g = sub.add_parser("generate", help="sample text from a run's best (or --last) checkpoint")
    g.add_argument("target", help="run id (a sweep parent id: its best trial), checkpoint file, or artifact folder")
    g.add_argument("--prompt", default="", help="text to continue (default: start of a document); an instruction-tuned run: the instruction")
    g.add_argument("--input", default="", dest="input_text", help="an instruction-tuned run: the instruction's input (optional)")
    g.add_argument("--max-tokens", type=int, default=200, dest="max_tokens")
    g.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    g.add_argument("--top-k", type=int, default=40, dest="top_k", help="sample among the k likeliest tokens; 0 = all")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--last", action="store_true", help="use checkpoints/last.pt instead of best.pt")
    g.set_defaults(fn=cmd_generate)


def cmd_generate(args: argparse.Namespace) -> int:
    from harness.generate import generate

    out = generate(args.target, args.prompt, max_tokens=args.max_tokens, temperature=args.temperature, top_k=args.top_k,
                   seed=args.seed, last=args.last, input_text=args.input_text)
    for n in out.notes:
        print_err(f"note: {n}")
    print_err(f"checkpoint {out.checkpoint}" + (f" (step {out.step})" if out.step is not None else ""))
    print(out.text)
    return 0
