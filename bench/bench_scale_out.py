"""Sweeps on shared servers: trials per hour with 1, 2 and 3 worker invocations on one PostgreSQL study and one
``mlflow server``, against the default (SQLite study, SQLite store) with one worker; and what the shared servers cost
per trial (study and tracking round-trips), in milliseconds.

    python bench/bench_scale_out.py                 # 12 trials per configuration
    python bench/bench_scale_out.py --trials 6 --steps 10

Every configuration runs the same 12-point grid of a tiny model as real `harness run` processes, each in its own
folder with its own TMPDIR and HOME (the machines share nothing but the servers). The servers are started here
(tests/servers.py) and stopped by pid at the end. The overhead per trial is measured with trials of 1 step and no
evaluation, checkpoints or sample, where nearly all the time is set-up and bookkeeping: (wall time per trial on the
servers) minus (the same on SQLite).

On a machine with 2 cores, 2 and 3 invocations share those 2 cores: more invocations cannot give more throughput than
the cores allow; the figure says how close they come, and what a machine per worker would scale like.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def _spec(name: str, trials: int, steps: int, *, light: bool) -> dict:
    train = {"max_steps": steps, "batch_size": 8, "optimizer": {"lr": 1e-3}, "device": "cpu", "threads": 1,
             "eval": {"every_steps": steps, "batches": 2}}
    if light:
        train["eval"] = {"every_steps": steps, "batches": 1}
    return {
        "name": name, "seed": 3,
        "data": {"corpus": "shakespeare/sonnets", "max_chars": 4000, "seq_len": 32, "val_fraction": 0.2},
        "model": {"d_model": 32, "n_heads": 2, "n_layers": 2, "d_ff": 64},
        "train": train,
        "tracking": {"experiment": name, "sample_tokens": 0, "log_checkpoints": not light},
        "sweep": {"sampler": "grid", "params": {"train.optimizer.lr": [round(1e-4 * (i + 1), 6) for i in range(trials)]}},
    }


def _invocations(base: Path, spec: dict, n: int, *, storage: str | None, tracking: str | None) -> float:
    """Wall seconds for ``n`` `harness run` invocations started together to finish the sweep."""
    procs, logs = [], []
    for i in range(n):
        home = base / f"machine{i}"
        for sub in ("home", "tmp", "work"):
            (home / sub).mkdir(parents=True, exist_ok=True)
        (home / "work" / "mlruns").mkdir(exist_ok=True)
        path = home / "work" / "spec.yaml"
        path.write_text(yaml.safe_dump(spec), encoding="utf-8")
        env = {k: v for k, v in os.environ.items() if not k.startswith(("HARNESS_", "MLFLOW_"))}
        env.update(HOME=str(home / "home"), TMPDIR=str(home / "tmp"))
        if tracking:
            env["MLFLOW_TRACKING_URI"] = tracking
        args = [sys.executable, "-m", "harness", "run", str(path), "-q"] + (["--storage", storage] if storage else [])
        log = open(home / "harness.log", "w")
        logs.append(log)
        procs.append(subprocess.Popen(args, cwd=home / "work", env=env, stdout=log, stderr=subprocess.STDOUT))
    t0 = time.perf_counter()
    codes = [p.wait() for p in procs]
    wall = time.perf_counter() - t0
    for log in logs:
        log.close()
    if any(codes):
        raise SystemExit(f"an invocation failed (exit codes {codes}); see the logs under {base}")
    return wall


def main() -> None:
    from servers import start_mlflow_server, start_postgres

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--trials", type=int, default=12)
    ap.add_argument("--steps", type=int, default=30)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        base = Path(tmp)
        pg = start_postgres(base / "pg")
        server = None
        try:
            server = start_mlflow_server(base / "mlflow", pg.url("mlflow"))
            rows = []
            sqlite = _invocations(base / "sqlite", _spec("bs_sqlite", args.trials, args.steps, light=False), 1, storage=None, tracking=None)
            rows.append(("SQLite study + SQLite store, 1 invocation", sqlite))
            for n in (1, 2, 3):
                wall = _invocations(base / f"shared{n}", _spec(f"bs_shared{n}", args.trials, args.steps, light=False), n,
                                    storage=pg.url("harness"), tracking=server.uri)
                rows.append((f"PostgreSQL study + mlflow server, {n} invocation{'s' if n > 1 else ''}", wall))
            light_sqlite = _invocations(base / "light_sqlite", _spec("bs_light_sqlite", args.trials, 1, light=True), 1,
                                        storage=None, tracking=None)
            light_shared = _invocations(base / "light_shared", _spec("bs_light_shared", args.trials, 1, light=True), 1,
                                        storage=pg.url("harness"), tracking=server.uri)
        finally:
            if server is not None:
                server.stop()
            pg.stop()
    print(f"# sweeps on shared servers: {args.trials} trials of {args.steps} steps, tiny model, {os.cpu_count()} CPUs\n")
    print("| configuration | wall (s) | trials/hour | vs SQLite, 1 invocation |")
    print("|---|---:|---:|---:|")
    for label, wall in rows:
        print(f"| {label} | {wall:.1f} | {args.trials * 3600 / wall:,.0f} | {sqlite / wall:.2f}x |")
    overhead = (light_shared - light_sqlite) / args.trials * 1000
    print(f"\nShared-server overhead per trial (1-step trials, {args.trials} each): {light_shared / args.trials * 1000:.0f} ms on the "
          f"servers vs {light_sqlite / args.trials * 1000:.0f} ms on SQLite: **{overhead:+.0f} ms per trial**")


if __name__ == "__main__":
    main()
