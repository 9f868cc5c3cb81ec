"""Corpora at a researcher's scale: harness's token cache against a minimal nanoGPT-style baseline, side by side.

    python bench/bench_corpus.py                      # 1 MB, 10 MB, 100 MB, 1000 MB of text; both tokenizers
    python bench/bench_corpus.py --mb 1 20 --tokenizers char   # a quick look (the size the tests' machine allows)

For each size, a corpus of distinct UTF-8 lines (Shakespeare's works, each line tagged with its copy number, so no two
copies are alike) is written once into a scratch folder, then, each in its own process (peak RSS from wait4):

* baseline (tiktoken only): read in 1 MB pieces, ``encode_ordinary_batch`` 64 at a time on every core, ids appended to
  a uint16 file when the vocabulary fits (else uint32), then 3 batches of random windows from ``np.memmap``: nanoGPT's
  prepare.py and get_batch;
* harness first: ``harness run`` of a 1-layer model for 3 steps with an empty token cache (it tokenizes; tiktoken is
  the full cl100k_base vocabulary at batch 4, so the model is the same at every size and the RSS that grows is data);
* harness again: the same run with the cache filled (it maps the file);
* three workers: three such runs at once on the filled cache (their RSS summed).

The figures to reach (issue 26): at 1 GB with tiktoken, the first run's preparation within 1.25x the baseline's wall
time; a later run no more than 2 s slower than the run on 1 MB; peak RSS at 1 GB at most 300 MB above 10 MB's; three
workers' RSS together below three times one run's.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

BASELINE = r"""
import sys, time, numpy as np, tiktoken, os
from harness.data.tokenizers import TiktokenTokenizer
path, out, threads = sys.argv[1], sys.argv[2], int(sys.argv[3])
enc = TiktokenTokenizer("cl100k_base")._enc  # the same offline ranks harness reads
dtype = np.uint16 if enc.max_token_value < 1 << 16 else np.uint32
t = time.perf_counter()
with open(path, "rb") as f, open(out, "wb") as g:
    carry = b""
    while True:
        pieces = []
        for _ in range(64):
            block = f.read(1 << 20)
            if not block:
                break
            buf = carry + block
            cut = buf.rfind(b"\n") + 1 or len(buf)
            pieces.append(buf[:cut].decode("utf-8"))
            carry = buf[cut:]
        if not pieces:
            if carry:
                g.write(np.asarray(enc.encode_ordinary(carry.decode()), dtype=dtype).tobytes())
            break
        for ids in enc.encode_ordinary_batch(pieces, num_threads=threads):
            g.write(np.asarray(ids, dtype=dtype).tobytes())
prep = time.perf_counter() - t
data = np.memmap(out, dtype=dtype, mode="r")
rng = np.random.default_rng(0)
for _ in range(3):
    ix = rng.integers(0, len(data) - 65, 32)
    x = np.stack([data[i : i + 64].astype(np.int64) for i in ix])
print(prep)
"""


def _corpus(folder: Path, mb: int) -> Path:
    """``mb`` MB of distinct lines (copies of the shipped Shakespeare works, each line tagged with its copy)."""
    path = folder / f"corpus_{mb}mb.txt"
    if path.exists():
        return path
    from harness.data.corpora import list_corpora, load_text

    works = "".join(load_text(c) for c in list_corpora() if c.startswith("shakespeare/")).splitlines()
    target = mb * 1_000_000
    written, copy = 0, 0
    with open(path, "w", encoding="utf-8") as f:
        while written < target:
            block = "".join(f"{line} [{copy}]\n" for line in works)
            block = block[: target - written] if written + len(block) > target else block
            f.write(block)
            written += len(block.encode("utf-8"))
            copy += 1
    return path


def _measure(cmd: list[str], env: dict[str, str], n: int = 1) -> tuple[float, list[float]]:
    """Wall time of ``n`` copies of ``cmd`` started together, and each one's peak RSS in MB (wait4's ru_maxrss)."""
    t = time.perf_counter()
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for _ in range(n)]
    rss = []
    for p in procs:
        _, status, usage = os.wait4(p.pid, 0)
        p.returncode = os.waitstatus_to_exitcode(status)
        if p.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} failed: {p.stderr.read().decode() if p.stderr else ''}")
        rss.append(usage.ru_maxrss / 1024)
    return time.perf_counter() - t, rss


def _spec(folder: Path, corpus: Path, tokenizer: str) -> Path:
    # the full cl100k_base vocabulary and a small batch: the model is then the same at every corpus size (a compact
    # vocabulary grows with the corpus, and its logits with it), so what grows with the corpus is harness's data
    tok = '"tiktoken:cl100k_base"' if tokenizer == "tiktoken" else "char"
    batch = 4 if tokenizer == "tiktoken" else 32
    spec = folder / f"spec_{corpus.stem}_{tokenizer}.yaml"
    spec.write_text(f"""name: bench_corpus
data: {{corpus: {corpus}, tokenizer: {tok}, seq_len: 64, sampling: windows}}
model: {{d_model: 32, n_heads: 2, n_layers: 1, d_ff: 64}}
train: {{max_steps: 3, batch_size: {batch}, optimizer: {{lr: 1.0e-3}}, eval: {{every_steps: 3, batches: 2}}, threads: 1}}
tracking: {{sample_tokens: 0}}
""", encoding="utf-8")
    return spec


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mb", type=int, nargs="+", default=[1, 10, 100, 1000], help="corpus sizes in MB")
    ap.add_argument("--tokenizers", nargs="+", default=["char", "tiktoken"], choices=["char", "tiktoken"])
    ap.add_argument("--scratch", help="folder for the corpora (kept between runs); default a temporary one")
    ap.add_argument("--workers", type=int, default=3, help="concurrent runs on the filled cache (0: skip)")
    args = ap.parse_args()
    scratch = Path(args.scratch) if args.scratch else Path(tempfile.mkdtemp(prefix="bench_corpus_"))
    scratch.mkdir(parents=True, exist_ok=True)
    threads = len(os.sched_getaffinity(0))
    rows = []
    for mb in args.mb:
        corpus = _corpus(scratch, mb)
        for tokenizer in args.tokenizers:
            cache = scratch / f"cache_{mb}_{tokenizer}"
            shutil.rmtree(cache, ignore_errors=True)
            env = {**os.environ, "HARNESS_CACHE_DIR": str(cache), "MLFLOW_TRACKING_URI": f"sqlite:///{scratch}/mlflow.db",
                   "PYTHONPATH": str(ROOT)}
            row: dict = {"mb": mb, "tokenizer": tokenizer}
            if tokenizer == "tiktoken":
                out = scratch / "baseline.bin"
                wall, (rss,) = _measure([sys.executable, "-c", BASELINE, str(corpus), str(out), str(threads)], env)
                row.update(baseline_s=round(wall, 2), baseline_rss_mb=round(rss))
                out.unlink(missing_ok=True)
            spec = _spec(scratch, corpus, tokenizer)
            cmd = [sys.executable, "-m", "harness", "run", str(spec), "-q"]
            wall, (rss,) = _measure(cmd, env)
            row.update(first_s=round(wall, 2), first_rss_mb=round(rss))
            wall, (rss,) = _measure(cmd, env)
            row.update(again_s=round(wall, 2), again_rss_mb=round(rss))
            if args.workers:
                wall, rss_all = _measure(cmd, env, n=args.workers)
                row.update(workers=args.workers, workers_s=round(wall, 2), workers_rss_mb=round(sum(rss_all)))
            print(json.dumps(row), flush=True)
            rows.append(row)
            shutil.rmtree(cache, ignore_errors=True)
    print(f"\n| MB | tokenizer | baseline s | first run s | later run s | peak RSS first / later MB | {args.workers} workers RSS MB |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['mb']} | {r['tokenizer']} | {r.get('baseline_s', '-')} | {r['first_s']} | {r['again_s']} | "
              f"{r['first_rss_mb']} / {r['again_rss_mb']} | {r.get('workers_rss_mb', '-')} |")
    if not args.scratch:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
