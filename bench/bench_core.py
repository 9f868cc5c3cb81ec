"""Core speed figures, each a ratio measured in one run against a baseline on the same machine.

    python bench/bench_core.py            # all benchmarks
    python bench/bench_core.py tracking   # one of: tracking, batches, loop, threads

* tracking: harness's buffered MLflow writer (log_batch at evaluations) vs one synchronous log_metric call per
  point, into a fresh SQLite store.
* batches: the vectorized window gather vs a per-item Python loop with torch.stack (a Dataset + collate).
* loop: a full harness Trainer step (callbacks, metric buffering, clipping, schedule) vs the textbook's bare loop
  on the same model and data: the harness's per-step overhead.
* threads: a tiny model's training step with 1 vs 2 torch threads.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _best_of(fn, repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def bench_tracking(steps: int = 300, keys: int = 5) -> dict:
    import logging

    logging.getLogger("mlflow").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    from mlflow import MlflowClient

    from harness.tracking import MlflowTracker

    with tempfile.TemporaryDirectory() as tmp:
        client = MlflowClient(tracking_uri=f"sqlite:///{tmp}/mlflow.db")
        exp = client.create_experiment("bench")

        def sync():
            run = client.create_run(exp)
            for s in range(steps):
                for k in range(keys):
                    client.log_metric(run.info.run_id, f"m{k}", float(s), step=s)

        def buffered():
            tracker = MlflowTracker(client, client.create_run(exp).info.run_id)
            for s in range(steps):
                for k in range(keys):
                    tracker.log_metric(f"m{k}", float(s), s)
                if s % 50 == 49:  # one flush per evaluation, as the trainer does
                    tracker.flush()
            tracker.flush()

        t_sync = _best_of(sync, 1)
        t_buf = _best_of(buffered, 3)
    n = steps * keys
    return {"name": "tracking", "baseline": f"sync log_metric: {1e3 * t_sync / steps:.2f} ms/step",
            "harness": f"buffered: {1e3 * t_buf / steps:.3f} ms/step", "speedup": t_sync / t_buf, "points": n}


def bench_batches(batch: int = 64, seq: int = 64, reps: int = 200) -> dict:
    import torch

    from harness.data.batches import Batches

    data = torch.randint(0, 60, (200_000,))
    b = Batches(data, seq_len=seq, stride=1, batch_size=batch, seed=0, mode="epoch")

    def vectorized():
        for _ in range(reps):
            b.next()

    perm = torch.randperm(len(data) - seq - 1)

    def per_item():
        for r in range(reps):
            idx = perm[r * batch:(r + 1) * batch].tolist()
            xs = [data[i:i + seq] for i in idx]
            ys = [data[i + 1:i + seq + 1] for i in idx]
            torch.stack(xs), torch.stack(ys)

    t_vec, t_py = _best_of(vectorized), _best_of(per_item)
    return {"name": "batches", "baseline": f"per-item stack: {1e6 * t_py / reps:.0f} us/batch",
            "harness": f"vectorized gather: {1e6 * t_vec / reps:.0f} us/batch", "speedup": t_py / t_vec}


def _tiny_setup(threads: int | None = None):
    import torch

    from harness.data.batches import Batches
    from harness.model import GPT
    from harness.spec import ModelSpec, TrainSpec

    if threads:
        torch.set_num_threads(threads)
    cfg = ModelSpec(d_model=64, n_heads=4, n_layers=4, d_ff=256, dropout=0.1)
    torch.manual_seed(0)
    data = torch.randint(0, 60, (1026,))
    train = TrainSpec(max_steps=60, batch_size=32, optimizer={"name": "adamw", "lr": 3e-4, "weight_decay": 0.01},
                      schedule={"name": "warmup_cosine", "warmup_steps": 10, "min_lr": 1e-5}, clip_grad_norm=1.0,
                      eval={"every_steps": 1000, "batches": 1})
    return cfg, data, train, GPT, Batches


def bench_loop(steps: int = 60) -> dict:
    import torch
    import torch.nn.functional as F

    from harness.train import Trainer, lr_lambda, make_optimizer

    cfg, data, train, GPT, Batches = _tiny_setup()

    def bare():
        torch.manual_seed(0)
        model = GPT(cfg, vocab_size=60, max_seq_len=64)
        opt = make_optimizer(model, train)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(train, steps))
        b = Batches(data, seq_len=64, stride=1, batch_size=32, seed=0, mode="epoch")
        model.train()
        for _ in range(steps):
            x, y = b.next()
            loss = F.cross_entropy(model(x).reshape(-1, 60), y.reshape(-1))
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            sched.step()
            loss.item()

    events = []

    def harness_loop():
        torch.manual_seed(0)
        model = GPT(cfg, vocab_size=60, max_seq_len=64)
        b = Batches(data, seq_len=64, stride=1, batch_size=32, seed=0, mode="epoch")
        with tempfile.TemporaryDirectory() as tmp:
            tr = Trainer(model, train, b, eval_sets={}, checkpoint_dir=Path(tmp), device=torch.device("cpu"),
                         callbacks=[events.append])
            tr.fit()

    t_bare, t_h = _best_of(bare), _best_of(harness_loop)
    return {"name": "loop", "baseline": f"bare loop: {1e3 * t_bare / steps:.1f} ms/step",
            "harness": f"Trainer: {1e3 * t_h / steps:.1f} ms/step", "speedup": t_bare / t_h}


def bench_threads(steps: int = 40) -> dict:
    import torch

    from harness.train import Trainer

    cfg, data, train, GPT, Batches = _tiny_setup()
    out = {}
    for n in (1, 2):
        torch.set_num_threads(n)

        def go():
            torch.manual_seed(0)
            model = GPT(cfg, vocab_size=60, max_seq_len=64)
            b = Batches(data, seq_len=64, stride=1, batch_size=32, seed=0, mode="epoch")
            with tempfile.TemporaryDirectory() as tmp:
                Trainer(model, train.model_copy(update={"max_steps": steps}), b, eval_sets={}, checkpoint_dir=Path(tmp),
                        device=torch.device("cpu")).fit()

        out[n] = _best_of(go)
    return {"name": "threads", "baseline": f"1 thread: {1e3 * out[1] / steps:.1f} ms/step",
            "harness": f"2 threads: {1e3 * out[2] / steps:.1f} ms/step", "speedup": out[1] / out[2]}


BENCHES = {"tracking": bench_tracking, "batches": bench_batches, "loop": bench_loop, "threads": bench_threads}


def main(argv: list[str]) -> None:
    names = argv or list(BENCHES)
    print(f"{'bench':10} {'baseline':36} {'harness':36} ratio", flush=True)
    for name in names:
        r = BENCHES[name]()
        print(f"{r['name']:10} {r['baseline']:36} {r['harness']:36} {r['speedup']:.2f}x", flush=True)  # before any fork: a child would print the buffer again


if __name__ == "__main__":
    main(sys.argv[1:])
