"""What the MLflow UI's records cost a run (issue 21): datasets (content digests and log_inputs), the logged model
(weights file, MLmodel, upload, linked metrics, run output), source tags (four git commands), the description, and
system metrics (MLflow's SystemMetricsMonitor thread).

    python bench/bench_ui_records.py                       # 5 alternated rounds of 4 runs per variant, local SQLite
    python bench/bench_ui_records.py --server             # PostgreSQL behind an mlflow server (tests/servers.py starts both)
    python bench/bench_ui_records.py --uri http://127.0.0.1:5000   # any other store
    python bench/bench_ui_records.py --rounds 1 --runs 1   # checks the script, not the figures

Variants, in alternated order every round (ABC, CBA, ...), each one ``--runs`` tiny runs through ``harness.job.run``
in this process, in a git repository holding the corpus (imports and the store warmed up first, so only per-run costs
are compared):

* **records**: everything on (the default);
* **no-sysmetrics**: the same with MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING=false;
* **bare**: none of the new records (the functions that write them replaced by no-ops for the round).

Prints the median wall time per run of each variant, the differences, and, for the records variant, the time spent
inside each record's code (timers around the real functions). Also the load average before and after: the figures
mean little on a machine that other work shares.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TEXT = (ROOT / "README.md").read_text(encoding="utf-8")[:6000]  # any few thousand characters of text
SPENT: dict[str, list[float]] = defaultdict(list)


def _spec(corpus: Path, steps: int, experiment: str) -> Any:
    from harness.spec import spec_from_dict

    return spec_from_dict({
        "name": "bench_ui", "seed": 0,
        "data": {"corpus": str(corpus), "tokenizer": "char", "sampling": "windows", "seq_len": 32, "val_fraction": 0.2},
        "model": {"d_model": 32, "n_heads": 2, "n_layers": 2, "d_ff": 64},
        "train": {"max_steps": steps, "batch_size": 8, "optimizer": {"name": "adamw", "lr": 1e-3},
                  "eval": {"every_steps": max(1, steps // 4), "batches": 2}, "device": "cpu", "threads": 1},
        "tracking": {"experiment": experiment, "sample_tokens": 0}})


def _timed(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            SPENT[name].append(time.perf_counter() - t0)
    return wrapper


@contextlib.contextmanager
def _patched(variant: str) -> Iterator[None]:
    """The functions that write the new records: timed (records, no-sysmetrics) or replaced by no-ops (bare)."""
    import harness.job.build as build
    import harness.job.finish as finish
    import harness.job.runner as runner
    import harness.tracking.tracker as tracker

    T = tracker.MlflowTracker
    saved = [(T, "log_inputs", T.log_inputs), (T, "start_system_metrics", T.start_system_metrics),
             (T, "stop_system_metrics", T.stop_system_metrics), (finish, "_log_model", finish._log_model),
             (tracker, "source_tags", tracker.source_tags), (build, "datasets", build.datasets), (runner, "describe", runner.describe)]
    old_env = os.environ.get("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING")
    try:
        if variant == "bare":
            T.log_inputs = lambda self, datasets=(), models=(): None  # type: ignore[method-assign]
            T.start_system_metrics = lambda self, resume=False: False  # type: ignore[method-assign]
            finish._log_model = lambda *a, **k: None  # type: ignore[assignment]
            tracker.source_tags = lambda argv=None: {}  # type: ignore[assignment]
            build.datasets = lambda *a, **k: []  # type: ignore[assignment]
            runner.describe = lambda *a, **k: ""  # type: ignore[assignment]
        else:
            for owner, name, fn in saved:
                setattr(owner, name, _timed(name, fn))
            if variant == "no-sysmetrics":
                os.environ["MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING"] = "false"
        yield
    finally:
        for owner, name, fn in saved:
            setattr(owner, name, fn)
        if old_env is None:
            os.environ.pop("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", None)
        else:
            os.environ["MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING"] = old_env


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--runs", type=int, default=4, help="runs per variant per round")
    ap.add_argument("--steps", type=int, default=200, help="training steps per run")
    ap.add_argument("--uri", help="tracking store (default: a new SQLite store in a temp folder)")
    ap.add_argument("--server", action="store_true", help="start PostgreSQL and an mlflow server on it, and measure there")
    args = ap.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="bench-ui-"))
    stops: list[Any] = []
    try:
        if args.server:
            sys.path.insert(0, str(ROOT / "tests"))
            from servers import start_mlflow_server, start_postgres

            pg = start_postgres(folder / "pg")
            stops.append(pg)
            server = start_mlflow_server(folder / "mlflow-server", pg.url("mlflow"))
            stops.append(server)
            args.uri = server.uri
        _measure(args, folder)
    finally:
        for s in reversed(stops):
            s.stop()
        os.chdir(ROOT)
        shutil.rmtree(folder, ignore_errors=True)


def _measure(args: argparse.Namespace, folder: Path) -> None:

    import torch

    from harness.job import run

    torch.set_num_threads(1)
    os.chdir(folder)
    (folder / "mlruns").mkdir()
    corpus = folder / "text.txt"
    corpus.write_text(TEXT, encoding="utf-8")
    git = ["git", "-c", "user.name=bench", "-c", "user.email=bench@example.org"]
    for cmd in (["init", "-q"], ["add", "text.txt"], ["commit", "-qm", "corpus"]):  # the source tags ask git, as in a project
        subprocess.run([*git, *cmd], cwd=folder, check=True, capture_output=True)
    os.environ["MLFLOW_TRACKING_URI"] = args.uri or f"sqlite:///{folder}/mlruns/mlflow.db"
    os.environ.setdefault("HARNESS_STAGING", str(folder / "staging"))
    experiment = f"bench_ui_{os.getpid()}"
    spec = _spec(corpus, args.steps, experiment)
    load_before = os.getloadavg()
    run(spec)  # warm-up: imports, the store, the experiment
    variants = ["records", "no-sysmetrics", "bare"]
    walls: dict[str, list[float]] = defaultdict(list)
    for r in range(args.rounds):
        order = variants if r % 2 == 0 else variants[::-1]
        for variant in order:
            with _patched(variant):
                for _ in range(args.runs):
                    t0 = time.perf_counter()
                    out = run(spec)
                    walls[variant].append(time.perf_counter() - t0)
                    assert out.status == "FINISHED", out.message
        print(f"round {r + 1}/{args.rounds}: " + ", ".join(f"{v} {statistics.median(walls[v][-args.runs:]):.3f} s" for v in variants), flush=True)
    load_after = os.getloadavg()

    med = {v: statistics.median(walls[v]) for v in variants}
    print(f"\nstore: {os.environ['MLFLOW_TRACKING_URI']}; {args.rounds} rounds x {args.runs} runs of {args.steps} steps per variant")
    print(f"load average (1 min) before {load_before[0]:.2f}, after {load_after[0]:.2f}; CPUs: {os.cpu_count()}")
    for v in variants:
        spread = f"{min(walls[v]):.3f}-{max(walls[v]):.3f}"
        print(f"  {v:<14} median {med[v]:.3f} s per run (range {spread})")
    print(f"  records - bare:          {med['records'] - med['bare']:+.3f} s ({med['records'] / med['bare']:.3f}x)")
    print(f"  records - no-sysmetrics: {med['records'] - med['no-sysmetrics']:+.3f} s ({med['records'] / med['no-sysmetrics']:.3f}x)")
    n = args.rounds * args.runs * 2  # the timed variants: records and no-sysmetrics
    print("time inside each record's code (timed variants, median per call, total per run):")
    for name, spent in sorted(SPENT.items()):
        print(f"  {name:<22} {1000 * statistics.median(spent):7.1f} ms per call, {1000 * sum(spent) / n:7.1f} ms per run")


if __name__ == "__main__":
    main()
